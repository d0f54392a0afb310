"""Can a one-shot search's ranking be trusted? The supernet's scores against standalone training.

A one-shot search (darts, darts2, gdas, tmics, pcdarts, spos) trains one supernet whose weights every
architecture shares, and ranks architectures by what those shared weights make of them. Whether that
ranking is the one training each network alone would give is an empirical question, often answered "no"
(docs/trust.md). :func:`run_trust` answers it for one finished run folder:

1. N architectures of the run's space: the searched genotype itself (always one of them), and N-1
   uniform draws (seeds ``seed``, ``seed + 1``, ...; duplicates skipped);
2. (a) each scored by the trained supernet with its architecture fixed to that sample, i.e. with
   inherited weights (``RUN/supernet.pt``, :mod:`nas_restore.nni_layer.supernet`), and (b) each trained
   from scratch, briefly, with the toolkit's own retraining (:func:`nas_restore.training.retrain`: the
   search's data, loss, batch size and learning rate, a stated number of epochs, a fixed seed), both
   scored by the same function on the search's own validation split (PSNR, RGB, as the search logs it);
3. Kendall's tau and Spearman's rho between the two score lists, with bootstrap intervals that resample
   architectures (:func:`nas_restore.statistics.rank_correlation_ci`), and one sentence on whether
   one-shot rankings can be trusted on this task.

The standalone trainings are the expensive part: each is a unit of a study folder
(:func:`nas_restore.study.run_unit`, keyed by genotype id), so a re-run skips the finished ones, an
interrupted one continues from its ``last.ckpt``, and a larger ``--samples`` adds draws to the same
folder. Outputs (``RUN/trust/`` or ``out_dir``): ``trust.csv``, ``trust.json``, ``trust.md``, ``trust.png``
and ``standalone/<genotype id>/`` (each training's files).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from nas_restore import config as cfg
from nas_restore.datasets import train_val_datasets
from nas_restore.device import resolve_device
from nas_restore.errors import UserError
from nas_restore.genotype import Genotype
from nas_restore.metrics import MAX_PSNR, psnr_torch
from nas_restore.outputs import RunLock, check_output_folder, run_folder_kind
from nas_restore.precision import PRECISIONS, Precision, resolve_precision
from nas_restore.profiling import count_flops, count_parameters, input_shape
from nas_restore.run_records import CONFIG, GENOTYPE, SUPERNET, TRIALS
from nas_restore.search import SearchConfig
from nas_restore.sources import load_genotype, random_genotypes_where
from nas_restore.statistics import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, CorrelationCI, rank_correlation_ci
from nas_restore.study import HELD, read_json, refuse_changed_settings, run_unit, write_json
from nas_restore.training import RetrainConfig, retrain
from search_spaces import space_of
from strategies import find_strategy

log = logging.getLogger(__name__)

OUT_DIR = "trust"
STANDALONE_DIR = "standalone"
SETTINGS = "settings.json"
CSV_NAME, JSON_NAME, MD_NAME, PNG_NAME = "trust.csv", "trust.json", "trust.md", "trust.png"
CSV_COLUMNS = ("genotype_id", "name", "searched", "params", "macs", "supernet_psnr", "standalone_psnr",
               "supernet_rank", "standalone_rank", "status", "error")
# what makes earlier standalone trainings comparable with new ones (refused if changed on a re-run)
STANDALONE_KEYS = ("standalone_epochs", "standalone_steps_per_epoch", "batch_size", "lr", "seed", "precision",
                   "data", "loss", "weight_decay", "space_config")
AGREE_TAU = 0.5  # a tau whose interval excludes 0 and that reaches this is called agreement (else weak)


class TrustError(UserError, ValueError):
    """A run folder the trust check cannot use, or settings it refuses; the message says why and what to do."""


@dataclass
class TrustConfig:
    """Settings of a trust check. ``batch_size``/``lr`` None: the search's own."""

    samples: int = 8                              # architectures, the searched genotype included
    standalone_epochs: int = 10                   # epochs of each standalone training
    standalone_steps_per_epoch: int | None = None  # optimiser steps per epoch (None: the whole train split)
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0                                 # draws (seeds seed, seed+1, ...) and every standalone training
    bootstrap_resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    precision: str = "fp32"
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("samples", "standalone_epochs", "bootstrap_resamples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.samples < 3:
            raise ValueError(f"samples must be >= 3 (a rank correlation of {self.samples} architectures says "
                             "nothing), got {self.samples}; 8 or more narrow its interval")
        for name in ("standalone_steps_per_epoch", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 or None (the search's), got {self.lr}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class TrustResult:
    """What a trust check found; ``rows`` as in trust.csv (one per architecture)."""

    kendall_tau: float
    tau_ci: tuple[float, float]
    spearman_rho: float
    rho_ci: tuple[float, float]
    sentence: str
    rows: list[dict[str, Any]]
    out_dir: Path
    searched_id: str = ""
    kendall: CorrelationCI | None = None
    spearman: CorrelationCI | None = None
    trained: list[str] = field(default_factory=list)   # standalone trainings run in this call
    skipped: list[str] = field(default_factory=list)   # finished earlier (resumed)
    failed: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class OneShotRun:
    """A finished one-shot search run folder, read back: its config, genotype and kept supernet."""

    run_dir: Path
    search: SearchConfig
    genotype: Genotype
    record: dict[str, Any]        # RUN/supernet.pt: settings and state_dict
    space_spec: Any
    space_config: Any
    strategy_spec: Any


# --------------------------------------------------------------------------------------------------
# the run folder


def load_one_shot_run(run_dir: str | Path) -> OneShotRun:
    """Read a one-shot search run folder; a clear :class:`TrustError` for anything else."""
    run_dir = Path(run_dir)
    how = "nas-restore search --strategy darts (or darts2, gdas, tmics, pcdarts, spos) --out RUN"
    if not run_dir.is_dir():
        raise TrustError(f"{run_dir} is not a folder: give the run folder of a one-shot search ({how})")
    if run_folder_kind(run_dir) == "retrain":
        raise TrustError(f"{run_dir} is a retraining folder (model.pt, checkpoints/): the trust check needs the "
                         f"one-shot search run folder the genotype came from ({how}), not a retraining of it")
    if not (run_dir / CONFIG).is_file():
        raise TrustError(f"{run_dir} is not a search run folder (no {CONFIG}): give the folder a one-shot search "
                         f"wrote ({how})")
    data = cfg.load_yaml(run_dir / CONFIG, "search")
    data.pop("resolved_space", None)
    try:
        search = cfg.from_dict(SearchConfig, data, "search")
    except UserError as err:
        raise TrustError(f"{run_dir / CONFIG} cannot be read as a search config ({err}): was it written by another "
                         "nas-restore version? re-run the search with this one") from None
    strategy_spec = find_strategy(search.strategy)
    if not strategy_spec.one_shot or (run_dir / TRIALS).is_file():
        raise TrustError(f"{run_dir} is a multi-trial run (strategy {search.strategy}): it trained no supernet, so "
                         "there are no shared weights to trust, and its trials (trials.csv) are standalone trainings "
                         f"already. The trust check is for one-shot runs: {how}")
    if not (run_dir / GENOTYPE).is_file():
        raise TrustError(f"{run_dir} has no {GENOTYPE}: the search did not finish; run (or resume) it to the end "
                         "first")
    if not (run_dir / SUPERNET).is_file():
        raise TrustError(f"{run_dir} has no {SUPERNET}: it was searched by a nas-restore version that did not keep "
                         "the trained supernet; re-run the search with this version (the same command, e.g. into a "
                         "new --out folder) and point the trust check at that folder")
    record = _read_supernet(run_dir / SUPERNET)
    space_spec = space_of(str(record["space"]))
    space_config = space_spec.config_class.from_dict(dict(record["space_config"]))
    genotype = load_genotype(run_dir / GENOTYPE)
    if record["strategy"] != search.strategy:
        raise TrustError(f"{run_dir / SUPERNET} was written by a {record['strategy']} search but {CONFIG} names "
                         f"{search.strategy}: the folder mixes two runs; re-run the search into a new folder")
    return OneShotRun(run_dir=run_dir, search=search, genotype=genotype, record=record, space_spec=space_spec,
                      space_config=space_config, strategy_spec=strategy_spec)


def _read_supernet(path: Path) -> dict[str, Any]:
    from nas_restore.nni_layer.supernet import SUPERNET_FORMAT, SUPERNET_VERSION  # NNI: only when checking trust

    fix = "re-run the search with this nas-restore version (into a new --out folder)"
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (truncated, not a torch file, or objects weights_only refuses)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise TrustError(f"{path} cannot be read as a kept supernet ({type(err).__name__}: {reason}): {fix}") from None
    if not isinstance(record, dict) or record.get("format") != SUPERNET_FORMAT:
        raise TrustError(f"{path} is not a supernet file of nas-restore: {fix}")
    if record.get("version") != SUPERNET_VERSION:
        raise TrustError(f"{path} is supernet format version {record.get('version')}; this nas-restore reads "
                         f"version {SUPERNET_VERSION}: {fix}")
    missing = [k for k in ("space", "space_config", "strategy", "strategy_options", "state_dict") if k not in record]
    if missing:
        raise TrustError(f"{path} lacks {', '.join(missing)}: {fix}")
    return record


# --------------------------------------------------------------------------------------------------
# the samples and their two scores


@dataclass
class Sample:
    genotype: Genotype
    arch: dict[str, Any]          # NNI's architecture dict of the supernet's space
    name: str                     # "searched" or "random-<seed>"
    searched: bool

    @property
    def genotype_id(self) -> str:
        return self.genotype.genotype_id()


def draw_samples(run: OneShotRun, count: int, seed: int) -> list[Sample]:
    """The searched genotype, then ``count - 1`` distinct uniform draws (seeds ``seed``, ``seed + 1``, ...)."""
    searched = run.genotype
    seen = {searched.genotype_id()}

    def new(genotype: Genotype) -> bool:
        if genotype.genotype_id() in seen:
            return False
        seen.add(genotype.genotype_id())
        return True

    draws, tried = random_genotypes_where(searched, count - 1, new, first_seed=seed)
    if len(draws) < count - 1:
        log.warning("trust: the space gave only %d distinct architectures besides the searched one in %d draws "
                    "(asked for %d)", len(draws), tried, count - 1)
    samples = [Sample(searched, nni_arch_of(run, searched), "searched", True)]
    samples += [Sample(g, nni_arch_of(run, g), str(g.metadata.get("name", f"random-{i}")), False)
                for i, g in enumerate(draws)]
    return samples


def nni_arch_of(run: OneShotRun, genotype: Genotype) -> dict[str, Any]:
    """The NNI architecture dict of ``genotype`` (the space's own conversion; the recorded one otherwise)."""
    if run.space_spec.to_nni_arch is not None:
        return json.loads(json.dumps(run.space_spec.to_nni_arch(genotype)))
    arch = genotype.metadata.get("nni_arch")
    if not isinstance(arch, dict):
        raise TrustError(f"genotype {genotype.genotype_id()} of space {genotype.space} has no NNI architecture "
                         "(the space has no to_nni_arch and the genotype no metadata.nni_arch)")
    return dict(arch)


@torch.no_grad()
def validation_psnr(model: torch.nn.Module, data: Dataset, batch_size: int, device: torch.device,
                    precision: Precision) -> float:
    """Mean per-item PSNR (RGB, capped at MAX_PSNR) of ``model`` on ``data``: the search's validation score.

    The one scorer of both sides of the trust check, so that they differ only in the weights."""
    was_training = model.training
    model.to(device).eval()
    scores = []
    try:
        for frames, target in DataLoader(data, batch_size=batch_size, shuffle=False):
            if target.ndim == 5:  # shifted windows (temporal loss): score the current one, as training does
                frames, target = frames[:, 1:], target[:, 1]
            frames, target = frames.to(device), target.to(device)
            with precision.autocast():
                pred = model(frames)
            scores.append(psnr_torch(pred.float().clamp(0, 1), target, y_channel=False, max_db=MAX_PSNR))
    finally:
        model.train(was_training)
    return float(torch.cat(scores).mean())


class InheritedScorer:
    """The run's trained supernet, rebuilt once; scores an architecture with its inherited weights."""

    def __init__(self, run: OneShotRun, device: torch.device, precision: Precision):
        from nas_restore.nni_layer.supernet import load_supernet_weights, rebuild_supernet  # NNI: only here

        self.device, self.precision = device, precision
        try:
            strategy = run.strategy_spec.build(dict(run.record["strategy_options"]))
            space = run.space_spec.make_space(run.space_config)
            self.supernet = rebuild_supernet(space, strategy)
            load_supernet_weights(self.supernet, run.record["state_dict"])
        except (ValueError, TypeError) as err:
            raise TrustError(f"the supernet in {run.run_dir / SUPERNET} cannot be rebuilt ({err}): was the search "
                             "run by another nas-restore version? re-run it with this one") from None
        self.supernet.to(device).eval()
        self.strategy = run.record["strategy"]

    def score(self, arch: dict[str, Any], data: Dataset, batch_size: int) -> float:
        from nas_restore.nni_layer.supernet import UnsupportedSupernet, fixed_architecture

        try:
            with fixed_architecture(self.supernet, arch):
                return validation_psnr(self.supernet, data, batch_size, self.device, self.precision)
        except UnsupportedSupernet as err:
            raise TrustError(f"the {self.strategy} supernet cannot score an architecture with inherited weights: "
                             f"{err}") from None


def network_size(genotype: Genotype, spec: Any, frames: int, patch: int) -> tuple[int, int]:
    """(parameters, MACs of one forward pass at ``patch`` x ``patch``) of the genotype's plain network."""
    network = spec.make_network(genotype)
    return count_parameters(network), count_flops(network, input_shape(frames, patch, patch)) // 2


# --------------------------------------------------------------------------------------------------
# the check


def resolved_settings(run: OneShotRun, config: TrustConfig) -> dict[str, Any]:
    """The settings the check runs with (the search's batch size and lr where not given), as plain data."""
    search = run.search
    return {**asdict(config), "batch_size": config.batch_size or search.batch_size,
            "lr": config.lr if config.lr is not None else search.lr, "weight_decay": search.weight_decay,
            "data": cfg.to_dict(search.data), "loss": cfg.to_dict(search.loss),
            "space": str(run.record["space"]), "space_config": run.space_config.to_dict(),
            "strategy": search.strategy, "search_seed": search.seed, "run": str(run.run_dir)}


def run_trust(run_dir: Path, config: TrustConfig, out_dir: Path | None = None,
              say: Callable[[str], None] | None = None) -> TrustResult:
    """The trust check of one finished one-shot run (module docstring); writes ``out_dir`` (``RUN/trust``).

    Resumable: a re-run with the same standalone settings skips the finished standalone trainings;
    different ones (epochs, steps, batch size, lr, seed, precision, data) are refused, naming them.
    """
    say = say or log.info
    run = load_one_shot_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / OUT_DIR
    check_output_folder(out)
    with RunLock(out):
        return _run_trust(run, config, out, say)


def _run_trust(run: OneShotRun, config: TrustConfig, out: Path, say: Callable[[str], None]) -> TrustResult:
    started = time.perf_counter()
    settings = resolved_settings(run, config)
    previous = read_json(out / SETTINGS)
    if isinstance(previous, dict):
        changed = [k for k in STANDALONE_KEYS if previous.get(k) != settings.get(k)]
        refuse_changed_settings(out, "standalone trainings", changed,
                                "their scores would not be comparable with new ones",
                                "--samples and --resamples may change", recorded_in=out / SETTINGS,
                                error=TrustError)
    write_json(out / SETTINGS, settings)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    frames, patch = run.space_config.frames, run.search.data.patch_size
    train_data, val_data = train_val_datasets(run.search.data, frames, run.search.seed)
    batch = int(settings["batch_size"])
    samples = draw_samples(run, config.samples, config.seed)
    say(f"trust: {len(samples)} architectures of {run.search.space} ({run.search.strategy} run {run.run_dir}), "
        f"the searched genotype {samples[0].genotype_id} among them; {len(val_data)} validation items")

    scorer = InheritedScorer(run, device, precision)
    rows: list[dict[str, Any]] = []
    for sample in samples:
        params, macs = network_size(sample.genotype, run.space_spec, frames, patch)
        rows.append({"genotype_id": sample.genotype_id, "name": sample.name, "searched": sample.searched,
                     "params": params, "macs": macs,
                     "supernet_psnr": scorer.score(sample.arch, val_data, batch)})
    del scorer  # the supernet's memory, before the trainings

    steps = _steps_per_epoch(len(train_data), batch, config.standalone_steps_per_epoch)
    trained, skipped, failed = [], [], []
    for k, (sample, row) in enumerate(zip(samples, rows), start=1):
        folder = out / STANDALONE_DIR / sample.genotype_id
        heading = f"[{k}/{len(samples)}] {sample.name} {sample.genotype_id}"
        done, ran = run_unit(
            folder, heading, f"{heading}: standalone training, {config.standalone_epochs} epoch(s) x {steps} step(s)",
            lambda sample=sample, folder=folder: _standalone(sample, run, config, settings, train_data, val_data,
                                                             folder, device, precision),
            failed_row={"genotype_id": sample.genotype_id, "standalone_psnr": math.nan},
            describe=lambda r: f"standalone PSNR {r['standalone_psnr']:.2f} dB",
            say=say, start=lambda sample=sample, folder=folder: sample.genotype.save(folder / GENOTYPE))
        row["standalone_psnr"] = float(done.get("standalone_psnr", math.nan))
        row["status"] = HELD if done.get("status") == HELD else "failed" if "error" in done else "done"
        row["error"] = done.get("error", "")
        (failed if row["status"] == "failed" else trained if ran else skipped).append(sample.genotype_id)

    return _summarise(run, config, settings, rows, out, trained, skipped, failed, steps, len(val_data),
                      time.perf_counter() - started, say)


def _steps_per_epoch(items: int, batch: int, limit: int | None) -> int:
    full = max(1, math.ceil(items / batch))  # retraining keeps the last, smaller batch
    return full if limit is None else min(full, limit)


def _standalone(sample: Sample, run: OneShotRun, config: TrustConfig, settings: dict[str, Any], train_data: Dataset,
                val_data: Dataset, folder: Path, device: torch.device, precision: Precision) -> dict[str, Any]:
    """Train the sample's plain network from scratch (resumable: retrain's last.ckpt); score it."""
    torch.manual_seed(config.seed)  # the same initialisation rule for every sample
    network = run.space_spec.make_network(sample.genotype)
    retrain_config = RetrainConfig(
        epochs=config.standalone_epochs, batch_size=int(settings["batch_size"]), lr=float(settings["lr"]),
        weight_decay=run.search.weight_decay, min_lr=min(1e-6, float(settings["lr"])), loss=run.search.loss,
        seed=config.seed, device=config.device, precision=config.precision, progress=config.progress,
        limit_train_batches=config.standalone_steps_per_epoch)
    result = retrain(network, train_data, val_data, retrain_config, folder)
    psnr = validation_psnr(network, val_data, int(settings["batch_size"]), device, precision)
    return {"genotype_id": sample.genotype_id, "standalone_psnr": psnr, "epochs": result.epochs_run,
            "seconds": round(result.seconds, 2), "best_val_psnr_logged": result.best_val_psnr}


# --------------------------------------------------------------------------------------------------
# statistics, the verdict and the files


def trust_sentence(tau: CorrelationCI) -> str:
    """The verdict in one sentence: tau, its interval, and whether one-shot rankings can be trusted here."""
    level = _level(tau.confidence)
    if tau.n < 3 or not (math.isfinite(tau.value) and math.isfinite(tau.lo) and math.isfinite(tau.hi)):
        return (f"Kendall tau {_f(tau.value)} over {tau.n} architectures: too few architectures with both scores "
                "to tell whether the supernet's ranking can be trusted; score more (--samples)")
    head = f"Kendall tau {tau.value:.2f} [{tau.lo:.2f}, {tau.hi:.2f}] ({level} interval, {tau.n} architectures): "
    if tau.lo > 0 and tau.value >= AGREE_TAU:
        return head + "the supernet's ranking agrees with standalone training; one-shot rankings can be trusted on " \
                      "this task at this budget"
    if tau.lo > 0:
        return head + "the supernet's ranking agrees only weakly with standalone training; use it to shortlist and " \
                      "confirm the best few architectures by standalone training"
    if tau.hi < 0:
        return head + "the supernet's ranking runs against standalone training; one-shot rankings cannot be trusted " \
                      "here: prefer a multi-trial strategy"
    return head + "the supernet's ranking says nothing here (the interval includes 0); one-shot rankings cannot be " \
                  "trusted on this task: prefer a multi-trial strategy (or more --samples to narrow the interval)"


def _level(confidence: float) -> str:
    return f"{100 * confidence:g} %"


def _f(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ranks(values: list[float]) -> list[float]:
    """Rank 1 = the highest PSNR (ties share their mean rank); NaN stays unranked."""
    from scipy.stats import rankdata

    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    out = [math.nan] * len(values)
    for i, r in zip(finite, rankdata([-values[i] for i in finite], method="average")):
        out[i] = float(r)
    return out


def _summarise(run: OneShotRun, config: TrustConfig, settings: dict[str, Any], rows: list[dict[str, Any]],
               out: Path, trained: list[str], skipped: list[str], failed: list[str], steps: int, val_items: int,
               seconds: float, say: Callable[[str], None]) -> TrustResult:
    for key in ("supernet", "standalone"):
        for row, rank in zip(rows, _ranks([r[f"{key}_psnr"] for r in rows])):
            row[f"{key}_rank"] = rank
    both = [r for r in rows if math.isfinite(r["supernet_psnr"]) and math.isfinite(r["standalone_psnr"])]
    x, y = [r["supernet_psnr"] for r in both], [r["standalone_psnr"] for r in both]
    kendall = rank_correlation_ci(x, y, "kendall", config.bootstrap_resamples, config.confidence, config.seed)
    spearman = rank_correlation_ci(x, y, "spearman", config.bootstrap_resamples, config.confidence, config.seed)
    sentence = trust_sentence(kendall)
    protocol = {"standalone_steps": config.standalone_epochs * steps, "standalone_steps_per_epoch": steps,
                "validation_items": val_items, "score": "PSNR (RGB, capped) on the search's validation split",
                "macs_at": f"{run.search.data.patch_size}x{run.search.data.patch_size}, {run.space_config.frames} "
                           "frame(s)"}
    files = {"csv": out / CSV_NAME, "json": out / JSON_NAME, "md": out / MD_NAME}
    _write_csv(rows, files["csv"])
    write_json(files["json"], {
        "kendall_tau": kendall.value, "tau_ci": [kendall.lo, kendall.hi], "spearman_rho": spearman.value,
        "rho_ci": [spearman.lo, spearman.hi], "sentence": sentence, "kendall": kendall.as_dict(),
        "spearman": spearman.as_dict(), "n": kendall.n, "searched_genotype_id": rows[0]["genotype_id"],
        "settings": {**settings, **protocol}, "rows": rows, "seconds": round(seconds, 2)})
    plot = _scatter(rows, kendall, spearman, out / PNG_NAME)
    if plot is not None:
        files["png"] = plot
    files["md"].write_text(_markdown(run, config, settings, protocol, rows, kendall, spearman, sentence, failed))
    log.info("trust: %s", sentence)
    return TrustResult(kendall_tau=kendall.value, tau_ci=(kendall.lo, kendall.hi), spearman_rho=spearman.value,
                       rho_ci=(spearman.lo, spearman.hi), sentence=sentence, rows=rows, out_dir=out,
                       searched_id=rows[0]["genotype_id"], kendall=kendall, spearman=spearman, trained=trained,
                       skipped=skipped, failed=failed, files=files)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _scatter(rows: list[dict[str, Any]], kendall: CorrelationCI, spearman: CorrelationCI, path: Path) -> Path | None:
    points = [r for r in rows if math.isfinite(r["supernet_psnr"]) and math.isfinite(r["standalone_psnr"])]
    if not points:
        return None
    import matplotlib  # only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for searched, style in ((False, dict(color="tab:blue", marker="o", s=30, label="uniform draws")),
                            (True, dict(color="tab:red", marker="*", s=160, label="searched genotype"))):
        sub = [r for r in points if bool(r["searched"]) == searched]
        if sub:
            ax.scatter([r["supernet_psnr"] for r in sub], [r["standalone_psnr"] for r in sub], zorder=3, **style)
    for r in points:
        ax.annotate(r["genotype_id"][:6], (r["supernet_psnr"], r["standalone_psnr"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points", color="grey")
    ax.set_xlabel("supernet PSNR, inherited weights (dB)")
    ax.set_ylabel("standalone PSNR, trained from scratch (dB)")
    ax.set_title(f"Kendall tau {_f(kendall.value)} [{_f(kendall.lo)}, {_f(kendall.hi)}], Spearman rho "
                 f"{_f(spearman.value)} [{_f(spearman.lo)}, {_f(spearman.hi)}]", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _markdown(run: OneShotRun, config: TrustConfig, settings: dict[str, Any], protocol: dict[str, Any],
              rows: list[dict[str, Any]], kendall: CorrelationCI, spearman: CorrelationCI, sentence: str,
              failed: list[str]) -> str:
    level = _level(kendall.confidence)
    lines = [f"# Trust check: {run.search.strategy} on {run.search.space}", "", f"**{sentence}.**", "",
             "| statistic | value | " + level + " interval | p (no association) |", "|---|---|---|---|"]
    for name, ci in (("Kendall tau", kendall), ("Spearman rho", spearman)):
        lines.append(f"| {name} | {_f(ci.value)} | [{_f(ci.lo)}, {_f(ci.hi)}] | {_f(ci.p_value, 3)} |")
    lines += ["", f"Intervals: percentile bootstrap over the architectures ({kendall.valid_resamples} of "
                  f"{kendall.resamples} resamples defined).", "",
              "| genotype | sample | params | MACs | supernet PSNR | rank | standalone PSNR | rank |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"**{r['name']}**" if r["searched"] else r["name"]
        lines.append(f"| `{r['genotype_id']}` | {name} | {r['params']:,} | {r['macs']:,} | {_f(r['supernet_psnr'])} | "
                     f"{_f(r['supernet_rank'], 1)} | {_f(r['standalone_psnr'])} | {_f(r['standalone_rank'], 1)} |")
    data = run.search.data
    source = "built-in synthetic rain" if data.folder is None else f"{data.folder}" + \
        ("" if data.split is None else f", split {data.split}")
    lines += ["", "## Protocol", "",
              f"- Run: `{run.run_dir}` ({run.search.strategy}, space {run.search.space}, search seed "
              f"{run.search.seed}); data: {source}.",
              f"- Architectures: {len(rows)}; the searched genotype (`{rows[0]['genotype_id']}`, in bold) is one of "
              f"them, the others are distinct uniform draws of the space (seeds from {config.seed}).",
              "- Supernet score: the trained supernet (`supernet.pt`) with its architecture fixed to the sample, "
              "inherited weights, no further training.",
              f"- Standalone score: each network trained from scratch by nas-restore's retraining, "
              f"{config.standalone_epochs} epoch(s) x {protocol['standalone_steps_per_epoch']} step(s) = "
              f"{protocol['standalone_steps']} optimiser steps, batch {settings['batch_size']}, lr {settings['lr']}, "
              f"seed {config.seed}, precision {config.precision}; the best epoch's weights.",
              f"- Both scores: {protocol['score']} ({protocol['validation_items']} items), the same function. The "
              "split also steered the search's architecture steps and picks the standalone best epoch, so both "
              "sides are slightly optimistic; the comparison is between them, not with a test set.",
              f"- MACs at {protocol['macs_at']}."]
    if failed:
        lines.append(f"- Failed standalone trainings (left out of the statistics; re-run to retry): "
                     f"{', '.join(failed)}.")
    lines.append("")
    return "\n".join(lines)


__all__ = ["TrustConfig", "TrustResult", "TrustError", "run_trust", "load_one_shot_run", "draw_samples",
           "InheritedScorer", "validation_psnr", "trust_sentence", "OneShotRun", "Sample"]
