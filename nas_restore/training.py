"""Lightning training core: the restoration training/validation steps and ``retrain``.

``RestorationSteps`` is a mixin so that the *same* steps run in a plain ``pl.LightningModule``
(retraining a fixed network, here) and in NNI's ``nni.nas.evaluator.pytorch.LightningModule``
(the search evaluator, elsewhere), which sets ``self.model`` later through ``set_model``.
This module never imports NNI: a retrained model must not need it.
"""
from __future__ import annotations

import csv
import inspect
import logging
import math
import pickle
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nas_restore.build import save_weights
from nas_restore.device import lightning_accelerator, resolve_device
from nas_restore.errors import UserError
from nas_restore.losses import LossConfig, RestorationLoss, ssim_torch
from nas_restore.metrics import MAX_PSNR, psnr_torch
from nas_restore.outputs import RunLock
from nas_restore.precision import PRECISIONS, Precision, full_precision, resolve_precision
from nas_restore.seeding import seed_epoch, seed_everything
from nas_restore.threads import JobSlot, share_threads

log = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "lr", "seconds")


@dataclass
class OptimConfig:
    """Adam + cosine annealing to ``min_lr``.

    ``cosine_epochs`` None anneals over the trainer's ``max_epochs`` (per epoch) or, for a trainer
    limited by ``max_steps`` only, over those steps (per step); set it when the schedule must
    differ from the run length.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    min_lr: float = 1e-6
    cosine_epochs: int | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.cosine_epochs is not None and self.cosine_epochs < 1:
            raise ValueError(f"optim cosine_epochs must be >= 1 or None, got {self.cosine_epochs}")


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """Check a ``(frames [B,T,3,H,W], target [B,3,H,W])`` batch and say what is wrong otherwise.

    A temporal batch (:class:`nas_restore.temporal.TemporalPairs`) has ``frames [B,T+1,3,H,W]`` and
    ``target [B,2,3,H,W]`` (the clean frames t-1 and t); it passes unchanged.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"a batch must be (frames, target), got {type(batch).__name__}"
                         f"{'' if not isinstance(batch, (tuple, list)) else f' of length {len(batch)}'}")
    frames, target = batch
    temporal = target.ndim == 5 and target.shape[1] == 2 and frames.ndim == 5 and frames.shape[1] >= 2
    if frames.ndim != 5 or (target.ndim != 4 and not temporal):
        raise ValueError(f"a batch must be frames [B, T, 3, H, W] and target [B, 3, H, W], got "
                         f"{tuple(frames.shape)} and {tuple(target.shape)}: dataset items are "
                         f"(frames [T, 3, H, W], target [3, H, W]), T=1 for single images")
    return frames, target


