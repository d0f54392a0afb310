"""Running a search: data, space, strategy and evaluator in, a run folder with a genotype out.

One-shot strategies train a supernet here (:func:`_run_one_shot`); multi-trial strategies train one
network per trial (:mod:`nas_restore.multitrial`). What the run folder holds, file by file, is
:mod:`nas_restore.run_records`'s to say.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from nas_restore import config as cfg
from nas_restore.config import ConfigError
from nas_restore.datasets import DataConfig, train_val_datasets
from nas_restore.decision import decision_of_run
from nas_restore.device import lightning_accelerator, resolve_device
from nas_restore.errors import UserError
from nas_restore.genotype import Genotype
from nas_restore.losses import LossConfig
from nas_restore.metrics import MAX_PSNR, psnr_torch
from nas_restore.multitrial import run_multitrial
from nas_restore.nni_layer import labelled_alphas
from nas_restore.nni_layer.ddp import AlphaSync, rank_folder, search_strategy
from nas_restore.nni_layer.runner import make_lightning_evaluator, make_search_module, run_oneshot
from nas_restore.nni_layer.supernet import save_supernet
from nas_restore.outputs import RunLock
from nas_restore.precision import PRECISIONS, Precision, resolve_precision
from nas_restore.run_records import (ALPHAS, ALPHA_COLUMNS, ANYTIME, CONFIG, DERIVED, GENOTYPE, GUARD, LOG, METRICS,
                                     NNI_DIR, SEARCH_CHECKPOINT, write_anytime)
from nas_restore.search_checkpoint import EpochOrder, SearchCheckpoint, truncate_record
from nas_restore.seeding import seed_everything
from nas_restore.threads import JobSlot
from nas_restore.training import ShareThreads
from search_spaces import find_space
from strategies import find_strategy
from strategies.skip_guard import GuardReport, SkipGuardConfig, apply_skip_cap, count_skips, early_stop_callback

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Everything a search run needs; each field has a default and maps to a CLI flag."""

    space: str = "tmics"
    preset: str | None = "cpu"
    space_settings: dict[str, Any] = field(default_factory=dict)
    strategy: str = "darts"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 4
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    # budgets, comparable across strategies: stop at whichever comes first
    budget_seconds: float | None = None     # wall-clock seconds of search
    # multi-trial strategies (evolution, random, tpe): each trial trains one sampled network
    max_trials: int = 8
    trial_epochs: int = 1                   # epochs per trial; a trial costs trial_epochs epoch-equivalents
    parallel: int = 1                       # >1: NNI's training-service engine, N trials at once
    objectives: list[str] = field(default_factory=lambda: ["psnr"])  # + params / flops / latency: Pareto
    training_service: dict[str, Any] = field(default_factory=dict)   # NNI remote/kubernetes settings, passed on
    # differentiable strategies: the guard against collapse into skip connections (strategies/skip_guard.py)
    skip_cap: int | None = 2                # most skip_connect edges per derived cell (None: no cap)
    skip_stop: int | None = None            # stop the search once a derived cell has more skips (None: never)
    precision: str = "fp32"                 # fp32, bf16, fp16 or auto: what the networks compute in
    devices: int = 1                        # one-shot: >1 trains the supernet on that many DDP processes

    def __post_init__(self) -> None:
        if not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"devices must be an integer >= 1 (processes of a one-shot search), got {self.devices!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.max_trials < 1 or self.trial_epochs < 1 or self.parallel < 1:
            raise ValueError("max_trials, trial_epochs and parallel must be >= 1")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0 or None (no limit), got {self.budget_seconds}")
        SkipGuardConfig(cap=self.skip_cap, stop=self.skip_stop)  # validates both
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class SearchResult:
    genotype: Genotype
    genotype_path: Path
    run_dir: Path
    seconds: float


