"""A one-shot search on several processes (DDP): one architecture on every process, one run folder.

Three pieces, wired in by :mod:`nas_restore.search` when ``devices`` > 1: the Lightning strategy
(:func:`search_strategy`), the folder each process writes in (:func:`rank_folder`: only rank 0 writes the run
folder) and the callback that keeps the architecture weights identical on every process (:class:`AlphaSync`).

Under DDP each process trains the supernet on its own share of every batch, and DDP averages the gradients
of the *weights* during ``backward``. The architecture weights (the alphas, and TMICS's fusion lambda) are
not reliably among them: NNI's one-shot modules step them with architecture optimisers of their own, and
our second-order DARTS and triple-level steps compute their gradients with ``torch.autograd.grad``, which
never reaches DDP's reducer. Each process then moves its alphas by its own share's gradient, the alphas
drift apart, and each process derives a different architecture (NNI issues #5013 and #5110).

:class:`AlphaSync` is a Lightning callback around NNI's one-shot module that fixes this in our layer:

* at the start of the fit it broadcasts the architecture optimisers' parameters from rank 0 (the same
  start on every process, also after a resume);
* before every step of an architecture optimiser (a ``register_step_pre_hook``) it averages the gradients of
  that optimiser's parameters over the processes (one all-reduce of one flat buffer; a parameter without a
  gradient on some process counts as zero there, one without a gradient anywhere stays without), so every
  process takes the same step from the same values: the step of the whole batch, as in one process;
* after every such step (a post-hook) it gathers a SHA-256 digest of those parameters from every process and
  keeps them (:attr:`AlphaSync.history`); if they ever differ it warns and copies rank 0's values to all.

Outside a torch.distributed group (one process) it does nothing. Architecture optimisers are the ones NNI
marks with ``is_arch_optimizer`` (the DARTS family's alphas, GDAS's, TMICS's lambda optimiser).

Lightning's "ddp" starts the other processes by running the same command again (as torchrun or a second
machine would), so every process runs the whole search. The processes other than rank 0 write into a
private copy of the run folder instead (:func:`rank_folder`): they read what rank 0 reads (a resumed run's
checkpoint and records), compute the same, and leave the run folder to rank 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor

from nas_restore.outputs import LOCK, is_secondary_rank

log = logging.getLogger(__name__)


# one-shot strategies whose every step gives every supernet weight a gradient (all candidates are mixed);
# the others (GDAS with hard=True, spos) run only sampled candidates, and DDP must look for unused weights
_MIXING = {"darts": None, "darts2": None, "tmics": None, "pcdarts": None, "gdas": ("hard", False)}


def search_strategy(devices: int, strategy: str = "", options: dict[str, Any] | None = None) -> str:
    """Lightning's strategy for a one-shot search on ``devices`` processes ("auto" for one).

    "ddp" when the strategy mixes every candidate in every step; "ddp_find_unused_parameters_true" when it runs
    only sampled candidates (GDAS with ``hard``, spos) or is not known here: DDP then checks every step for
    weights without a gradient (slower, but a plain "ddp" would stop with an error on them).
    """
    if devices <= 1:
        return "auto"
    if strategy in _MIXING:
        condition = _MIXING[strategy]
        if condition is None or bool((options or {}).get(condition[0], condition[1])) == condition[1]:
            return "ddp"
    return "ddp_find_unused_parameters_true"


@contextmanager
def rank_folder(run_dir: Path) -> Iterator[Path]:
    """The folder this process writes a search's files in: ``run_dir`` itself on rank 0 (or alone); on another
    DDP process a private copy of it (what rank 0 reads at the start: a resumed run's checkpoint and records),
    removed when the search ends, so that every process computes alike and only rank 0 writes the run folder."""
    if not is_secondary_rank():
        yield run_dir
        return
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", ""))
    scratch = Path(tempfile.mkdtemp(prefix=f"nas-restore-rank{rank}-"))
    try:
        if run_dir.is_dir():
            shutil.copytree(run_dir, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK))
        log.debug("secondary DDP process: writing %s's files into %s", run_dir, scratch)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _world() -> tuple[int, int]:
    """(rank, world size) of the running torch.distributed group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def architecture_optimizers(trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
    """The optimisers NNI marks as architecture optimisers (``is_arch_optimizer``), in the trainer's order."""
    return [opt for opt in trainer.optimizers if getattr(opt, "is_arch_optimizer", False)]


def optimizer_parameters(optimizers: Iterable[torch.optim.Optimizer]) -> list[Tensor]:
    """Every parameter of ``optimizers``, each once, in their param groups' order (the same on every process)."""
    seen: set[int] = set()
    params = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
    return params


def digest(params: Iterable[Tensor]) -> str:
    """SHA-256 of the parameters' exact bytes (dtype and shape included): equal digests, bit-identical values."""
    hasher = hashlib.sha256()
    for param in params:
        value = param.detach().cpu().contiguous()
        hasher.update(f"{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def average_gradients(params: list[Tensor], world: int) -> None:
    """Replace each parameter's gradient by its mean over the ``world`` processes (a collective: every process
    calls it with the same parameters). A process without a gradient for a parameter contributes zero, so the
    mean is that of the whole batch's loss; a parameter no process has a gradient for keeps ``None``."""
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(present)
    active = [p for p, count in zip(params, present.tolist()) if count > 0]
    if not active:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                      for p in active])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in active:
        n = p.numel()
        mean = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)


