"""Resuming a one-shot search: its checkpoint, written at every epoch end and on SIGTERM/SIGINT.

A killed search (``kill -9``, a lost machine) re-run with the same command continues from the last
checkpoint in its run folder (:data:`~nas_restore.run_records.SEARCH_CHECKPOINT`) and, on CPU, ends with the
genotype and the alpha history of a run never killed. The checkpoint is Lightning's own file format, written
by ``trainer.save_checkpoint`` and read back by NNI's evaluator through ``fit(ckpt_path=...)``. NNI's one-shot
strategies run our Lightning module inside theirs, so Lightning restores:

* the one-shot module's state: the supernet's weights and every architecture weight (alphas; pcdarts's edge
  betas; the tmics space's fusion parameters) - they are parameters of the module;
* every optimiser (weights, alphas, tmics's fusion optimiser: NNI's ``configure_optimizers`` hands them all to
  Lightning) and learning-rate scheduler;
* the loops (epoch, global step, the batch inside an epoch) and the budget's ``Timer``.

What Lightning does not keep is this callback's state, stored in the same file: the random generators
(Python, numpy, torch, CUDA), the position in the data order, the run records already written (how many bytes
of ``alphas.csv`` and ``derived.jsonl``, the rows of ``metrics.csv``, from which ``anytime.csv`` is made), the
skip guard's early-stop state, whether training had ended, the seconds searched so far, the settings the run was
made with, and whatever a strategy adds (:class:`Resumable`: spos's evolution once it has run). The rest of a
strategy's state is a function of the restored epoch (gdas's temperature, darts's warm-up) or of the weights
(darts2's virtual step uses the weight optimiser's learning rate), so nothing else needs keeping.

Exactness. The data order of every epoch is a function of (seed, epoch) (:class:`EpochOrder`), and the random
generators are restored where the run stopped: at the start of the next epoch for an epoch-end checkpoint, at the
next batch for one taken inside an epoch (after a signal). A resumed run therefore draws what the uninterrupted
run drew. Two things of NNI's would break that, and are mended: its architecture optimiser lists the alphas
through a ``set`` (another order in every process, while Lightning restores optimiser states by position:
:func:`canonical_parameter_order`), and spos drew its paths from an unseeded generator (``strategies/single_path.py``
now draws from numpy's global one). Inside an epoch one thing cannot be replayed: a dataset that draws from the
global generators while loading (random crops of folder data) had already loaded the next batches when the
checkpoint was taken, so after a signal their crops differ; epoch-end checkpoints are exact for any data. The
training loss of an epoch cut by a signal averages only its batches after the resume (Lightning keeps no partial
epoch means).

Files are written atomically (a temporary file, fsync, rename, fsync of the folder): a kill while saving leaves the
previous checkpoint. Only the first process of a multi-process run writes. A checkpoint is read with
``torch.load(weights_only=True)`` only: no pickled code is ever run from a run folder.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nas_restore.config import ConfigError, refuse_changed_settings
from nas_restore.errors import UserError
from nas_restore.outputs import is_secondary_rank
from nas_restore.training import EpochShuffle, plain_data

log = logging.getLogger(__name__)

STATE_KEY = "nas_restore.search_checkpoint"  # this callback's entry in the checkpoint's "callbacks"
FORMAT = 1                                   # the layout of that entry; another one is refused
# settings that do not change what a search computes (the progress bar, loader processes) and those that are only
# the way of writing another one (the space's preset and settings: the resolved space is compared instead)
NOT_COMPARED = ("progress", "num_workers", "preset", "space_settings")
_LIGHTNING_KEYS = ("state_dict", "loops", "optimizer_states", "callbacks")


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped on SIGTERM or SIGINT after saving its checkpoint; the message says how to continue.

    A ``KeyboardInterrupt``: callers that stop on Ctrl-C (the CLI, the studies) stop on it too."""


class _StopRequested(Exception):
    """Raised inside Lightning's fit to leave it (Lightning turns a KeyboardInterrupt into ``sys.exit(1)``)."""


class Resumable(Protocol):
    """A part of a search with state to keep: the alpha history, the skip guard, a strategy (optional there).

    ``load_resume_state(None)`` means a fresh start (a part resets what it writes)."""

    def resume_state(self) -> dict[str, Any]: ...

    def load_resume_state(self, state: dict[str, Any] | None) -> None: ...