class AlphaHistory:
    """Records the softmaxed architecture weights (and the derived genotype) as the search runs.

    Its files start afresh, or continue where a resumed search's checkpoint left them
    (:meth:`load_resume_state`); it also counts the current epoch's batches and seconds.
    """

    def __init__(self, run_dir: Path, every_n_steps: int = 5):
        self.alphas_path = run_dir / ALPHAS
        self.derived_path = run_dir / DERIVED
        self.every = every_n_steps
        self.metrics_path = run_dir / METRICS
        self.epochs: list[dict[str, float]] = []
        self.epoch, self.batches, self.carried, self.started = 0, 0, 0.0, time.perf_counter()

    def resume_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the records' lengths, the epoch rows, the current epoch's progress."""
        return {"alphas_bytes": self.alphas_path.stat().st_size, "derived_bytes": self.derived_path.stat().st_size,
                "epochs": [dict(row) for row in self.epochs],
                "epoch": self.epoch, "batches": self.batches,
                "seconds": self.epoch_seconds() if self.batches else 0.0}  # inside an epoch: its seconds so far

    def load_resume_state(self, state: dict[str, Any] | None) -> None:
        """Start the records afresh (None), or cut them back to a checkpoint's state: rows written after it go."""
        if state is None:
            self.alphas_path.write_text(",".join(ALPHA_COLUMNS) + "\n")
            self.derived_path.write_text("")
            self.metrics_path.unlink(missing_ok=True)
            return
        truncate_record(self.alphas_path, int(state["alphas_bytes"]))
        truncate_record(self.derived_path, int(state["derived_bytes"]))
        self.epochs = [dict(row) for row in state["epochs"]]
        self._write_metrics()
        # inside an epoch (a signal), Lightning continues it without on_train_epoch_start: its batches and seconds
        self.epoch, self.batches, self.carried = int(state["epoch"]), int(state["batches"]), float(state["seconds"])

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self.carried, self.started = epoch, 0, 0.0, time.perf_counter()

    def epoch_seconds(self) -> float:
        return self.carried + time.perf_counter() - self.started

    def record_epoch(self, row: dict[str, float]) -> None:
        self.epochs.append(row)
        self._write_metrics()
        log.info("epoch %d: train_loss %.4f, supernet val_psnr %.2f dB (%.1f s)", row["epoch"], row["train_loss"],
                 row["val_psnr"], row["seconds"])

    def _write_metrics(self) -> None:
        import pandas as pd

        if self.epochs:
            pd.DataFrame(self.epochs).to_csv(self.metrics_path, index=False)
        else:
            self.metrics_path.unlink(missing_ok=True)

    def record(self, module: Any, step: int, epoch: int) -> None:
        with self.alphas_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            for label, alpha, names in labelled_alphas(module):
                probs = torch.softmax(alpha.detach().float(), -1).tolist()
                for name, p in zip(names, probs):
                    writer.writerow([step, epoch, label, name, f"{p:.6f}"])

    def record_derived(self, module: Any, epoch: int) -> None:
        try:
            arch = module.export()
        except Exception as err:  # noqa: BLE001  (some strategies cannot export mid-search)
            log.debug("could not export the architecture at epoch %d: %s", epoch, err)
            return
        with self.derived_path.open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "arch": arch, "skips": count_skips(arch)}, default=str) + "\n")