def broadcast_parameters(params: list[Tensor], source: int = 0) -> None:
    """Copy rank ``source``'s values of ``params`` to every process (in place)."""
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=source)


@dataclass
class SyncStep:
    """One checked step: the architecture optimiser's step count on this process and every process's digest."""

    step: int
    digests: list[str]

    @property
    def identical(self) -> bool:
        return len(set(self.digests)) == 1


class AlphaSync(pl.Callback):
    """Keeps the architecture weights of a one-shot search identical on every DDP process (module docstring).

    ``sync=False`` only watches (the digests are still gathered and kept): what happens without the sync.
    ``check_every`` gathers the digests every that many architecture steps (0: never; the sync still runs).
    """

    def __init__(self, sync: bool = True, check_every: int = 1) -> None:
        self.sync = sync
        self.check_every = check_every
        self.history: list[SyncStep] = []
        self.repaired = 0
        self._handles: list[Any] = []
        self._steps = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank, world = _world()
        if world == 1:
            return
        optimizers = architecture_optimizers(trainer)
        if not optimizers:  # spos: the architecture is sampled, not learnt (the same seed draws it alike)
            log.info("alpha sync: no architecture optimiser (is_arch_optimizer): no architecture weights to sync")
            return
        if self.sync:
            broadcast_parameters(optimizer_parameters(optimizers))
        for optimizer in optimizers:
            params = optimizer_parameters([optimizer])
            if self.sync:
                self._handles.append(optimizer.register_step_pre_hook(
                    lambda opt, args, kwargs, params=params: average_gradients(params, world)))
            self._handles.append(optimizer.register_step_post_hook(
                lambda opt, args, kwargs, params=params: self._check(params)))
        log.info("alpha sync: %d architecture optimiser(s) on %d processes (rank %d)%s", len(optimizers), world,
                 rank, "" if self.sync else ": watching only, not synchronising")

    def _check(self, params: list[Tensor]) -> None:
        self._steps += 1
        if not self.check_every or self._steps % self.check_every:
            return
        _, world = _world()
        mine = torch.tensor(list(bytes.fromhex(digest(params))), dtype=torch.uint8, device=params[0].device)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        step = SyncStep(self._steps, [bytes(t.cpu().tolist()).hex() for t in gathered])
        self.history.append(step)
        if not step.identical and self.sync:
            self.repaired += 1
            log.warning("alpha sync: the architecture weights differ between processes after step %d (digests %s): "
                        "copying rank 0's to all", self._steps, ", ".join(d[:8] for d in step.digests))
            broadcast_parameters(params)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


__all__ = ["AlphaSync", "SyncStep", "architecture_optimizers", "average_gradients", "broadcast_parameters", "digest",
           "optimizer_parameters", "rank_folder", "search_strategy"]
