"""Continual learning across rain types (RRGNet): one model trained task after task, schemes compared.

Schemes (same initial weights, optimiser, steps per task, batches of the current task and seeds):

* ``finetune``: plain sequential fine-tuning, the forgetting baseline;
* ``distill``: + knowledge distillation from the frozen model of the previous task (on the outputs,
  optionally on intermediate features of named modules, through forward hooks);
* ``replay``: + the "rain review" buffer (:mod:`nas_restore.replay`): stored samples of old tasks are
  appended to every batch;
* ``distill+replay``: both, RRGNet's recipe (the teacher also sees the replayed samples);
* ``joint``: at stage k, training on the union of tasks 1..k (all data available), the upper reference.

After each task k the model is scored on the held-out test set of every task j <= k: ``R[k][j]``
(PSNR and SSIM). From R: average PSNR after the last task, forgetting (mean over j < K of
``max_{j<=k<K} R[k][j] - R[K][j]``, Chaudhry et al. 2018) and backward transfer (mean over j < K of
``R[K][j] - R[j][j]``, Lopez-Paz & Ranzato 2017); K is the last task.

A run folder holds one sub-folder per scheme and one per finished stage (``model.pt``, ``row.json`` and,
with replay, ``replay.pt``); a re-run skips finished stages. Inside a stage, every ``checkpoint_every``
steps ``stage.ckpt`` keeps the stage's whole training state, so a stage killed midway continues from
its last checkpoint and ends as an uninterrupted one would (same weights, same losses); its row gives
the whole stage's seconds, every call's part together.
"""

from __future__ import annotations

import copy
import csv
import difflib
import logging
import math
import os
import pickle
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from nas_restore import config as cfg
from nas_restore.build import build_model, load_weights, save_weights
from nas_restore.config import ConfigError
from nas_restore.data.synthetic import RAIN_PRESETS
from nas_restore.datasets import DataConfig, synthetic_split, train_val_datasets
from nas_restore.device import resolve_device
from nas_restore.errors import UserError
from nas_restore.evaluation import score_pair
from nas_restore.genotype import Genotype
from nas_restore.losses import LossConfig, RestorationLoss
from nas_restore.metrics import MAX_PSNR
from nas_restore.precision import PRECISIONS, Precision, resolve_precision
from nas_restore.profiling import count_parameters
from nas_restore.replay import POLICIES, ReplayBuffer
from nas_restore.report_common import fmt, markdown_table
from nas_restore.seeding import seed_everything
from nas_restore.study import changed_fields, machine_info, machine_line, read_json, refuse_changed_settings, write_json
from nas_restore.training import cosine_factor

log = logging.getLogger(__name__)

#: scheme -> (distillation, replay, joint)
SCHEMES: dict[str, tuple[bool, bool, bool]] = {
    "finetune": (False, False, False),
    "distill": (True, False, False),
    "replay": (False, True, False),
    "distill+replay": (True, True, False),
    "joint": (False, False, True),
}
DISTILL_LOSSES = ("l1", "mse")


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DistillConfig:
    """Distillation from the frozen previous-task model: weights of the output and feature terms."""

    output_weight: float = 1.0
    feature_weight: float = 0.0
    feature_modules: list[str] = field(default_factory=list)  # names from model.named_modules()
    loss: str = "l1"                                           # l1 or mse (per element, averaged)

    def __post_init__(self) -> None:
        if self.output_weight < 0 or self.feature_weight < 0:
            raise ValueError("distill output_weight and feature_weight must be >= 0")
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"distill loss must be one of {DISTILL_LOSSES}, got {self.loss!r}")
        if self.feature_weight > 0 and not self.feature_modules:
            raise ValueError("distill feature_weight > 0 needs feature_modules (module names of the network, "
                             "e.g. from `python -c 'print([n for n, _ in model.named_modules()])'`)")


@dataclass
class ReplayConfig:
    """The rain-review buffer: capacity (samples), what it keeps, and how many are replayed per batch."""

    size: int = 64
    policy: str = "quota"       # quota (equal share per old task) or reservoir (proportional to task size)
    per_batch: int = 4          # replayed samples appended to every batch of the current task

    def __post_init__(self) -> None:
        if self.size < 1 or self.per_batch < 1:
            raise ValueError(f"replay size and per_batch must be >= 1, got {self.size} and {self.per_batch}")
        if self.policy not in POLICIES:
            raise ValueError(f"replay policy must be one of {POLICIES}, got {self.policy!r}")