def _history_callback(history: AlphaHistory, val_loader: DataLoader, precision: Precision):
    import pytorch_lightning as pl

    class _Callback(pl.Callback):
        """Alphas every few steps; at each epoch end the derived genotype and the supernet's val PSNR.

        NNI's DARTS consumes the validation split for architecture steps and runs no validation
        loop, so the supernet's validation PSNR is measured here.
        """

        def on_train_epoch_start(self, trainer, pl_module):
            history.begin_epoch(trainer.current_epoch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            history.batches += 1
            if trainer.global_step % history.every == 0:
                history.record(pl_module, trainer.global_step, trainer.current_epoch)

        def on_train_end(self, trainer, pl_module):
            # a budget (max_time) or an early stop can end the run inside an epoch: record that part too
            if history.batches:  # batches trained since the last epoch end
                self.on_train_epoch_end(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            total = trainer.num_training_batches
            fraction = min(1.0, history.batches / total) if isinstance(total, int) and total > 0 else 1.0
            epoch = history.epoch
            history.batches = 0
            history.record(pl_module, trainer.global_step, epoch)
            history.record_derived(pl_module, epoch)
            was_training = pl_module.training
            pl_module.eval()
            scores = []
            with torch.no_grad():
                for frames, target in val_loader:
                    frames, target = frames.to(pl_module.device), target.to(pl_module.device)
                    with precision.autocast():
                        pred = pl_module(frames)
                    scores.append(psnr_torch(pred.float().clamp(0, 1), target, y_channel=False, max_db=MAX_PSNR))
            pl_module.train(was_training)
            loss = trainer.callback_metrics.get("train_loss_epoch", trainer.callback_metrics.get("train_loss"))
            history.record_epoch({"epoch": epoch, "train_loss": float(loss) if loss is not None else float("nan"),
                                  "val_psnr": float(torch.cat(scores).mean()) if scores else float("nan"),
                                  "seconds": round(history.epoch_seconds(), 2),
                                  "fraction": round(fraction, 4),
                                  **{k: float(v) for k, v in trainer.callback_metrics.items()
                                     if k == "upper_loss"}})  # tmics: the validation loss of its lambda steps

    return _Callback()


def run_search(config: SearchConfig, run_dir: str | Path, fresh: bool = False) -> SearchResult:
    """Search ``config.space`` with ``config.strategy``; write the run folder; return the genotype.

    One-shot strategies (the DARTS family, tmics) train a supernet here (:func:`_run_one_shot`);
    multi-trial strategies (evolution, random, tpe) train one network per trial
    (:func:`nas_restore.multitrial.run_multitrial`). Both write ``anytime.csv`` and return NNI's
    architecture dict plus the metadata they add to the genotype.
    """
    # a search's own folder (not a retraining's: both write config.yaml and genotype.json), one command at a time
    run_dir = Path(run_dir)
    with JobSlot(), RunLock(run_dir, kind="search"):  # JobSlot: counted among the running jobs (threads)
        with rank_folder(run_dir) as folder:  # DDP: a process other than rank 0 writes a private copy
            return _search(config, folder, fresh)


def _search(config: SearchConfig, run_dir: Path, fresh: bool = False) -> SearchResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _file_log(run_dir / LOG)
    started = time.perf_counter()
    try:
        space_spec = find_space(config.space)
        strategy_spec = find_strategy(config.strategy)
        space_config = space_spec.config(config.preset, **config.space_settings)
        if strategy_spec.one_shot and list(config.objectives) != ["psnr"]:
            raise ConfigError(f"objectives {config.objectives} need a multi-trial strategy (evolution, random, tpe): "
                             f"{config.strategy!r} trains one supernet and scores no single network's cost; "
                             "drop --objectives or pick a multi-trial strategy")
        if config.devices > 1 and not strategy_spec.one_shot:
            raise ConfigError(f"devices={config.devices} trains one supernet on several processes: {config.strategy!r} "
                              "is multi-trial; run its trials side by side with --parallel N instead")
        # a re-run that its checkpoint or ledger refuses (other settings) must leave the folder's config.yaml as it was
        previous_config = (run_dir / CONFIG).read_bytes() if (run_dir / CONFIG).is_file() and not fresh else None
        cfg.save_yaml({**cfg.to_dict(config), "resolved_space": space_config.to_dict()}, run_dir / CONFIG)
        seed_everything(config.seed)
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
        train_data, val_data = train_val_datasets(config.data, space_config.frames, config.seed)
        log.info("search: space=%s strategy=%s device=%s precision=%s train=%d val=%d", config.space,
                 config.strategy, device, precision.name, len(train_data), len(val_data))
        for name, data in (("train", train_data), ("validation", val_data)):
            if len(data) < config.batch_size:
                raise ConfigError(f"the {name} split has {len(data)} item(s), fewer than batch_size="
                                 f"{config.batch_size}: lower --batch-size or give more data")
        context = SearchContext(config=config, run_dir=run_dir, space_spec=space_spec, space_config=space_config,
                                strategy_spec=strategy_spec, device=device, precision=precision,
                                train_data=train_data, val_data=val_data, started=started)
        try:
            if strategy_spec.one_shot:
                arch, extra = _run_one_shot(context, fresh=fresh)  # resumes from its checkpoint unless fresh
            else:
                arch, extra = run_multitrial(context, fresh=fresh)  # resumes from its ledger unless fresh
        except UserError:  # refused (other settings, a damaged checkpoint or ledger): nothing of it was kept
            if previous_config is not None:
                (run_dir / CONFIG).write_bytes(previous_config)
            raise
        if strategy_spec.one_shot:
            decision = decision_of_run(run_dir)  # did the weights move far enough for the pick to mean much?
            if decision is not None:
                extra["decision"] = decision.to_dict()
                if not decision.decided:
                    log.warning("%s; %s", decision.summary(), decision.advice())
        seconds = time.perf_counter() - context.started  # a resumed one-shot search counts its earlier calls too
        metadata = {
            "strategy": config.strategy,
            "strategy_options": {**strategy_spec.defaults, **config.strategy_options},
            "seed": config.seed,
            "search_seconds": round(seconds, 2),
            **({"epochs": config.epochs} if strategy_spec.one_shot else
               {"max_trials": config.max_trials, "trial_epochs": config.trial_epochs}),
            "device": str(device),
            "precision": precision.name,
            "data": "synthetic" if config.data.folder is None else str(config.data.folder),
            **extra,
            "nni_arch": arch,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": _versions(),
        }
        genotype = space_spec.to_genotype(arch, space_config, metadata)
        path = genotype.save(run_dir / GENOTYPE)
        log.info("search done in %.1f s: genotype %s -> %s", seconds, genotype.genotype_id(), path)
        return SearchResult(genotype=genotype, genotype_path=path, run_dir=run_dir, seconds=seconds)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@dataclass
class SearchContext:
    """What a strategy runner gets from :func:`run_search`: the resolved pieces of one run."""

    config: SearchConfig
    run_dir: Path
    space_spec: Any
    space_config: Any
    strategy_spec: Any
    device: torch.device
    precision: Precision
    train_data: Any
    val_data: Any
    started: float  # time.perf_counter() at the start of the run (budgets count from here; a resumed one-shot
                    # search moves it back by the seconds searched before)


def _run_one_shot(ctx: SearchContext, fresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the supernet with a one-shot strategy; return NNI's arch dict and the run's metadata.

    Resumable: the run folder's checkpoint (nas_restore.search_checkpoint) is written at every epoch end and on
    SIGTERM/SIGINT, and a re-run continues from it (unless ``fresh``).
    """
    config, run_dir = ctx.config, ctx.run_dir
    accelerator, devices = lightning_accelerator(ctx.device, config.devices)
    loader_args = dict(batch_size=config.batch_size, num_workers=config.num_workers, drop_last=True)
    # each epoch's order is a function of (seed, epoch): a resumed run replays the epochs it continues
    orders = [EpochOrder(len(ctx.train_data), config.seed), EpochOrder(len(ctx.val_data), config.seed + 1)]
    train_loader, val_loader = (DataLoader(data, sampler=order, generator=order.generator, **loader_args)
                                for data, order in zip((ctx.train_data, ctx.val_data), orders))
    history = AlphaHistory(run_dir)
    guard_config = SkipGuardConfig(cap=config.skip_cap, stop=config.skip_stop)
    guard = GuardReport(cap=guard_config.cap, stop=guard_config.stop)
    strategy = ctx.strategy_spec.build(config.strategy_options)
    settings = {**cfg.to_dict(config), "strategy_options": {**ctx.strategy_spec.defaults, **config.strategy_options},
                "resolved_space": ctx.space_config.to_dict()}
    checkpoint = SearchCheckpoint(run_dir / SEARCH_CHECKPOINT, settings, fresh=fresh, started=ctx.started,
                                  orders=orders, parts={"history": history, "skip_guard": guard, "strategy": strategy})
    ctx.started -= checkpoint.seconds_before  # budgets and search_seconds count the earlier calls too
    callbacks = [_history_callback(history, val_loader, ctx.precision), ShareThreads(config.num_workers), checkpoint]
    if guard_config.stop is not None:
        callbacks.append(early_stop_callback(guard_config, guard))
    if config.devices > 1:  # DDP: the same architecture weights on every process (nni_layer/ddp.py)
        callbacks.append(AlphaSync())
    module = make_search_module(loss=config.loss, lr=config.lr, weight_decay=config.weight_decay,
                                epochs=config.epochs)
    trainer_kwargs = dict(
        max_epochs=config.epochs, accelerator=accelerator, devices=devices, precision=ctx.precision.lightning,
        callbacks=callbacks, enable_progress_bar=config.progress,
        strategy=search_strategy(config.devices, config.strategy, config.strategy_options),  # DDP: nni_layer/ddp.py
        use_distributed_sampler=False,  # DDP: EpochOrder shards one order itself (training.EpochShuffle)
        enable_model_summary=False, logger=False,
        enable_checkpointing=True, num_sanity_val_steps=0, log_every_n_steps=1,  # the checkpoint is ours
    )
    if config.budget_seconds is not None:  # Lightning's Timer resumes its count of training seconds
        remaining = config.budget_seconds - (time.perf_counter() - ctx.started) + checkpoint.timer_seconds
        trainer_kwargs["max_time"] = {"seconds": max(1.0, remaining)}
    evaluator = make_lightning_evaluator(module, trainer_kwargs, train_loader, val_loader)
    evaluator.fit_kwargs.update(checkpoint.fit_kwargs(evaluator.trainer))
    space = ctx.space_spec.make_space(ctx.space_config)
    with checkpoint.interruptible():  # SIGTERM/SIGINT: save the checkpoint, then raise SearchInterrupted
        arch = run_oneshot(space, evaluator, strategy, run_dir / NNI_DIR)
    checkpoint.finish()  # keeps what the strategy computed after training (spos's evolution)
    arch, guard = _guard_skips(arch, strategy, guard_config, guard)
    (run_dir / GUARD).write_text(json.dumps(guard.to_dict(), indent=2))
    metrics = history.epochs
    elapsed = epochs_done = 0.0
    anytime = []
    for row in metrics:
        elapsed += row["seconds"]
        epochs_done += row.get("fraction", 1.0)
        anytime.append({"cost_seconds": elapsed, "cost_epochs": epochs_done, "val_psnr": row["val_psnr"],
                        "source": f"supernet epoch {int(row['epoch'])}"
                                  + ("" if row.get("fraction", 1.0) >= 1.0 else f" ({row['fraction']:.0%})")})
    write_anytime(anytime, run_dir / ANYTIME)
    save_supernet(strategy, ctx)  # RUN/supernet.pt: the trained supernet, for `nas-restore trust`
    return arch, {"supernet_val_psnr": metrics[-1].get("val_psnr") if metrics else None,
                  "search_cost_epochs": round(sum(row.get("fraction", 1.0) for row in metrics), 4),
                  "skip_guard": guard.summary()}


def _guard_skips(arch: dict[str, Any], strategy: Any, config: SkipGuardConfig,
                 report: GuardReport) -> tuple[dict[str, Any], GuardReport]:
    """Cap the skip edges of the derived cells (strategies/skip_guard.py) with the final alphas."""
    try:  # the trained alphas, to pick each surplus skip's replacement
        alphas = {label: (alpha, names) for label, alpha, names in labelled_alphas(strategy.oneshot_module)}
    except Exception as err:  # noqa: BLE001  (a strategy without a one-shot module: nothing to re-derive from)
        log.warning("skip guard: no alphas to re-derive from (%s); the cap only counts skips", err)
        alphas = {}
    guarded, capped = apply_skip_cap(arch, alphas, config.cap, config.stop)
    capped.stopped_at_epoch, capped.stopped_skips = report.stopped_at_epoch, report.stopped_skips
    n_replaced = sum(len(r) for r in capped.replaced.values())
    log.info("skip guard (cap %s, stop %s): skips per cell %s -> %s; %d edge(s) re-derived%s", config.cap,
             config.stop, capped.skips_before, capped.skips_after, n_replaced,
             f"; search stopped early after epoch {capped.stopped_at_epoch}"
             if capped.stopped_at_epoch is not None else "")
    return guarded, capped


def _file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # the CLI sets the root level; library users choose their own
    return handler


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("nas-restore", "nni", "torch", "pytorch-lightning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