class RestorationSteps:
    """Training / validation / optimiser logic shared by retraining and the NNI search evaluator.

    The host class must be a ``pl.LightningModule`` and provide ``self.model`` (an ``nn.Module``
    mapping [B, T, 3, H, W] to [B, 3, H, W]), ``self.criterion`` (a ``RestorationLoss``) and
    ``self.optim_config`` (an ``OptimConfig``). The mixin keeps no state of its own, so it has no
    ``__init__`` and does not disturb NNI's tracing of the host's constructor arguments.
    """

    model: nn.Module
    criterion: RestorationLoss
    optim_config: OptimConfig

    def forward(self, frames: Tensor) -> Tensor:
        return self.model(frames)

    def _predict(self, frames: Tensor, target: Tensor) -> Tensor:
        """The network's output in fp32 (under mixed precision the network itself runs in bf16/fp16)."""
        pred = self.model(frames).float()
        if pred.shape != target.shape:
            raise ValueError(f"the model returned {tuple(pred.shape)} for frames {tuple(frames.shape)}, "
                             f"expected the target's shape {tuple(target.shape)} ([B, 3, H, W])")
        return pred

    def batch_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(weighted loss, unweighted parts, target of the scored frames) of one training batch.

        A temporal batch (shifted windows, see :mod:`nas_restore.temporal`) runs the network on the window
        centred on t (scored against clean t) and on the one centred on t-1 (its "previous output"),
        and adds the temporal term between the two outputs.
        """
        frames, target = _unpack(batch)
        if target.ndim == 5:
            current = frames[:, 1:]
            pred = self._predict(current, target[:, 1])
            weight = self.criterion.config.temporal_weight
            previous = self._predict(frames[:, :-1], target[:, 0]) if weight else None
            with full_precision(pred.device.type):  # losses stay fp32 under mixed precision
                loss, parts = self.criterion(pred, target[:, 1], rainy=current[:, current.shape[1] // 2])
                if previous is not None:
                    parts["temporal"] = self.criterion.temporal(previous, pred, target[:, 0], target[:, 1])
                    loss = loss + weight * parts["temporal"]
            return loss, parts, target[:, 1]
        pred = self._predict(frames, target)
        with full_precision(pred.device.type):
            loss, parts = self.criterion(pred, target, rainy=frames[:, frames.shape[1] // 2])
        return loss, parts, target

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, parts, target = self.batch_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {batch_idx}: lower the learning "
                                     f"rate (optim lr) or set grad_clip")
        n = target.shape[0]
        # sync_dist: under DDP each process sees its share of a batch; the logged figures are of the whole
        # batch (the epoch means weighted by items over every process), as a single process logs them
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"train_{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=n,
                      sync_dist=True)
        lr = self._current_lr()
        if lr is not None:
            self.log("lr", lr, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def _current_lr(self) -> float | None:
        """Learning rate of the first (weight) optimiser, or None outside a fit."""
        try:
            optimizers = self.trainer.optimizers
        except RuntimeError:  # not attached to a trainer
            return None
        return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None

    def _evaluate(self, batch: Any, prefix: str) -> None:
        frames, target = _unpack(batch)
        if target.ndim == 5:  # shifted windows: score the current one
            frames, target = frames[:, 1:], target[:, 1]
        pred = self._predict(frames, target)
        with full_precision(pred.device.type):  # metrics stay fp32 under mixed precision
            loss, _ = self.criterion(pred, target, rainy=frames[:, frames.shape[1] // 2])
            clamped = pred.clamp(0.0, 1.0)
            psnr = psnr_torch(clamped, target, y_channel=False, max_db=MAX_PSNR).mean()
            h, w = target.shape[-2:]
            padding = "valid" if min(h, w) >= 11 else "reflect"
            ssim = ssim_torch(clamped, target, padding=padding)
        # batch_size weights the epoch mean by images, so it is the per-image mean over the whole set.
        self.log_dict({f"{prefix}_loss": loss, f"{prefix}_psnr": psnr, f"{prefix}_ssim": ssim},
                      on_step=False, on_epoch=True, prog_bar=True, batch_size=target.shape[0], sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _cosine_length(self) -> tuple[int, str]:
        """(T_max, interval): ``cosine_epochs``, else the trainer's max_epochs, else its max_steps."""
        cfg = self.optim_config
        if cfg.cosine_epochs is not None:
            return cfg.cosine_epochs, "epoch"
        try:
            max_epochs, max_steps = self.trainer.max_epochs, self.trainer.max_steps
        except RuntimeError:  # not attached to a trainer
            max_epochs, max_steps = None, -1
        if max_epochs is not None and max_epochs >= 1:
            return max_epochs, "epoch"
        if max_steps is not None and max_steps >= 1:
            return max_steps, "step"
        raise ValueError("cosine annealing needs a length: give the trainer max_epochs or max_steps, or set "
                         "optim cosine_epochs")

    def on_fit_start(self) -> None:
        """Under mixed precision, the network's weights go channels_last (the fast conv kernels' layout)."""
        super().on_fit_start()  # type: ignore[misc]
        Precision.from_lightning(self.trainer.precision, self.device.type).prepare(self.model)

    def on_train_start(self) -> None:
        """Re-derive each LambdaLR learning rate from its step count: a resumed checkpoint restores the
        optimiser's last lr, which is stale when the run was resumed with a different length."""
        super().on_train_start()  # type: ignore[misc]
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                           scheduler.lr_lambdas):
                    group["lr"] = base * fn(scheduler.last_epoch)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_config
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        t_max, interval = self._cosine_length()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(t_max, cfg.min_lr / cfg.lr))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def cosine_factor(t_max: int, floor: float) -> Callable[[int], float]:
    """Closed-form cosine annealing from 1 to ``floor`` over ``t_max`` steps, then flat at ``floor``.

    Why not ``CosineAnnealingLR``: its state (T_max, recursive lr) is restored from a checkpoint, so a
    run resumed with more epochs would stay at the old schedule's end; this factor is rebuilt from
    the new length on every fit and only the step count is restored (a plain function is not saved
    in LambdaLR's state).
    """

    def factor(step: int) -> float:
        progress = min(step, t_max) / t_max
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class RestorationModule(RestorationSteps, pl.LightningModule):
    """A plain Lightning module around a fixed restoration network, for retraining."""

    def __init__(self, model: nn.Module, loss: LossConfig | None = None,
                 optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.criterion = RestorationLoss(loss or LossConfig())
        self.optim_config = optim or OptimConfig()


@dataclass
class RetrainConfig:
    """Settings of one retraining run.

    The defaults suit short runs on a small CPU: Adam at 1e-3 (its usual default, stable for
    small conv nets) annealed to 1e-6, batch 8, gradient norm clipped at 1.0 so that a deep
    searched network does not diverge in its first steps, and data loaded in the main process.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_lr: float = 1e-6
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    grad_clip: float | None = 1.0
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    progress: bool = True
    precision: str = "fp32"                  # fp32, bf16, fp16 or auto (nas_restore/precision.py)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        for name in ("epochs", "batch_size", "devices", "num_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"retrain.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"retrain.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"retrain.grad_clip must be > 0 or None (no clipping), got {self.grad_clip}")
        for name in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"retrain.{name} must be > 0 (a count, or a fraction <= 1) or None, got {value}")
        self.optim()  # validates lr, weight_decay, min_lr
        if self.precision not in PRECISIONS:
            raise ValueError(f"retrain.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def optim(self) -> OptimConfig:
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, min_lr=self.min_lr)


@dataclass
class RetrainResult:
    """What a retraining run produced (paths inside its ``out_dir``)."""

    best_val_psnr: float
    best_val_ssim: float
    epochs_run: int
    seconds: float
    best_checkpoint: Path
    metrics_csv: Path
    model_path: Path
    precision: str = "fp32"  # what the network computed in (``auto`` resolved)
    rank: int = 0            # DDP: this process's global rank; only rank 0 wrote the files and has the figures


class ShareThreads(Callback):
    """At every epoch, torch's threads to this job's share of the cores (jobs started or ended since)."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        share_threads(self.workers)


class _EpochTimer(Callback):
    """Logs ``epoch_seconds`` (training + validation wall time) and counts epochs run in this call."""

    def __init__(self) -> None:
        self.epochs_run = 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_run += 1
        pl_module.log("epoch_seconds", time.perf_counter() - self._start, on_step=False, on_epoch=True,
                      sync_dist=True)  # DDP: the processes' mean


_QUIET_WARNINGS = (
    r".*does not have many workers.*",  # num_workers=0 is the deliberate default on small machines
    r".*Checkpoint directory .* exists and is not empty.*",  # expected when resuming
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*LeafSpec.*",  # torch 2.13 deprecation inside pytorch_lightning
    r".*smaller than the logging interval.*",
    r".*module\(s\) in eval mode at the start of training.*",  # the frozen contrastive feature extractor
)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info chatter ("GPU available: ...", "Seed set to ...") and known warnings."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def trainer_strategy(devices: int, num_nodes: int) -> str:
    """Lightning's ``strategy``: "ddp" (one process per device, gradients all-reduced; gloo on CPUs, NCCL on
    GPUs) when training on several devices or machines, else "auto" (a single process).

    Why "ddp" and not "ddp_spawn": "ddp" starts the other processes by running the same command line again
    (``nas-restore retrain ...`` with ``LOCAL_RANK=1..``), which is also how torchrun, SLURM and a second
    machine start them, so there is one path for all; nothing is pickled ("ddp_spawn" pickles the trainer,
    and a search's callbacks are classes made inside functions, which pickle cannot send), and every process
    is counted among the running jobs, so each takes its share of the cores (:mod:`nas_restore.threads`).
    The price: every process runs the command up to the training, so the commands write their files from
    rank 0 only (:func:`nas_restore.outputs.is_secondary_rank`), and a library caller's script is run again
    per process (Lightning's rule for "ddp").
    """
    return "ddp" if devices > 1 or num_nodes > 1 else "auto"


def distributed_shard() -> tuple[int, int]:
    """``(rank, world size)`` of this process in a running torch.distributed group; ``(0, 1)`` outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def wait_for_ranks(trainer: pl.Trainer, timeout: float = 300.0) -> None:
    """Rank 0 of a DDP run started by Lightning waits for the processes it started to end, so that the command
    returns with nothing of the run still going (the others only tear down after the fit: quick)."""
    for proc in getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("DDP process %d still runs %.0f s after the training ended; not waiting for it", proc.pid,
                        timeout)
            continue
        if code:
            log.warning("DDP process %d ended with exit status %s after the training", proc.pid, code)


_TENSORBOARD_NOTED = False  # say once per process that TensorBoard is missing, not at every retraining


def make_loggers(out_dir: Path) -> list[Any]:
    """CSV logs in ``out_dir/logs`` always; TensorBoard logs in ``out_dir/tensorboard`` when installed."""
    loggers: list[Any] = [CSVLogger(save_dir=out_dir, name="logs", flush_logs_every_n_steps=1)]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=out_dir, name="tensorboard", default_hp_metric=False))
    except (ImportError, ModuleNotFoundError) as err:
        global _TENSORBOARD_NOTED
        say = log.debug if _TENSORBOARD_NOTED else log.info  # optional extra: not a problem, so not a warning
        _TENSORBOARD_NOTED = True
        say("TensorBoard logs off (%s): pip install 'nas-restore[tensorboard]' for them; CSV logs are in %s",
            str(err).splitlines()[0], out_dir / "logs")
    return loggers


def _check_dataset(data: Dataset, name: str) -> None:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(f"{name} must be a map-style Dataset with __len__") from err
    if n == 0:
        raise ValueError(f"{name} is empty: give it at least one (frames, target) item")
    item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"{name}[0] must be (frames [T, 3, H, W], target [3, H, W]), got {type(item).__name__}")
    frames, target = item
    if getattr(frames, "ndim", None) == 4 and getattr(target, "ndim", None) == 4 and target.shape[0] == 2:
        return  # a temporal pair (frames [T+1, 3, H, W], targets [2, 3, H, W])
    if getattr(frames, "ndim", None) != 4 or getattr(target, "ndim", None) != 3:
        raise ValueError(f"{name}[0] must be (frames [T, 3, H, W], target [3, H, W]), got shapes "
                         f"{tuple(getattr(frames, 'shape', ()))} and {tuple(getattr(target, 'shape', ()))}")


def _version_key(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return int(match.group(1)) if match else -1


def collect_epoch_metrics(log_dir: Path) -> list[dict[str, float]]:
    """One row per epoch from every CSVLogger version under ``log_dir`` (resumed runs add versions).

    Later versions win for an epoch logged twice (a run killed mid-epoch repeats that epoch).
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for path in sorted(log_dir.glob("version_*/metrics.csv"), key=_version_key):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                merged = by_epoch.setdefault(epoch, {})
                for key, value in row.items():
                    if value not in ("", None) and key not in ("epoch", "step"):
                        merged[key] = float(value)
    names = {"train_loss": ("train_loss_epoch", "train_loss"), "seconds": ("epoch_seconds",)}
    rows = []
    for epoch in sorted(by_epoch):
        raw = by_epoch[epoch]
        row: dict[str, float] = {"epoch": float(epoch)}
        for column in METRICS_COLUMNS[1:]:
            keys = names.get(column, (column,))
            row[column] = next((raw[k] for k in keys if k in raw), math.nan)
        rows.append(row)
    return rows


def _write_metrics(rows: list[dict[str, float]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(METRICS_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "epoch": int(row["epoch"])})


class EpochShuffle(Sampler[int]):
    """A random order of ``n`` items drawn anew each epoch from ``(seed, epoch)`` only, never from the global
    RNG: resuming at epoch k replays epoch k's order exactly (the global RNG's state is not in last.ckpt), and
    its random crops too (with ``num_workers`` 0: :meth:`__iter__` seeds torch's generator per epoch).

    Under DDP (a torch.distributed group is running) process ``r`` of ``W`` takes items ``r, r+W, r+2W, ...``
    of that one order (the order padded with its own start to a multiple of ``W``, as torch's
    ``DistributedSampler`` pads), so with batch B per process, the W processes' k-th batches together are the
    k-th batch of one process with batch W*B: the same data, the same steps, only spread out.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's order of all ``n`` items (every process draws the same)."""
        generator = torch.Generator().manual_seed(1_000_003 * self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        # torch's generator, which the items' random crops and flips draw from, seeded for this epoch as it
        # starts: here, after the loader's own draw of a worker seed, so that a resumed epoch (whose loader
        # Lightning starts at another moment) draws as an uninterrupted one does
        seed_epoch(self.seed, self.epoch)
        rank, world = distributed_shard()
        order = self.order()
        if world == 1 or not order:
            return iter(order)
        total = -(-self.n // world) * world
        padded = (order * -(-total // self.n))[:total]
        return iter(padded[rank::world])

    def __len__(self) -> int:
        _, world = distributed_shard()
        return -(-self.n // world)


class ValidationShard(Sampler[int]):
    """The ``n`` validation items in order; under DDP process ``r`` of ``W`` scores items ``r, r+W, ...`` (no
    padding: the epoch's logged mean is weighted by items over the processes, so it is the mean over the whole
    set, each item once). With fewer items than processes, every process scores them all (the same mean)."""

    def __init__(self, n: int):
        self.n = n

    def _indices(self) -> list[int]:
        rank, world = distributed_shard()
        if world == 1 or self.n < world:
            return list(range(self.n))
        return list(range(rank, self.n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def retrain(model: nn.Module, train_data: Dataset, val_data: Dataset, config: RetrainConfig,
            out_dir: Path) -> RetrainResult:
    """Train ``model`` from its current weights on ``train_data``, keep the best epoch by ``val_psnr``.

    Writes into ``out_dir``: ``checkpoints/best.ckpt`` and ``last.ckpt`` (Lightning), ``logs/`` (CSV
    logger), ``metrics.csv`` (one row per epoch) and ``model.pt`` (plain weights of the best epoch).
    If ``checkpoints/last.ckpt`` exists the run resumes from it, so a killed run can be restarted
    with the same call: the data order of every epoch depends on (seed, epoch) alone, and Lightning restores
    the weights, the optimiser, the schedule and the epoch, so it ends where an uninterrupted run would.
    On return ``model`` holds the best weights, on the CPU.
    """
    out_dir = Path(out_dir)
    _check_dataset(train_data, "train_data")
    _check_dataset(val_data, "val_data")
    # a retraining folder, one command at a time, up to model.pt (re-entrant: run_retrain already holds it)
    with RunLock(out_dir, kind="retrain"):
        return _retrain_locked(model, train_data, val_data, config, out_dir)


def _retrain_locked(model: nn.Module, train_data: Dataset, val_data: Dataset, config: RetrainConfig,
                    out_dir: Path) -> RetrainResult:
    """:func:`retrain` in its claimed and locked folder."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    accelerator, devices = lightning_accelerator(device, config.devices)
    ckpt_dir = out_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"

    start = time.perf_counter()
    with _quiet_lightning(), JobSlot():  # counted among the running jobs (threads: this job's share)
        seed_everything(config.seed)
        pin = device.type == "cuda"
        loader_kwargs = dict(batch_size=config.batch_size, num_workers=config.num_workers, pin_memory=pin,
                             persistent_workers=config.num_workers > 0)
        # the order of an epoch and torch's generator, which random crops draw from, are functions of (seed, epoch)
        # alone (EpochShuffle; Lightning calls its set_epoch before every epoch): a run resumed from last.ckpt
        # sees the batches that an uninterrupted one would (with num_workers 0; persistent workers keep their
        # own generators from the first epoch on); under DDP
        # both samplers shard themselves (Lightning's own DistributedSampler is turned off below)
        train_loader = DataLoader(train_data, sampler=EpochShuffle(len(train_data), config.seed), **loader_kwargs)
        val_loader = DataLoader(val_data, sampler=ValidationShard(len(val_data)), **loader_kwargs)

        module = RestorationModule(model, config.loss, config.optim())
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_psnr", mode="max",
                                     save_top_k=1, enable_version_counter=False)
        # A second, unmonitored checkpoint for resuming: PL 2.6's save_last=True only writes last.ckpt
        # in epochs that also improved the monitored metric, so it would resume from the best epoch.
        latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                 every_n_epochs=1, enable_version_counter=False)
        timer = _EpochTimer()
        trainer_kwargs: dict[str, Any] = {}
        for name in ("limit_train_batches", "limit_val_batches"):
            if getattr(config, name) is not None:
                trainer_kwargs[name] = getattr(config, name)
        trainer = pl.Trainer(
            max_epochs=config.epochs,
            accelerator=accelerator,
            devices=devices,
            num_nodes=config.num_nodes,
            strategy=trainer_strategy(config.devices, config.num_nodes),
            default_root_dir=out_dir,
            logger=make_loggers(out_dir),
            callbacks=[checkpoint, latest, timer, ShareThreads(config.num_workers)],
            gradient_clip_val=config.grad_clip,
            precision=precision.lightning,
            enable_progress_bar=config.progress,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(train_loader))),
            use_distributed_sampler=False,  # EpochShuffle and ValidationShard shard the data themselves
            **trainer_kwargs,
        )
        resume = last_ckpt if last_ckpt.is_file() else None
        if resume is not None:
            check_resume_checkpoint(resume, module)
            log.info("resuming from %s", resume)
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume, **_weights_only_fit(trainer))

    if not trainer.is_global_zero:  # DDP: rank 0 alone writes the summary files and model.pt
        return RetrainResult(best_val_psnr=math.nan, best_val_ssim=math.nan, epochs_run=timer.epochs_run,
                             seconds=time.perf_counter() - start, best_checkpoint=ckpt_dir / "best.ckpt",
                             metrics_csv=out_dir / "metrics.csv", model_path=out_dir / "model.pt",
                             precision=precision.name, rank=trainer.global_rank)
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else ckpt_dir / "best.ckpt"
    if not best_path.is_file():
        raise RuntimeError(f"training finished without a best checkpoint in {ckpt_dir}: was val_psnr logged? "
                           f"(check that val_data is not empty and limit_val_batches > 0)")
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model.cpu()

    rows = collect_epoch_metrics(out_dir / "logs")
    metrics_csv = out_dir / "metrics.csv"
    _write_metrics(rows, metrics_csv)
    scored = [r for r in rows if not math.isnan(r["val_psnr"])]
    best = max(scored, key=lambda r: r["val_psnr"]) if scored else {"epoch": math.nan, "val_psnr": math.nan,
                                                                    "val_ssim": math.nan}
    model_path = out_dir / "model.pt"
    save_weights(model, model_path, best_epoch=int(best["epoch"]) if scored else -1,
                 best_val_psnr=float(best["val_psnr"]), best_val_ssim=float(best["val_ssim"]),
                 config=plain_data(asdict(config)), precision=precision.name)
    wait_for_ranks(trainer)  # DDP: the processes Lightning started have ended too
    seconds = time.perf_counter() - start
    log.info("retrain: %d epoch(s) in %.1f s (%s), best val_psnr %.3f dB at epoch %s", timer.epochs_run, seconds,
             precision.name, best["val_psnr"], best["epoch"])
    return RetrainResult(best_val_psnr=float(best["val_psnr"]), best_val_ssim=float(best["val_ssim"]),
                         epochs_run=timer.epochs_run, seconds=seconds, best_checkpoint=best_path,
                         metrics_csv=metrics_csv, model_path=model_path, precision=precision.name)


# what Lightning needs of a checkpoint to resume a fit (a save_weights_only or foreign file lacks some)
_RESUME_KEYS = ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers", "loops")


def check_resume_checkpoint(path: Path, module: nn.Module) -> None:
    """Refuse a ``last.ckpt`` that Lightning could not resume from, before ``trainer.fit`` meets it.

    A truncated file (a run killed while saving, a full disk) or one of another network would otherwise stop
    the run deep inside Lightning with a traceback. Read with ``weights_only=True`` said explicitly, so that
    no torch version (nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) unpickles code from a file in the folder.
    """
    fix = f"delete {path} to start this retraining afresh (or the whole folder), or pass another --out"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as err:  # truncated, not a torch file, or refused by weights_only
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        raise UserError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {reason}): {fix}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint: {fix}")
    missing = [key for key in _RESUME_KEYS if key not in checkpoint]
    if missing or not isinstance(checkpoint["state_dict"], dict):
        raise UserError(f"{path} is not a resumable Lightning checkpoint of a retraining (it lacks "
                        f"{', '.join(missing) or 'a state_dict'}): {fix}")
    expected = module.state_dict()
    found = checkpoint["state_dict"]
    unknown, absent = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    shapes = [k for k in expected if k in found and getattr(found[k], "shape", None) != expected[k].shape]
    if unknown or absent or shapes:
        detail = "; ".join(part for part in (
            f"unexpected {', '.join(unknown[:3])}" if unknown else "",
            f"missing {', '.join(absent[:3])}" if absent else "",
            f"other shapes for {', '.join(shapes[:3])}" if shapes else "") if part)
        raise UserError(f"{path} holds the weights of another network ({detail}): {fix}")


def _weights_only_fit(trainer: pl.Trainer) -> dict[str, bool]:
    """``weights_only=True`` for ``trainer.fit`` where Lightning takes it (2.6 does): its own load of the resume
    checkpoint then refuses pickled code on any torch; a Lightning without it leaves that to torch's default
    (weights only since torch 2.6), after :func:`check_resume_checkpoint` has read the file safely."""
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def plain_data(value: Any) -> Any:
    """Plain data that ``torch.load(weights_only=True)`` accepts and ``==`` compares (configs in model.pt, a
    search checkpoint's settings, supernet.pt): NNI's labels (a ``str`` subclass), numpy scalars and tuples
    become str, numbers and lists; tensors stay; anything else its str."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, torch.Tensor):
        return value
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return str(value)