@dataclass
class ContinualConfig:
    """Everything a continual run depends on; a YAML file for `nas-restore continual --config` holds these.

    The defaults suit a 2-core CPU: 32 px training patches, 128 training items and 16 test items
    (64 px) per task. ``folders`` maps a task name to a folder of pairs or clips (its train/test split
    is a fixed ``test_fraction`` of the items); other task names must be synthetic rain presets.
    ``space_config`` overrides fields of the genotype's ``space_config`` (e.g. ``channels: 12``) to
    run a published architecture at CPU width.
    """

    tasks: list[str] = field(default_factory=lambda: ["light", "heavy", "slanted", "accumulation"])
    schemes: list[str] = field(default_factory=lambda: ["finetune", "distill+replay", "joint"])
    steps_per_task: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    loss: LossConfig = field(default_factory=lambda: LossConfig(ssim_padding="reflect"))
    distill: DistillConfig = field(default_factory=DistillConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    patch_size: int = 32
    train_items: int = 128
    test_items: int = 16
    test_size: int = 64
    clip_length: int = 7
    folders: dict[str, str] = field(default_factory=dict)
    folder_split: str | None = None
    test_fraction: float = 0.2
    space_config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_batch_size: int = 8
    checkpoint_every: int = 10          # steps between a stage's checkpoints (0: none; a killed stage restarts)
    device: str = "auto"
    precision: str = "fp32"             # fp32, bf16, fp16 or auto: what the networks compute in
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if isinstance(self.distill, dict):
            self.distill = DistillConfig(**self.distill)
        if isinstance(self.replay, dict):
            self.replay = ReplayConfig(**self.replay)
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one task, e.g. light,heavy")
        duplicates = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if duplicates:
            raise ValueError(f"tasks {duplicates} appear more than once: each task is trained once")
        for task in self.tasks:
            _check_task(task, self.folders)
        unknown = [s for s in self.schemes if s not in SCHEMES]
        if unknown or not self.schemes:
            raise ValueError(f"unknown scheme(s) {unknown}: use some of {', '.join(SCHEMES)}")
        for name in ("steps_per_task", "batch_size", "train_items", "test_items", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.checkpoint_every, int) or isinstance(self.checkpoint_every, bool) \
                or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an integer >= 0 (steps; 0: no checkpoint inside a stage), "
                             f"got {self.checkpoint_every!r}")
        if self.patch_size < 8 or self.test_size < 11:
            raise ValueError(f"patch_size must be >= 8 and test_size >= 11 (SSIM window), got {self.patch_size} "
                             f"and {self.test_size}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"lr and min_lr must satisfy 0 < min_lr <= lr, got {self.min_lr} and {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if getattr(self.loss, "temporal_weight", 0.0):
            raise ValueError("loss.temporal_weight is for retraining on shifted clip windows; continual runs "
                             "train on single windows: set it to 0")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        unused = sorted(set(self.folders) - set(self.tasks))
        if unused:
            raise ValueError(f"folders names task(s) {unused} that are not in tasks {self.tasks}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings every stage's result depends on (not the schemes, device, progress bars or how often a
        stage is checkpointed: a resumed stage ends as an uninterrupted one)."""
        data = cfg.to_dict(self)
        for key in ("schemes", "device", "progress", "eval_batch_size", "checkpoint_every"):
            data.pop(key)
        return data


def _check_task(task: str, folders: dict[str, str]) -> None:
    if task not in RAIN_PRESETS and task not in folders:
        raise ValueError(f"unknown task {task!r}: a synthetic rain type ({', '.join(RAIN_PRESETS)}) or a name "
                         f"given a folder in the config's folders: {{{task}: path/to/pairs}}")


def task_seed(task: str, seed: int) -> int:
    """A seed per task that does not depend on the task's position, so reordering keeps each task's data."""
    return 1000 * seed + zlib.crc32(task.encode()) % 1000


# --------------------------------------------------------------------------------------------------
# data


class _Cached(Dataset):
    """Keeps rendered synthetic items: they are pure functions of (seed, index), rendering is the slow part."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self._items: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        if index not in self._items:
            self._items[index] = self.data[index]
        return self._items[index]


@dataclass
class TaskData:
    name: str
    train: Dataset
    test: list[tuple[Tensor, Tensor]]     # materialised: scored after every stage
    source: str                           # what the data is, for the summary


def load_task(task: str, config: ContinualConfig, frames: int) -> TaskData:
    """Training set and held-out test set of one task (synthetic seeds of train and test are disjoint)."""
    seed = task_seed(task, config.seed)
    if task in config.folders:
        data = DataConfig(folder=config.folders[task], split=config.folder_split, patch_size=config.patch_size,
                          val_fraction=config.test_fraction)
        train, test = train_val_datasets(data, frames, seed)
        source = f"folder {config.folders[task]} (split {config.folder_split}), {len(train)} train / " \
                 f"{len(test)} test items, order seed {seed}"
    else:
        data = DataConfig(patch_size=config.patch_size, train_items=config.train_items,
                          val_items=config.test_items, rain_types=[task], clip_length=config.clip_length)
        train = _Cached(synthetic_split(data, frames, "train", seed))
        test = synthetic_split(data, frames, "test", seed, length=config.test_items, size=config.test_size)
        source = (f"synthetic {task}: {config.train_items} train items {config.patch_size} px (seed "
                  f"{train.data.seed}), {config.test_items} test items {config.test_size} px (seed {test.seed})")
    return TaskData(task, train, [test[i] for i in range(len(test))], source)


def _batch(data: Dataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    items = [data[i] for i in indices]
    return torch.stack([f for f, _ in items]), torch.stack([t for _, t in items])


# --------------------------------------------------------------------------------------------------
# distillation


class FeatureTap:
    """Forward hooks that keep the latest output of named modules (tensors; tuples/lists flattened)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            hints = [f"{n} (did you mean {', '.join(difflib.get_close_matches(n, list(modules), n=2))}?)"
                     for n in missing]
            raise ValueError(f"distill feature_modules not in the network: {'; '.join(hints)}; known: "
                             f"{', '.join(list(modules)[1:40])}{', ...' if len(modules) > 41 else ''}")
        self.names = list(names)
        self.outputs: dict[str, list[Tensor]] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = [t for t in (output if isinstance(output, (tuple, list)) else [output])
                                  if isinstance(t, Tensor)]
        return hook

    def features(self) -> list[Tensor]:
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise ValueError(f"distill feature_modules {missing} did not run in the forward pass: pick modules "
                             "the network uses")
        return [t for n in self.names for t in self.outputs[n]]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def distillation_loss(student: Tensor, teacher: Tensor, config: DistillConfig,
                      student_features: list[Tensor] | None = None,
                      teacher_features: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``output_weight * d(student, teacher) + feature_weight * mean_i d(fs_i, ft_i)``; teacher terms detached.

    ``d`` is the mean L1 or squared difference: zero, with zero gradient, when the student equals the teacher.
    """
    dist = F.l1_loss if config.loss == "l1" else F.mse_loss
    parts: dict[str, Tensor] = {}
    total = student.new_zeros(())
    if config.output_weight:
        parts["distill_output"] = dist(student.float(), teacher.detach().float())
        total = total + config.output_weight * parts["distill_output"]
    if config.feature_weight:
        fs, ft = student_features or [], teacher_features or []
        if len(fs) != len(ft) or not fs:
            raise ValueError(f"feature distillation needs as many student as teacher features, got {len(fs)} "
                             f"and {len(ft)}")
        parts["distill_features"] = torch.stack([dist(s.float(), t.detach().float()) for s, t in zip(fs, ft)]).mean()
        total = total + config.feature_weight * parts["distill_features"]
    return total, parts


class Distiller:
    """The frozen previous-task model and the hooks that compare it with the student on the same inputs."""

    def __init__(self, teacher: nn.Module, student: nn.Module, config: DistillConfig,
                 precision: Precision | None = None) -> None:
        self.teacher, self.config = teacher.eval(), config
        self.precision = precision or Precision("fp32", "cpu")
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        names = config.feature_modules if config.feature_weight else []
        self.student_tap = FeatureTap(student, names)
        self.teacher_tap = FeatureTap(self.teacher, names)

    def __call__(self, frames: Tensor, student_out: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Call right after the student's forward pass on ``frames`` (its hooks hold its features)."""
        student_features = self.student_tap.features() if self.config.feature_weight else None
        with torch.no_grad(), self.precision.autocast():
            teacher_out = self.teacher(frames)
        teacher_features = self.teacher_tap.features() if self.config.feature_weight else None
        return distillation_loss(student_out, teacher_out, self.config, student_features, teacher_features)

    def close(self) -> None:
        self.student_tap.remove()
        self.teacher_tap.remove()


# --------------------------------------------------------------------------------------------------
# metrics of the accuracy matrix


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def average_final(matrix: list[list[float]]) -> float:
    """Mean of the last row over the tasks seen (the average PSNR after the last task)."""
    last = len(matrix) - 1
    return _nanmean(matrix[last][: last + 1])


def forgetting(matrix: list[list[float]]) -> float:
    """Mean over j < K of ``max_{j<=k<K} R[k][j] - R[K][j]`` (NaN with a single task)."""
    K = len(matrix) - 1
    return _nanmean([max(matrix[k][j] for k in range(j, K)) - matrix[K][j] for j in range(K)])


def backward_transfer(matrix: list[list[float]]) -> float:
    """Mean over j < K of ``R[K][j] - R[j][j]``: negative is forgetting, positive helps old tasks."""
    K = len(matrix) - 1
    return _nanmean([matrix[K][j] - matrix[j][j] for j in range(K)])


def learning_average(matrix: list[list[float]]) -> float:
    """Mean of the diagonal: how well each task is learnt right after its own training."""
    return _nanmean([matrix[k][k] for k in range(len(matrix))])


# --------------------------------------------------------------------------------------------------
# training and evaluation of one stage


@torch.no_grad()
def evaluate_task(model: nn.Module, test: list[tuple[Tensor, Tensor]], device: torch.device,
                  batch_size: int = 8) -> tuple[float, float]:
    """Mean PSNR/SSIM of the model on a test set, scored as `nas-restore evaluate` scores an item
    (:func:`~nas_restore.evaluation.score_pair`: Y channel, 8-bit); each item's PSNR capped at
    :data:`~nas_restore.metrics.MAX_PSNR` so that the accuracy matrix stays finite."""
    model.eval()
    psnrs, ssims = [], []
    for start in range(0, len(test), batch_size):
        frames, target = _batch(test, list(range(start, min(start + batch_size, len(test)))))
        pred = model(frames.to(device)).clamp(0.0, 1.0).cpu()
        for p, t in zip(pred, target):
            item_psnr, item_ssim = score_pair(p, t)
            psnrs.append(min(item_psnr, MAX_PSNR))
            ssims.append(item_ssim)
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def input_scores(test: list[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """PSNR/SSIM of the rainy centre frame itself: the floor a derainer has to beat."""
    scores = [score_pair(f[f.shape[0] // 2], t) for f, t in test]
    return sum(p for p, _ in scores) / len(scores), sum(s for _, s in scores) / len(scores)


STAGE_CHECKPOINT = "stage.ckpt"
_CHECKPOINT_FORMAT = 1


@dataclass
class StageTraining:
    """What :func:`train_stage` did: the mean losses over the stage's steps, and its seconds and resume point."""

    losses: dict[str, float]
    seconds: float               # training seconds of the whole stage, every call's part together
    resumed_at: int | None = None  # the step this call continued from (None: the stage ran from its start)


def train_stage(model: nn.Module, train: Dataset, config: ContinualConfig, stage: int, device: torch.device,
                teacher: nn.Module | None = None, buffer: ReplayBuffer | None = None,
                checkpoint: Path | None = None) -> StageTraining:
    """``steps_per_task`` Adam steps on ``train`` (cosine to ``min_lr``), plus distillation and replay when given.

    The batches of the current task depend only on (seed, stage), so every scheme sees the same ones.
    With ``checkpoint`` (a file path), every ``checkpoint_every`` steps the stage's state goes there: the
    weights, the optimiser and schedule, the batch and replay generators, torch's global generator, the loss
    sums and the seconds so far. A stage started with that file present continues from it and ends with the
    weights and losses of an uninterrupted stage (bit for bit on the CPU: same steps in the same order; the
    teacher and the replay buffer are the stage's inputs, restored by the caller). The file stays until the
    caller has saved the finished stage (:func:`finish_stage_checkpoint`).
    """
    started = time.perf_counter()
    precision = resolve_precision(config.precision, device)
    precision.prepare(model.to(device).train())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(config.steps_per_task,
                                                                           config.min_lr / config.lr))
    criterion = RestorationLoss(config.loss)
    contrastive = bool(getattr(config.loss, "contrastive_weight", 0.0))  # the prior needs the rainy frame
    distiller = (Distiller(precision.prepare(teacher.to(device)), model, config.distill, precision)
                 if teacher is not None else None)
    batches = torch.Generator().manual_seed(config.seed * 7919 + stage)
    replays = torch.Generator().manual_seed(config.seed * 7919 + stage + 104729)
    sums: dict[str, float] = {}
    first, earlier_seconds = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = _read_stage_checkpoint(checkpoint, config, stage)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.set_state(state["batches"])
        replays.set_state(state["replays"])
        torch.set_rng_state(state["torch_rng"])
        sums = {str(k): float(v) for k, v in state["sums"].items()}
        first, earlier_seconds = int(state["step"]), float(state["seconds"])
        log.info("stage %d: continuing from step %d of %d (%s)", stage + 1, first, config.steps_per_task, checkpoint)
    try:
        for step in range(first, config.steps_per_task):
            n_items = len(train)  # type: ignore[arg-type]
            indices = torch.randint(n_items, (config.batch_size,), generator=batches).tolist()
            frames, target = _batch(train, indices)
            if buffer is not None and len(buffer):
                old_frames, old_target, _ = buffer.sample(config.replay.per_batch, replays)
                frames, target = torch.cat([frames, old_frames]), torch.cat([target, old_target])
            frames, target = frames.to(device), target.to(device)
            with precision.autocast():
                pred = model(frames)
            pred = pred.float()  # losses stay fp32
            if contrastive:
                loss, parts = criterion(pred, target, frames[:, frames.shape[1] // 2])
            else:
                loss, parts = criterion(pred, target)
            if distiller is not None:
                distill, distill_parts = distiller(frames, pred)
                loss = loss + distill
                parts.update(distill_parts)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} of task {stage}: lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            done = step + 1
            if (checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0
                    and done < config.steps_per_task):
                _write_stage_checkpoint(checkpoint, {
                    "format": _CHECKPOINT_FORMAT, "stage": stage, "steps_per_task": config.steps_per_task,
                    "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "batches": batches.get_state(),
                    "replays": replays.get_state(), "torch_rng": torch.get_rng_state(), "sums": dict(sums),
                    "seconds": earlier_seconds + time.perf_counter() - started})
    finally:
        if distiller is not None:
            distiller.close()
    return StageTraining({k: v / config.steps_per_task for k, v in sums.items()},
                         earlier_seconds + time.perf_counter() - started, first or None)


def _write_stage_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Through a temporary file and a rename: a kill while saving leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_stage_checkpoint(path: Path, config: ContinualConfig, stage: int) -> dict[str, Any]:
    """The checkpoint of this stage, read with ``weights_only=True``; a damaged or foreign file is a UserError."""
    fix = f"delete {path} to train this stage again from its start"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError) as err:  # truncated, not a torch file, or objects that weights_only refuses to build
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{path} cannot be read as a stage checkpoint ({type(err).__name__}: {reason}): {fix}") \
            from None
    keys = ("format", "stage", "steps_per_task", "step", "model", "optimizer", "scheduler", "batches", "replays",
            "torch_rng", "sums", "seconds")
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise UserError(f"{path} is not a stage checkpoint of nas-restore continual: {fix}")
    if state["format"] != _CHECKPOINT_FORMAT or state["stage"] != stage \
            or state["steps_per_task"] != config.steps_per_task or not 0 < int(state["step"]) < config.steps_per_task:
        raise UserError(f"{path} is the checkpoint of another stage or schedule (stage {state['stage'] + 1}, step "
                        f"{state['step']} of {state['steps_per_task']}; expected stage {stage + 1} of "
                        f"{config.steps_per_task} steps): {fix}")
    return state


def finish_stage_checkpoint(path: Path) -> None:
    """The stage is saved whole (model.pt, row.json): its checkpoint is no longer needed."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class ContinualResult:
    out_dir: Path
    matrices: dict[str, dict[str, list[list[float]]]]   # scheme -> {"psnr": R, "ssim": R}
    summary_path: Path
    stages_run: int        # trained (or, stage 1, reused from another scheme) in this call
    stages_skipped: int    # finished before this call
    stages_shared: int = 0  # of stages_run: stage 1 taken over from another scheme


def scheme_slug(scheme: str) -> str:
    return scheme.replace("+", "_")


def prepare_genotype(genotype: Genotype, overrides: dict[str, Any]) -> Genotype:
    """The genotype with ``space_config`` fields replaced (validated again by its space when built)."""
    if not overrides:
        return genotype
    unknown = sorted(set(overrides) - set(genotype.space_config))
    if unknown:
        raise ConfigError(f"space_config override(s) {unknown} are not fields of the {genotype.space} space's "
                          f"config: known {sorted(genotype.space_config)}")
    data = genotype.to_dict()
    data["space_config"] = {**data["space_config"], **overrides}
    return Genotype.from_dict(data)


def _check_run_folder(out_dir: Path, record: dict[str, Any]) -> None:
    path = out_dir / "run.json"
    previous = read_json(path)
    if previous is not None and previous != record:
        changed = changed_fields(previous.get("config", {}), record["config"])
        if previous.get("genotype_id") != record["genotype_id"]:
            changed.insert(0, "genotype")
        refuse_changed_settings(out_dir, "a continual run", changed or ["format"],
                                "its finished stages would not be resumed alike", "to resume; nothing was changed "
                                "there", recorded_in=path, error=ConfigError)
    write_json(path, record)


def _finished_first_stage(out_dir: Path, task: str) -> Path | None:
    """A finished stage 1 of any scheme of this run folder (same settings, checked by run.json).

    Before the first task ends there is no teacher and the buffer is empty, and the batches depend only
    on (seed, stage), so stage 1 is the same training in every scheme, joint included.
    """
    for scheme in SCHEMES:
        stage_dir = out_dir / scheme_slug(scheme) / f"01_{task}"
        if (stage_dir / "row.json").is_file() and (stage_dir / "model.pt").is_file():
            return stage_dir
    return None


def run_continual(genotype: Genotype, config: ContinualConfig, out_dir: str | Path,
                  command: str | None = None,
                  on_stage: Callable[[str, int, str, dict[str, Any], bool], None] | None = None) -> ContinualResult:
    """Train and score every scheme of ``config`` task after task; write the run folder and its summary.

    ``on_stage(scheme, k, task, row, skipped)`` is called after every stage (the CLI prints progress).
    """
    out_dir = Path(out_dir)
    genotype = prepare_genotype(genotype, config.space_config)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    build_model(genotype)  # validates before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_folder(out_dir, {"genotype_id": genotype.genotype_id(), "config": config.fingerprint()})
    genotype.save(out_dir / "genotype.json")
    cfg.save_yaml(config, out_dir / "config.yaml")
    frames = int(genotype.space_config.get("frames", 1))
    tasks = [load_task(t, config, frames) for t in config.tasks]
    matrices: dict[str, dict[str, list[list[float]]]] = {}
    run, skipped, shared_count = 0, 0, 0
    for scheme in config.schemes:
        use_distill, use_replay, joint = SCHEMES[scheme]
        scheme_dir = out_dir / scheme_slug(scheme)
        seed_everything(config.seed)
        model = build_model(genotype)           # the same initial weights for every scheme
        buffer = ReplayBuffer(config.replay.size, config.replay.policy, config.seed) if use_replay else None
        psnr_rows: list[list[float]] = []
        ssim_rows: list[list[float]] = []
        in_memory = 0                            # stage whose weights (and buffer) `model` holds; 0 = initial
        for k, task in enumerate(tasks):
            stage_dir = scheme_dir / f"{k + 1:02d}_{task.name}"
            row = read_json(stage_dir / "row.json")
            done = row is not None and (stage_dir / "model.pt").is_file()
            if done:
                skipped += 1
            else:
                if in_memory != k:               # resuming: pick up the previous stage's weights and buffer
                    previous = scheme_dir / f"{k:02d}_{tasks[k - 1].name}"
                    load_weights(model, previous / "model.pt")
                    if buffer is not None:
                        buffer.load_state_dict(torch.load(previous / "replay.pt", weights_only=True))
                shared = _finished_first_stage(out_dir, tasks[0].name) if k == 0 else None
                if shared is not None:           # stage 1 is the same training in every scheme: reuse it
                    load_weights(model, shared / "model.pt")
                    row = {**read_json(shared / "row.json"), "scheme": scheme, "shared_from": shared.parent.name}
                    shared_count += 1
                else:
                    # the teacher is the previous stage's model, taken before a checkpoint of this stage is loaded
                    teacher = copy.deepcopy(model) if use_distill and k > 0 else None
                    train = ConcatDataset([t.train for t in tasks[: k + 1]]) if joint else task.train
                    trained = train_stage(model, train, config, k, device, teacher=teacher, buffer=buffer,
                                          checkpoint=stage_dir / STAGE_CHECKPOINT)
                    scored = resolve_precision(config.precision, device).wrap(model)
                    scores = [evaluate_task(scored, t.test, device, config.eval_batch_size) for t in tasks[: k + 1]]
                    row = {"scheme": scheme, "stage": k + 1, "task": task.name,
                           "psnr": {t.name: s[0] for t, s in zip(tasks, scores)},
                           "ssim": {t.name: s[1] for t, s in zip(tasks, scores)},
                           "train": trained.losses, "train_seconds": trained.seconds,
                           "train_steps": config.steps_per_task, "resumed_at_step": trained.resumed_at}
                if buffer is not None:
                    buffer.add_task(task.name, task.train)
                row["replay_counts"] = buffer.task_counts() if buffer is not None else None
                stage_dir.mkdir(parents=True, exist_ok=True)
                model.cpu()
                save_weights(model, stage_dir / "model.pt", genotype=genotype.to_dict(), scheme=scheme,
                             stage=k + 1, task=task.name)
                if buffer is not None:
                    torch.save(buffer.state_dict(), stage_dir / "replay.pt")
                write_json(stage_dir / "row.json", row)  # last: its presence marks the stage finished
                finish_stage_checkpoint(stage_dir / STAGE_CHECKPOINT)
                run += 1
                in_memory = k + 1
            psnr_rows.append([row["psnr"].get(t.name, math.nan) for t in tasks])
            ssim_rows.append([row["ssim"].get(t.name, math.nan) for t in tasks])
            log.info("%s after %s: PSNR %s", scheme, task.name, psnr_rows[-1])
            if on_stage is not None:
                on_stage(scheme, k + 1, task.name, row, done)
        matrices[scheme] = {"psnr": psnr_rows, "ssim": ssim_rows}
        write_matrix_csv(scheme_dir / "matrix.csv", psnr_rows, [t.name for t in tasks])
        write_matrix_csv(scheme_dir / "matrix_ssim.csv", ssim_rows, [t.name for t in tasks])
    finite = [v for m in matrices.values() for row in m["psnr"] for v in row if not math.isnan(v)]
    for scheme, matrix in matrices.items():  # one colour scale for all schemes, so the maps compare
        plot_matrix(matrix["psnr"], [t.name for t in tasks], out_dir / scheme_slug(scheme) / "matrix.png",
                    f"{scheme}: PSNR (dB)", (min(finite), max(finite)))
    inputs = {t.name: input_scores(t.test) for t in tasks}
    summary = write_summary(out_dir, genotype, config, matrices, inputs, tasks, command, device)
    return ContinualResult(out_dir, matrices, summary, run, skipped, shared_count)


# --------------------------------------------------------------------------------------------------
# outputs


def write_matrix_csv(path: Path, matrix: list[list[float]], tasks: list[str]) -> Path:
    """Rows: after task k; columns: task j; blank above the diagonal (not trained yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["after_task", *tasks])
        for k, row in enumerate(matrix):
            writer.writerow([tasks[k], *("" if math.isnan(v) else f"{v:.4f}" for v in row)])
    return path


def read_matrix_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0][1:], [[float(v) if v else math.nan for v in row[1:]] for row in rows[1:]]


def plot_matrix(matrix: list[list[float]], tasks: list[str], path: Path, title: str,
                limits: tuple[float, float] | None = None) -> Path:
    """A heat map of R with the values written in the cells (blank above the diagonal); ``limits`` fixes
    the colour scale (vmin, vmax)."""
    import matplotlib  # optional and slow to import: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.ma.masked_invalid(np.array(matrix, dtype=float))
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2.0, 1.1 * len(tasks) + 1.5))
    vmin, vmax = limits if limits is not None else (None, None)
    image = ax.imshow(data, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), [f"after {t}" for t in tasks])
    ax.set_xlabel("evaluated on task")
    ax.set_title(title)
    finite = data.compressed()
    low, high = limits if limits is not None else ((finite.min(), finite.max()) if finite.size else (0.0, 0.0))
    middle = (low + high) / 2
    for k, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, k, f"{value:.2f}", ha="center", va="center",
                        color="black" if value > middle else "white", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scheme_metrics(matrix: dict[str, list[list[float]]]) -> dict[str, float]:
    psnr_matrix, ssim_matrix = matrix["psnr"], matrix["ssim"]
    return {"avg_psnr": average_final(psnr_matrix), "avg_ssim": average_final(ssim_matrix),
            "forgetting_db": forgetting(psnr_matrix), "bwt_db": backward_transfer(psnr_matrix),
            "learning_avg_psnr": learning_average(psnr_matrix), "forgetting_ssim": forgetting(ssim_matrix)}


def write_summary(out_dir: Path, genotype: Genotype, config: ContinualConfig,
                  matrices: dict[str, dict[str, list[list[float]]]], inputs: dict[str, tuple[float, float]],
                  tasks: list[TaskData], command: str | None, device: torch.device) -> Path:
    """``summary.md`` (tables, definitions, how to regenerate) and ``summary.json`` (the same figures)."""
    names = [t.name for t in tasks]
    metrics = {s: scheme_metrics(m) for s, m in matrices.items()}
    info = machine_info(str(device))
    params = count_parameters(build_model(genotype))
    lines = [
        "# Continual learning across rain types",
        "",
        f"Tasks in order: {' → '.join(names)}; {config.steps_per_task} steps per task, batch {config.batch_size} "
        f"(+{config.replay.per_batch} replayed with replay), Adam lr {config.lr:g} → {config.min_lr:g} (cosine, "
        f"restarted per task), seed {config.seed}. Network: {genotype.space} genotype {genotype.genotype_id()} "
        f"({params:,} parameters; space_config overrides {config.space_config or 'none'}).",
        "",
        "Regenerate: `" + (command or "nas-restore continual ...") + "`",
        "",
        f"Machine: {machine_line(info)}.",
        "",
        "## Schemes after the last task",
        "",
        markdown_table(
            ["scheme", "avg PSNR (dB)", "avg SSIM", "forgetting (dB)", "BWT (dB)", "diagonal avg PSNR (dB)"],
            [[s, fmt(m["avg_psnr"]), fmt(m["avg_ssim"], 4), fmt(m["forgetting_db"]), fmt(m["bwt_db"]),
              fmt(m["learning_avg_psnr"])] for s, m in metrics.items()]),
        "",
        "Rainy input (no restoration), per task: " + "; ".join(
            f"{n} {fmt(inputs[n][0])} dB / {fmt(inputs[n][1], 4)}" for n in names) + ".",
        "",
        "avg = mean over all tasks of the last row; forgetting = mean over j < K of (best R[k][j] for "
        "j ≤ k < K) − R[K][j]; BWT = mean over j < K of R[K][j] − R[j][j]; diagonal = mean of R[k][k]. "
        "PSNR/SSIM on Y (ITU-R BT.601), 8-bit quantised, as `nas-restore evaluate`. `joint` trains at stage k "
        "on the union of tasks 1..k (same steps and batch size), the upper reference.",
        "",
    ]
    for scheme, matrix in matrices.items():
        slug = scheme_slug(scheme)
        lines += [f"## {scheme}", "", f"PSNR (dB), row = after task, column = task "
                                      f"([matrix.csv]({slug}/matrix.csv), [SSIM]({slug}/matrix_ssim.csv)):", "",
                  markdown_table(["after \\ on", *names],
                                 [[names[k], *(fmt(v) for v in row)] for k, row in enumerate(matrix["psnr"])]),
                  "", f"![{scheme}]({slug}/matrix.png)", ""]
    lines += ["## Data", ""] + [f"- {t.source}" for t in tasks] + [
        "", "Synthetic train and test items of a task come from different seeds (nas_restore.datasets).", "",
        "## Config", "", "```yaml", yaml.safe_dump(cfg.to_dict(config), sort_keys=False).rstrip(), "```", ""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines))
    write_json(out_dir / "summary.json", {"tasks": names, "metrics": metrics, "matrices": matrices,
                                          "input": inputs, "genotype_id": genotype.genotype_id(),
                                          "command": command, "machine": info})
    return path