class EpochOrder(EpochShuffle):
    """:class:`~nas_restore.training.EpochShuffle` (each epoch's order a function of (seed, epoch)) that can start
    one epoch part-way, past the items that a checkpoint taken inside that epoch had already trained on.

    Give its :attr:`generator` to the DataLoader too (``generator=order.generator``): a DataLoader otherwise draws
    from torch's global generator each time it starts a pass (the seed of its worker processes), so the global
    draws of a run would depend on when passes start, which differs in a resumed run. This generator is reseeded
    from (seed, epoch) at every epoch instead.
    """

    def __init__(self, n: int, seed: int):
        super().__init__(n, seed)
        self.generator = torch.Generator()
        self._start: tuple[int, int] | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, 1]).generate_state(1)[0]))

    def start_at(self, epoch: int, items: int) -> None:
        """The next pass over ``epoch`` skips its first ``items`` items (once)."""
        self._start = (epoch, items) if items > 0 else None

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        if self._start is not None and self._start[0] == self.epoch:
            order, self._start = order[self._start[1]:], None
        return iter(order)


# --------------------------------------------------------------------------------------------------
# the random generators


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global generators (CUDA's when initialised), as plain data and tensors."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "words": list(words), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["words"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("the checkpoint holds the generators of %d GPU(s), this machine has %d: CUDA draws after "
                        "the resume differ from the interrupted run's", len(cuda), torch.cuda.device_count())


# --------------------------------------------------------------------------------------------------
# reading a checkpoint


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):  # an empty one adds no name: {} -> {"k": 1} reads "name.k ('unset' -> 1)"
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_settings(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings (dotted, e.g. ``data.patch_size``) whose values differ, as ``name: old -> new``.

    Only settings that both have are compared: one that only the current version has is new in the code (its
    default keeps the old behaviour), one that only the checkpoint has was dropped from it."""
    previous = {k: v for k, v in plain_data(previous).items() if k not in NOT_COMPARED}
    current = {k: v for k, v in plain_data(current).items() if k not in NOT_COMPARED}
    both = set(previous) & set(current)
    if set(previous) ^ set(current):
        log.debug("settings only one side knows (not compared): %s", sorted(set(previous) ^ set(current)))
    old = _flatten({k: previous[k] for k in both})
    new = _flatten({k: current[k] for k in both})
    missing = "unset"
    return [f"{name}: {old.get(name, missing)!r} -> {new.get(name, missing)!r}" for name in sorted(set(old) | set(new))
            if old.get(name, missing) != new.get(name, missing)]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A search checkpoint read with ``weights_only=True``; a :class:`UserError` naming the file and the fix
    when it is damaged, not a checkpoint or of another format."""
    fix = f"pass --fresh to start this search over, or delete {path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  truncated, not a torch file (garbage reaches the unpickler as KeyError,
        # IndexError, ...), or objects that weights_only refuses to build: whatever it is, the file is unusable
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        raise UserError(f"{path} cannot be read as a search checkpoint ({type(err).__name__}: {reason}): "
                        f"{fix}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a search checkpoint: {fix}")
    missing = [key for key in _LIGHTNING_KEYS if not isinstance(checkpoint.get(key), (dict, list))]
    ours = checkpoint.get("callbacks", {}).get(STATE_KEY) if isinstance(checkpoint.get("callbacks"), dict) else None
    if missing or not isinstance(ours, dict):
        raise UserError(f"{path} is not a checkpoint of a one-shot search (it lacks "
                        f"{', '.join(missing) or 'the search state'}): {fix}")
    if ours.get("format") != FORMAT:
        raise UserError(f"{path} is a search checkpoint of format {ours.get('format')!r}; this version reads format "
                        f"{FORMAT}: {fix}")
    return checkpoint


def truncate_record(path: Path, size: int) -> None:
    """Cut a run record (``alphas.csv``, ...) back to the ``size`` bytes that a checkpoint counted: the rows
    written after it go, and the resumed run writes them again. Shorter or missing: the folder changed since."""
    have = path.stat().st_size if path.is_file() else None
    if have is None or have < size:
        state = "is missing" if have is None else f"has {have} bytes"
        raise UserError(f"{path} {state}, but the search checkpoint beside it counted {size}: the run folder changed "
                        "since the checkpoint. Pass --fresh to start this search over")
    if have > size:
        with path.open("r+b") as handle:
            handle.truncate(size)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, path: Path) -> None:
    """Make a written ``tmp`` the file ``path`` in one step, durably (data first, then the folder entry)."""
    _fsync(tmp)
    os.replace(tmp, path)
    try:
        _fsync(path.parent)
    except OSError:  # a file system whose folders cannot be opened for fsync: the rename itself is still atomic
        log.debug("could not fsync %s", path.parent)


# --------------------------------------------------------------------------------------------------
# the callback


class SearchCheckpoint(pl.callbacks.Checkpoint):
    """Saves the one-shot search's checkpoint (at every epoch end, and at the batch where a SIGTERM or SIGINT
    arrived) and restores what Lightning does not.

    Made before the search starts: it reads an existing checkpoint (unless ``fresh``), refuses one made with
    other ``settings``, and hands each of ``parts`` its saved state (or None for a fresh start). Then: add it
    to the trainer's callbacks, pass :meth:`fit_kwargs` to ``fit``, run the search inside :meth:`interruptible`,
    and call :meth:`finish` after it (to keep what the strategy computed after training).
    """

    def __init__(self, path: Path, settings: Mapping[str, Any], parts: Mapping[str, Any], *, fresh: bool = False,
                 started: float | None = None, orders: list[EpochOrder] = ()):
        super().__init__()
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.settings = plain_data(settings)
        self.parts = {name: part for name, part in parts.items() if hasattr(part, "resume_state")}
        self.started = time.perf_counter() if started is None else started
        self._signal: int | None = None
        self._in_training = False
        self._pending_rng: tuple[str, dict[str, Any]] | None = None
        self._saved_parts: dict[str, Any] | None = None
        self._state: dict[str, Any] | None = None  # what the last save wrote
        self._param_names: list[list[str]] = []     # each optimiser's parameters, in the order of their states
        first = not is_secondary_rank()
        if first:
            self.tmp.unlink(missing_ok=True)  # a kill while saving leaves it behind; the checkpoint itself is whole
        if fresh and first and self.path.exists():
            log.info("--fresh: removing %s, the search starts over", self.path)
            self.path.unlink()
        self.resumed: dict[str, Any] | None = None  # this callback's saved state, when resuming
        self.timer_seconds = 0.0                    # training seconds that Lightning's Timer restores (budgets)
        if not fresh and self.path.exists():  # (other DDP processes read their copy of the folder: fresh too)
            checkpoint = read_checkpoint(self.path)
            self.resumed = checkpoint["callbacks"][STATE_KEY]
            refuse_changed_settings(self.path.parent, "a one-shot search's checkpoint",
                                    changed_settings(self.resumed.get("settings", {}), self.settings),
                                    "its supernet was trained with those", f"{' and '.join(NOT_COMPARED[:2])} may "
                                    "change; or pass --fresh to start this search over", recorded_in=self.path,
                                    error=ConfigError)
            self._model_shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()
                                  if isinstance(v, torch.Tensor)}
            timer = checkpoint["callbacks"].get("Timer")
            if isinstance(timer, dict) and isinstance(timer.get("time_elapsed"), dict):
                self.timer_seconds = float(timer["time_elapsed"].get("train", 0.0))
            self._saved_parts = self.resumed.get("parts", {})
            del checkpoint
            log.info("resuming the search from %s: %s, %.0f s searched so far", self.path, self.where(self.resumed),
                     self.seconds_before)
            position = self.resumed["position"]
            for order in orders:  # the epoch the run continues in, before Lightning starts the loaders' first pass
                order.set_epoch(int(position["epoch"]) + int(bool(position["epoch_end"])))
        for name, part in self.parts.items():
            part.load_resume_state(None if self.resumed is None else self.resumed.get("parts", {}).get(name))

    # ---- what the search reads off it

    @property
    def seconds_before(self) -> float:
        """Seconds this search ran before this call (0 for a fresh start)."""
        return float(self.resumed.get("seconds", 0.0)) if self.resumed else 0.0

    @property
    def state_key(self) -> str:
        return STATE_KEY

    @property
    def last_model_path(self) -> str:
        """Where the checkpoint is (NNI's one-shot strategy records it in its own experiment state)."""
        return str(self.path)

    def fit_kwargs(self, trainer: Any) -> dict[str, Any]:
        """What ``trainer.fit`` needs to continue from the checkpoint: its path, read with ``weights_only=True``
        where this Lightning takes the argument (2.6 does; older ones use torch's default, weights only since
        torch 2.6, after :func:`read_checkpoint` has read the file safely)."""
        if self.resumed is None:
            return {}
        kwargs: dict[str, Any] = {"ckpt_path": str(self.path)}
        if "weights_only" in inspect.signature(trainer.fit).parameters:
            kwargs["weights_only"] = True
        return kwargs

    @staticmethod
    def where(state: Mapping[str, Any]) -> str:
        """Where a checkpoint stands, in words."""
        position = state.get("position", {})
        epoch, batches = int(position.get("epoch", 0)), int(position.get("batches", 0))
        if state.get("training_done"):
            return f"training finished after epoch {epoch}"
        if position.get("epoch_end"):
            return f"after epoch {epoch}"
        return f"inside epoch {epoch}, after {batches} batch(es)"

    # ---- saving

    def state_dict(self) -> dict[str, Any]:
        """This callback's part of the checkpoint (Lightning calls it while writing the file)."""
        return dict(self._state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning hands back the saved state while restoring: it was read (and checked) at construction."""

    def _save(self, trainer: pl.Trainer, *, epoch_end: bool, batches: int, training_done: bool = False) -> None:
        started = time.perf_counter()
        self._state = {
            "format": FORMAT,
            "settings": self.settings,
            "position": {"epoch": int(trainer.current_epoch), "batches": int(batches), "epoch_end": epoch_end},
            "training_done": bool(training_done),
            "seconds": round(time.perf_counter() - self.started, 3),
            "rng": rng_state(),
            "optimizer_parameters": self._param_names,
            "parts": {name: plain_data(part.resume_state()) for name, part in self.parts.items()},
        }
        trainer.save_checkpoint(self.tmp)  # every process takes part; only the first writes the file
        if trainer.is_global_zero:
            _replace(self.tmp, self.path)
            log.info("checkpoint %s: %s (%.1f MB in %.2f s)", self.path.name, self.where(self._state),
                     self.path.stat().st_size / 2**20, time.perf_counter() - started)
        self._saved_parts = self._state["parts"]

    def finish(self) -> None:
        """After the search: keep in the checkpoint what the parts computed after training (spos's evolution), so
        that a re-run of the same command reuses it. A no-op when nothing changed."""
        if self._saved_parts is None or not self.path.exists() or is_secondary_rank():
            return
        parts = {name: plain_data(part.resume_state()) for name, part in self.parts.items()}
        if parts == self._saved_parts:
            return
        checkpoint = read_checkpoint(self.path)
        checkpoint["callbacks"][STATE_KEY]["parts"] = parts
        torch.save(checkpoint, self.tmp)
        _replace(self.tmp, self.path)
        self._saved_parts = parts
        log.info("checkpoint %s: the strategy's final state added", self.path.name)

    # ---- restoring (Lightning hooks, in the order they run)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a checkpoint of another supernet before Lightning meets it (a traceback deep in Lightning)."""
        if self.resumed is None:
            return
        expected = {k: tuple(v.shape) for k, v in pl_module.state_dict().items()}
        found = self._model_shapes
        unknown, absent = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        shapes = [k for k in expected if k in found and found[k] != expected[k]]
        if unknown or absent or shapes:
            detail = "; ".join(part for part in (
                f"unexpected {', '.join(unknown[:3])}" if unknown else "",
                f"missing {', '.join(absent[:3])}" if absent else "",
                f"other shapes for {', '.join(shapes[:3])}" if shapes else "") if part)
            raise UserError(f"{self.path} holds another supernet than this search builds ({detail}): pass --fresh "
                            f"to start this search over, or delete {self.path}")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put every optimiser's parameters in the module's order, before Lightning loads their states.

        Lightning keeps an optimiser's state by the position of each parameter, and NNI lists the architecture
        weights through a ``set`` (an order that differs in every process): without this, a resumed run would
        give one alpha the Adam moments of another (or fail on their shapes)."""
        self._param_names = canonical_parameter_order(trainer.optimizers, pl_module)
        if self.resumed is not None and self.resumed.get("optimizer_parameters") != self._param_names:
            raise UserError(f"{self.path} holds optimiser states for other parameters than this search trains: "
                            f"pass --fresh to start this search over, or delete {self.path}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = True
        if self._signal is not None:
            raise _StopRequested()
        if self.resumed is None:
            return
        position = self.resumed["position"]
        if self.resumed.get("training_done"):
            trainer.should_stop = True  # training had ended (last epoch, budget, skip guard): derive only
            return
        if position["epoch_end"]:
            self._pending_rng = ("epoch", self.resumed["rng"])
            return
        self._pending_rng = ("batch", self.resumed["rng"])
        done = int(position["batches"])
        for loader in _loaders(trainer.train_dataloader):  # each loader of the training step, cycled as Lightning does
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochOrder) and len(loader):
                sampler.start_at(int(position["epoch"]), (done % len(loader)) * int(loader.batch_size or 1))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_rng is not None and self._pending_rng[0] == "epoch":
            set_rng_state(self._pending_rng[1])
            self._pending_rng = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None and self._pending_rng[0] == "batch":
            # Lightning restarts an epoch part-way without its on_train_epoch_start: the module's (gdas's
            # temperature, darts's warm-up switch) runs here, before the generators are put back
            pl_module.on_train_epoch_start()
            set_rng_state(self._pending_rng[1])
            self._pending_rng = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # a signal inside an epoch: save here; at its last batch, the epoch end (next) saves instead
        if self._signal is not None and not trainer.is_last_batch:
            self._save(trainer, epoch_end=False, batches=batch_idx + 1)
            raise _StopRequested()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last callback of the epoch (Lightning runs checkpoint callbacks after the others and the module):
        # the history has its rows, the skip guard has decided
        epochs = trainer.max_epochs
        last = epochs is not None and epochs > 0 and trainer.current_epoch + 1 >= epochs
        done = bool(trainer.should_stop or last)  # training ends here (last epoch, budget, skip guard)
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed  # fewer when a budget cut the epoch
        self._save(trainer, epoch_end=True, batches=int(batches), training_done=done)
        if self._signal is not None:
            raise _StopRequested()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_training = False
        if self._signal is not None:
            raise _StopRequested()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._in_training = False

    # ---- signals

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Run the search with SIGTERM and SIGINT turned into "save the checkpoint, then stop".

        Inside the training loop the search stops after the current batch (or the epoch's end) and writes its
        checkpoint there; outside it (building the supernet, spos's evolution) it stops at once and the last
        checkpoint stands. A second signal stops at once. Either way :class:`SearchInterrupted` is raised.
        """
        previous: dict[int, Any] = {}
        quiet = _QuietAfterSignal(self)  # NNI logs our stop as a failed model and strategy
        for name in _NNI_FAILURE_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        else:
            log.debug("not the main thread: SIGTERM/SIGINT keep their handlers (no checkpoint on a signal)")
        try:
            yield
        except (_StopRequested, SIGTERMException):
            name = signal.Signals(self._signal).name if self._signal is not None else "a signal"
            last = self._state or self.resumed
            if last:
                message = (f"the search stopped on {name}; its state {self.where(last)} is in {self.path}: re-run the "
                           "same command to continue it (add --fresh to start it over)")
            else:
                message = f"the search stopped on {name} before its first checkpoint: re-run the command to start it"
            log.warning(message)
            raise SearchInterrupted(message) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for name in _NNI_FAILURE_LOGGERS:
                logging.getLogger(name).removeFilter(quiet)

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = self._signal is None
        self._signal = signum if first else self._signal
        if first and self._in_training:
            log.warning("received %s: the search saves its checkpoint after this batch, then stops",
                        signal.Signals(signum).name)
            return
        raise _StopRequested()  # outside the training loop, or a second signal: stop now


_NNI_FAILURE_LOGGERS = ("nni.nas.execution.sequential", "nni.nas.strategy.base")


class _QuietAfterSignal(logging.Filter):
    """Drops NNI's "Model 1 fails to be executed" / "Strategy failed" once a signal stops the search on purpose."""

    def __init__(self, checkpoint: SearchCheckpoint):
        super().__init__()
        self.checkpoint = checkpoint

    def filter(self, record: logging.LogRecord) -> bool:
        return self.checkpoint._signal is None or record.levelno < logging.ERROR


def canonical_parameter_order(optimizers: list[Any], module: torch.nn.Module) -> list[list[str]]:
    """Sort each parameter group of ``optimizers`` in ``module``'s parameter order (stable; before any step, so
    nothing else changes); return each optimiser's parameter names, in that order."""
    order = {id(p): (i, name) for i, (name, p) in enumerate(module.named_parameters())}
    names = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"].sort(key=lambda p: order.get(id(p), (len(order), ""))[0])
        names.append([order.get(id(p), (0, "?"))[1] for group in optimizer.param_groups for p in group["params"]])
    return names


def _loaders(loaders: Any) -> list[Any]:
    """The data loaders in what ``trainer.train_dataloader`` holds (one, or NNI's dict of train and val)."""
    if isinstance(loaders, Mapping):
        return [x for v in loaders.values() for x in _loaders(v)]
    if isinstance(loaders, (list, tuple)):
        return [x for v in loaders for x in _loaders(v)]
    return [] if loaders is None else [loaders]


__all__ = ["SearchCheckpoint", "SearchInterrupted", "EpochOrder", "Resumable", "read_checkpoint", "truncate_record",
           "changed_settings", "rng_state", "set_rng_state", "NOT_COMPARED"]
