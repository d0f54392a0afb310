"""The runners that hand NNI a search: one-shot in-process, multi-trial on NNI's engines.

One-shot strategies train a supernet inside NNI's Lightning evaluator with our restoration training
steps (:func:`make_search_module`); multi-trial strategies run a function per trial, sequentially or as
parallel processes on NNI's training-service engine (:func:`run_multitrial_experiment`), behind a
middleware that answers already-finished trials from the run's ledger (:class:`LedgerReplay`), with
NNI's processes recorded in a pid file so that the next start stops what a killed run left
(:class:`ProcessRecord`, :func:`stop_recorded`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from nas_restore.nni_layer.setup import nni  # first: NNI's warning filters and log routing

from nas_restore.losses import LossConfig, RestorationLoss  # noqa: E402
from nas_restore.nni_layer.space import ChoiceSpace, ModelSpace  # noqa: E402
from nas_restore.threads import process_alive, process_started  # noqa: E402
from nas_restore.training import OptimConfig, RestorationSteps  # noqa: E402
from nni.nas.evaluator import FunctionalEvaluator  # noqa: E402
from nni.nas.evaluator.pytorch import Lightning, Trainer  # noqa: E402
from nni.nas.evaluator.pytorch import LightningModule as NNILightningModule  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.execution.event import FinalMetricEvent, ModelEventType, TrainingEndEvent  # noqa: E402
from nni.nas.experiment.config import NasExperimentConfig, SequentialEngineConfig  # noqa: E402
from nni.nas.space import ModelStatus  # noqa: E402
from nni.nas.strategy.middleware import Chain, StrategyMiddleware  # noqa: E402

log = logging.getLogger(__name__)


def run_oneshot(space: ModelSpace, evaluator: Lightning, strategy: Any, work_dir: Path) -> dict[str, Any]:
    """Run a one-shot (weight-sharing) strategy in-process and return NNI's architecture dict.

    One-shot strategies always run on NNI's sequential engine: no NNI manager, no web portal.
    NNI mutates ``space`` in place; build the final network from the genotype, not from ``space``.
    """
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(work_dir)
    experiment.config.log_level = "error"
    _forget_earlier_experiments(Path(work_dir), keep=experiment.id)  # a killed earlier call skipped its finally
    try:
        experiment.run()
        top = experiment.export_top_models(formatter="dict")
    finally:
        try:
            experiment.stop()
        except Exception:  # stopping an experiment that never started a manager is harmless
            logging.getLogger(__name__).debug("experiment.stop() failed", exc_info=True)
        try:  # NNI adds every experiment to ~/nni-experiments/.experiment: ours leave no entry behind
            forget_experiment(experiment.id)
        except Exception:  # noqa: BLE001  (a manifest NNI cannot read is not this search's failure)
            logging.getLogger(__name__).debug("could not remove %s from NNI's manifest", experiment.id, exc_info=True)
    if not top:
        raise RuntimeError("NNI returned no architecture: the search did not finish (see the run log)")
    # NNI's keys and values can be its own str/int subclasses (labels): make them plain JSON types
    return json.loads(json.dumps(dict(top[0])))


def _forget_earlier_experiments(work_dir: Path, keep: str) -> None:
    """Remove from NNI's manifest the experiments of earlier calls in this run's NNI folder: one killed with
    ``kill -9`` never reached the ``finally`` that removes its entry (NNI names each experiment's folder by id)."""
    if not work_dir.is_dir():
        return
    for folder in work_dir.iterdir():
        if folder.is_dir() and folder.name not in (keep, "_latest"):
            try:
                forget_experiment(folder.name)
            except Exception:  # noqa: BLE001  (a manifest NNI cannot read is not this search's failure)
                logging.getLogger(__name__).debug("could not remove %s from NNI's manifest", folder.name, exc_info=True)


def make_lightning_evaluator(module: NNILightningModule, trainer_kwargs: dict[str, Any],
                             train_loader: Any, val_loader: Any) -> Lightning:
    """NNI's Lightning evaluator around our restoration module, with NNI's traced Trainer."""
    return Lightning(module, Trainer(**trainer_kwargs), train_dataloaders=train_loader, val_dataloaders=val_loader)


def make_search_module(loss: Any, lr: float, weight_decay: float, epochs: int) -> NNILightningModule:
    """Our restoration training steps inside NNI's LightningModule (NNI sets ``self.model``)."""
    return search_module_class()(loss=loss, lr=lr, weight_decay=weight_decay, epochs=epochs)


@functools.cache
def search_module_class() -> type:
    """NNI's traced LightningModule with our steps, built on first use (not at import)."""
    @nni.trace
    class _SearchModule(RestorationSteps, NNILightningModule):
        """L1 + SSIM on the train split, PSNR/SSIM on the validation split (NNI maximises val_psnr)."""

        def __init__(self, loss: LossConfig | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                     epochs: int = 1):
            super().__init__()
            self.criterion = RestorationLoss(loss or LossConfig())
            self.optim_config = OptimConfig(lr=lr, weight_decay=weight_decay, min_lr=lr * 0.01,
                                            cosine_epochs=epochs)

    return _SearchModule


def report_final_metric(value: float) -> None:
    """Tell NNI a trial's score (NNI always maximises it: give PSNR, never a loss)."""
    nni.report_final_result(float(value))


def nni_trial_id() -> str:
    """NNI's id of the running trial ('' in the sequential engine, where NNI sets none)."""
    trial = nni.get_trial_id()
    return "" if trial in (None, "_unset_", "STANDALONE") else str(trial)


# --------------------------------------------------------------------------------------------------
# multi-trial: NNI's engines, the replay of finished trials, NNI's processes

# NNI 3.0's web portal listens on every interface and has no bind option (NNI_NOTES 'Web-portal bind
# address'): this preload, given to its node server through NODE_OPTIONS, adds host 127.0.0.1.
BIND_LOCALHOST_JS = """\
// nas-restore: make NNI's node server listen on 127.0.0.1 only.
const net = require('net');
const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length && typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0])) {
    if (args[0].path === undefined && args[0].host === undefined) args[0] = { ...args[0], host: '127.0.0.1' };
  } else if (args.length && (typeof args[0] === 'number' || /^[0-9]+$/.test(String(args[0])))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  }
  return originalListen.apply(this, args);
};
"""


@dataclass
class FinishedTrial:
    """A trial that ended in an earlier run of the same search, as its strategy saw it (from the ledger).

    ``index`` is its place among the strategy's submissions and ``after`` how many trial ends the
    strategy had seen when it submitted it; ``position`` orders the ends as the strategy saw them.
    A trial known only from the row it wrote (the search died before recording its end) has no
    ``index`` and is matched by ``key`` alone. ``token`` is the caller's handle, given back on replay.
    """

    key: str                     # the architecture, canonical JSON (see LedgerReplay's key_of)
    status: str                  # NNI's ModelStatus value: "trained" or "failed"
    metric: float | None
    index: int | None = None
    after: int | None = None
    position: int = 0
    token: Any = None


class LedgerReplay(StrategyMiddleware):
    """Answers a strategy's submissions of trials that already finished, without training them.

    Sits between the strategy and NNI's engine (NNI's ``Chain``). While the strategy repeats its past
    (the same submission in the same place, which a seeded strategy does when it has seen the same
    trial ends), each submission is answered from the ledger, and the recorded ends are handed back
    in their recorded order and at the recorded moments: before the strategy picks submission ``i``
    it has seen exactly the ``after`` ends it had seen then. Evolution's population and TPE's history
    are so rebuilt by the strategy's own code, and with the sequential engine the continued search
    is the one an uninterrupted run makes. From the first submission that differs, the search runs
    live: new trials go to the engine (and ``on_end`` records their ends), and a submission of an
    architecture that finished earlier is still answered from the ledger at once.
    """

    def __init__(self, finished: Sequence[FinishedTrial], *, max_trials: int, key_of: Callable[[Any], str],
                 on_end: Callable[[int, int, Any, str, float | None], None],
                 on_replay: Callable[[FinishedTrial, int, int, Any], None],
                 on_poll: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.max_trials = max_trials
        self._key_of, self._on_end, self._on_replay, self._on_poll = key_of, on_end, on_replay, on_poll
        self._finished = sorted(finished, key=lambda t: t.position)
        self._by_index = {t.index: t for t in self._finished if t.index is not None}
        self._used: set[int] = set()                 # id() of the finished trials answered already
        self._ordered = bool(self._by_index)         # still repeating the recorded submissions
        self._submitted = 0                          # submissions so far, answered or live
        self._ended = 0                              # trial ends the strategy has seen
        self._held: list[tuple[FinishedTrial, Any]] = []          # answered, end not yet handed back
        self._live: dict[int, tuple[int, int, Any]] = {}          # id(model) -> (index, after, model)
        self._replayed: list[Any] = []
        self._lock = threading.RLock()
        self.replayed = 0

    def extra_repr(self) -> str:
        return f"finished={len(self._finished)}, max_trials={self.max_trials}"

    # the engine side
    def _initialize_engine(self, engine: Any) -> None:
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._engine_training_end)

    def _cleanup(self) -> None:
        self._release_all()
        try:
            self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._engine_training_end)
        except ValueError:  # already gone
            pass

    def register_model_event_callback(self, event_type: Any, callback: Callable[..., None]) -> None:
        super().register_model_event_callback(event_type, callback)   # the answered trials' events
        self.engine.register_model_event_callback(event_type, callback)  # the live trials' events

    def unregister_model_event_callback(self, event_type: Any, callback: Callable[..., None]) -> None:
        super().unregister_model_event_callback(event_type, callback)
        self.engine.unregister_model_event_callback(event_type, callback)

    def _engine_training_end(self, event: Any) -> None:
        with self._lock:  # registered before the strategy's callbacks: counted before it sees the end
            self._ended += 1
            place = self._live.pop(id(event.model), None)
        if place is not None:
            metric = event.model.metric
            self._on_end(place[0], place[1], event.model.sample, getattr(event.status, "value", str(event.status)),
                         None if metric is None else float(metric))
        self._poll()

    # the strategy side
    def idle_worker_available(self) -> bool:
        self._poll()
        with self._lock:
            if self._ordered:
                upcoming = self._by_index.get(self._submitted)
                if upcoming is not None and id(upcoming) not in self._used:
                    self._release(upcoming.after)  # what the strategy had seen before this submission
                    return True                    # a worker was free for it then
                self._go_live()
        return self.engine.idle_worker_available()

    def budget_available(self) -> bool:
        with self._lock:
            if self._submitted >= self.max_trials:
                self._release(None)  # the strategy stops: let it see every end first
                return False
            if self._ordered and self._submitted in self._by_index:
                return True          # the recorded run had the budget for it
        available = self.engine.budget_available()
        if not available:
            self._release_all()
        return available

    def submit_models(self, *models: Any) -> None:
        for model in models:
            with self._lock:
                index, after = self._submitted, self._ended
                self._submitted += 1
                key = self._key_of(model.sample)
                found = None
                if self._ordered:
                    upcoming = self._by_index.get(index)
                    if upcoming is not None and upcoming.key == key and id(upcoming) not in self._used:
                        found = upcoming
                    else:
                        log.info("multi-trial resume: submission %d differs from the recorded one; the search "
                                 "runs live from here", index)
                        self._go_live()
                if found is None and not self._ordered:
                    found = next((t for t in self._finished if id(t) not in self._used and t.key == key), None)
                if found is not None:
                    self._used.add(id(found))
                    self._replayed.append(model)
                    self.replayed += 1
                    model.status = ModelStatus.Training
                    self._on_replay(found, index, after, model.sample)
                    if self._ordered:
                        self._held.append((found, model))
                        self._held.sort(key=lambda held: held[0].position)
                    else:
                        self._dispatch(found, model)
                    continue
                self._live[id(model)] = (index, after, model)
            self.engine.submit_models(model)

    def wait_live(self, poll_s: float = 0.5) -> None:
        """Wait until every trial submitted to the engine has ended (its end recorded by ``on_end``).

        Stops waiting early only when the engine can no longer report ends (NNI's manager stopped or
        failed: its trials then never end for us).
        """
        self._release_all()
        while True:
            with self._lock:
                pending = [model for _, _, model in self._live.values() if not model.status.completed()]
            if not pending or not self._engine_reports():
                return
            self._poll()
            time.sleep(poll_s)

    def _engine_reports(self) -> bool:
        binding = getattr(self.engine, "nodejs_binding", None)
        if binding is None:  # the sequential engine: every trial has ended when submit_models returns
            return True
        try:
            return binding.get_status() not in ("STOPPED", "ERROR")
        except Exception:  # noqa: BLE001  (the manager is gone)
            return False

    def wait_models(self, *models: Any) -> None:
        self._release_all()
        answered = {id(m) for m in self._replayed}
        live = [m for m in models if id(m) not in answered]
        if live or not models:
            self.engine.wait_models(*live)

    def list_models(self, status: Any = None) -> Iterable[Any]:
        yield from self.engine.list_models(status)
        for model in list(self._replayed):
            if status is None or model.status == status:
                yield model

    def state_dict(self) -> dict:
        return {"replayed": self.replayed}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to load: the ledger, not NNI's checkpoint, is what a re-run resumes from."""

    def _dispatch(self, trial: FinishedTrial, model: Any) -> None:
        if trial.metric is not None:
            self.dispatch_model_event(FinalMetricEvent(model, trial.metric))
        self.dispatch_model_event(TrainingEndEvent(model, ModelStatus(trial.status)))
        self._ended += 1

    def _release(self, upto: int | None) -> None:
        while self._held and (upto is None or self._ended < upto):
            trial, model = self._held.pop(0)
            self._dispatch(trial, model)

    def _release_all(self) -> None:
        with self._lock:
            self._release(None)

    def _go_live(self) -> None:
        self._ordered = False
        self._release(None)

    def _poll(self) -> None:
        if self._on_poll is not None:
            self._on_poll()


class _ReplayChain(Chain):
    """NNI's ``Chain`` of a strategy and :class:`LedgerReplay` that, once the strategy stops submitting,
    waits for the trials still running (their ends go to the ledger) before the middleware lets go."""

    def run(self) -> None:
        replay = self._middlewares[0]
        try:
            self._strategy.run()
            replay.wait_live()
        finally:
            self._status = self._strategy._status
            for middleware in self._middlewares:
                try:
                    middleware._cleanup()
                except Exception:  # noqa: BLE001  (as NNI's Chain: a failing clean-up is only logged)
                    log.exception("clean-up of %s failed", middleware)


# NNI's processes of a run: recorded so that the next start can stop what a killed search left running

PROCESS_FORMAT = "nas-restore NNI processes"
_STOP_WAIT_S = 10.0


def nni_manifest_dir() -> str:
    """The folder of NNI's experiment manifest (``~/nni-experiments``: fixed from ``$HOME`` when NNI is imported)."""
    from nni.tools.nnictl.constants import NNI_HOME_DIR

    return str(NNI_HOME_DIR)


def forget_experiment(experiment_id: str, manifest_dir: str | None = None) -> bool:
    """Remove ``experiment_id`` from NNI's manifest (``.experiment``); True when it was there."""
    from nni.tools.nnictl.config_utils import Experiments

    folder = Path(manifest_dir or nni_manifest_dir())
    if not (folder / ".experiment").is_file():
        return False
    manifest = Experiments(home_dir=str(folder))
    known = experiment_id in manifest.get_all_experiments()
    if known:
        manifest.remove_experiment(experiment_id)
    return known


class ProcessRecord:
    """The pid file of a multi-trial run: NNI's manager (pid, start time, port), its trial processes, and
    the experiment's entry in NNI's manifest. Written (atomically) when the experiment starts and kept
    current while it runs; :func:`stop_recorded` reads it on the next start (or at the end of the run)."""

    def __init__(self, path: Path, experiment_id: str, nni_dir: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {
            "format": PROCESS_FORMAT, "version": 1, "experiment": experiment_id, "nni_dir": str(nni_dir),
            "manifest": nni_manifest_dir(), "search": {"pid": os.getpid(), "start": process_started(os.getpid())},
            "manager": None, "ports": [], "trials": []}
        self._refreshed = 0.0
        self._lock = threading.Lock()  # the engine's listener thread refreshes it too
        self.write()

    def write(self) -> None:
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)

    def manager_started(self, pid: int, ports: Sequence[int]) -> None:
        self.data.update(manager={"pid": pid, "start": process_started(pid)}, ports=[int(p) for p in ports])
        self.write()

    def refresh(self, every_s: float = 1.0) -> None:
        """Add the manager's current child processes (its trials) to the record; at most every ``every_s``."""
        manager = self.data.get("manager")
        if manager is None or time.monotonic() - self._refreshed < every_s:
            return
        self._refreshed = time.monotonic()
        try:
            children = psutil.Process(manager["pid"]).children(recursive=True)
        except psutil.Error:
            return
        known = {t["pid"] for t in self.data["trials"]}
        new = []
        for child in children:
            try:
                if child.pid not in known:
                    new.append({"pid": child.pid, "start": child.create_time()})
            except psutil.Error:
                continue
        if new:
            self.data["trials"] = [t for t in self.data["trials"] if process_alive(t["pid"], t["start"])] + new
            self.write()


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _experiment_of(process: psutil.Process) -> str | None:
    """The NNI experiment a trial process runs for (``NNI_EXP_ID`` in its environment), when readable."""
    try:
        return process.environ().get("NNI_EXP_ID")
    except psutil.Error:
        return None


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_recorded(path: str | Path) -> dict[str, Any]:
    """Stop what a run's pid file names and still runs for that run; free its ports; drop its manifest entry.

    A recorded process is stopped only when it is the same process (pid and start time, through
    :func:`nas_restore.threads.process_alive`) and belongs to the run: the manager's command line names
    the run's experiment, a trial's environment holds the experiment id, or it is a child of that
    manager. Each gets SIGTERM (NNI's manager then stops its trials and remote workers itself), what
    is left after a few seconds SIGKILL. Returns what was done (``stopped`` pids, ``ports_busy``,
    ``manifest_removed``); the pid file is removed once nothing recorded runs. No file: nothing to do.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"stopped": [], "ports_busy": [], "manifest_removed": False}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning("%s cannot be read (%s): no NNI process of an earlier run is looked for", path, err)
        path.unlink(missing_ok=True)
        return {"stopped": [], "ports_busy": [], "manifest_removed": False}
    if not isinstance(data, dict) or data.get("format") != PROCESS_FORMAT:
        log.warning("%s is not a pid file of nas-restore: ignored and removed", path)
        path.unlink(missing_ok=True)
        return {"stopped": [], "ports_busy": [], "manifest_removed": False}
    experiment = str(data.get("experiment", ""))
    found: dict[int, psutil.Process] = {}
    manager = data.get("manager") or {}
    if manager.get("pid") and process_alive(int(manager["pid"]), manager.get("start")):
        process = psutil.Process(int(manager["pid"]))
        if f"--experiment-id {experiment}" in _command_line(process):
            found[process.pid] = process
            try:
                found.update((c.pid, c) for c in process.children(recursive=True))
            except psutil.Error:
                pass
    for trial in data.get("trials") or []:
        pid = int(trial.get("pid", 0))
        if pid not in found and process_alive(pid, trial.get("start")):
            process = psutil.Process(pid)
            if _experiment_of(process) == experiment:
                found[pid] = process
    found.pop(os.getpid(), None)
    if found:
        log.warning("stopping %d NNI process(es) left running by an earlier, interrupted run of this search "
                    "(experiment %s): %s", len(found), experiment,
                    ", ".join(f"{p.pid} ({_command_line(p)[:80]})" for p in found.values()))
        ordered = sorted(found.values(), key=lambda p: p.pid != manager.get("pid"))  # the manager first
        for process in ordered:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(ordered, timeout=_STOP_WAIT_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        _, alive = psutil.wait_procs(alive, timeout=_STOP_WAIT_S)
        if alive:
            log.warning("could not stop NNI process(es) %s: end them by hand (kill PID)", [p.pid for p in alive])
    busy = []
    for port in data.get("ports") or []:
        deadline = time.monotonic() + 5.0
        while _port_busy(int(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _port_busy(int(port)):
            busy.append(int(port))
    if busy:
        log.warning("port(s) %s on 127.0.0.1 are still in use after NNI's processes were stopped", busy)
    removed = False
    if experiment:
        try:
            removed = forget_experiment(experiment, data.get("manifest"))
        except Exception as err:  # noqa: BLE001  (a damaged manifest is NNI's; our run goes on)
            log.warning("could not remove experiment %s from NNI's manifest in %s: %s", experiment,
                        data.get("manifest"), err)
    if not any(process.is_running() for process in found.values()):
        path.unlink(missing_ok=True)
    return {"stopped": sorted(found), "ports_busy": busy, "manifest_removed": removed}


def _deadline_experiment(deadline: float | None, on_manager: Callable[[Any], None] | None = None) -> type:
    """NasExperiment whose sequential engine also stops submitting at a wall-clock ``deadline``, and which
    calls ``on_manager(experiment)`` as soon as NNI's manager process has started (to record its pid).

    NNI's sequential engine budgets the summed trial durations only, so strategy and set-up time
    would let a wall-clock budget overrun by many (quickly skipped) trials.
    """
    class _Engine(SequentialExecutionEngine):
        def budget_available(self) -> bool:
            return super().budget_available() and (deadline is None or time.time() < deadline)

    class _Experiment(NasExperiment):
        def execution_engine_factory(self, config: Any) -> Any:
            engine = super().execution_engine_factory(config)
            if isinstance(engine, SequentialExecutionEngine):
                engine.__class__ = _Engine
            return engine

        def _wait_completion(self) -> bool:
            return True  # the strategy's _ReplayChain has waited for every trial it submitted

        def _start_nni_manager(self, *args: Any, **kwargs: Any) -> Any:
            result = super()._start_nni_manager(*args, **kwargs)
            if on_manager is not None:
                on_manager(self)
            return result

    return _Experiment


def _free_port(pair: bool = False) -> int:
    """A free TCP port on 127.0.0.1; with ``pair``, one whose next port is free too (NNI's websocket
    platforms, remote among them, take the port after the manager's)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        if port < 65535:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports on 127.0.0.1 for NNI's manager")


def run_multitrial_experiment(space: ChoiceSpace, function: Any, arguments: dict[str, Any], strategy: Any,
                              work_dir: Path, *, max_trials: int, max_seconds: float | None = None,
                              parallel: int = 1, training_service: dict[str, Any] | None = None,
                              finished: Sequence[FinishedTrial] = (), key_of: Callable[[Any], str] | None = None,
                              on_end: Callable[[int, int, Any, str, float | None], None] | None = None,
                              on_replay: Callable[[FinishedTrial, int, int, Any], None] | None = None,
                              process_file: Path | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Run a multi-trial strategy; each trial calls ``function(frozen ChoiceSpace, **arguments)``.

    Without ``training_service`` settings and with ``parallel == 1`` it uses NNI's sequential engine
    (in-process, no NNI manager, no web portal; a failing trial is skipped, not fatal). Otherwise it
    uses NNI's training-service engine: ``parallel`` trials at once in separate processes, launched
    by NNI's node manager, whose web portal listens on 127.0.0.1 only for the local platform and for
    a remote one reached at a loopback ``nni_manager_ip`` (other remote platforms' trials must reach
    it: NNI's own binding then). The manager is always stopped, also on errors. ``function`` must be
    importable (a module-level function) for that engine.

    The strategy runs behind :class:`LedgerReplay`: ``finished`` trials (from the run's ledger) are
    answered without training, every trial that ends live is handed to ``on_end(index, after,
    sample, status, metric)`` (to be recorded), every answered one to ``on_replay(trial, index,
    after, sample)``; ``key_of(sample)`` names an architecture. With ``process_file``, NNI's processes and
    manifest entry are recorded there while the experiment runs (:class:`ProcessRecord`), and on the
    way out the manifest entry is removed and the manager checked gone (:func:`stop_recorded`).
    Returns the engine's name and NNI's record of every trial (``sample``, ``metric``, ``status``).

    ``work_dir`` is made absolute first: NNI starts its node server in NNI's own package folder, so a
    relative path (``--out runs/x``) in the ``--require`` preload of ``NODE_OPTIONS`` (or anything else
    handed to the manager or the trial processes) would resolve against that folder, not ours.
    """
    work_dir = Path(work_dir).expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    evaluator = FunctionalEvaluator(function, **arguments)
    config = multitrial_config(work_dir, max_trials=max_trials, max_seconds=max_seconds, parallel=parallel,
                               training_service=training_service)
    sequential = isinstance(config.execution_engine, SequentialEngineConfig)
    deadline = None if max_seconds is None else time.time() + max_seconds
    record: ProcessRecord | None = None
    port = None if sequential else _free_port(pair=_platform(config) != "local")

    def manager_started(experiment: Any) -> None:
        if record is not None and getattr(experiment, "_proc", None) is not None:
            record.manager_started(experiment._proc.pid, [port, port + 1] if _platform(config) != "local" else [port])

    replay = LedgerReplay(finished, max_trials=max_trials, key_of=key_of or _sample_key,
                          on_end=on_end or (lambda *a: None), on_replay=on_replay or (lambda *a: None),
                          on_poll=lambda: record.refresh() if record is not None else None)
    chain = _ReplayChain(strategy, replay)
    experiment = _deadline_experiment(deadline, manager_started)(space, evaluator, chain, config)
    if process_file is not None:
        record = ProcessRecord(process_file, experiment.id, work_dir)
    old_node_options = os.environ.get("NODE_OPTIONS")
    try:
        if sequential:
            experiment.run()
        else:
            if _binds_loopback(config):
                preload = work_dir / "bind_localhost.js"
                preload.write_text(BIND_LOCALHOST_JS)
                os.environ["NODE_OPTIONS"] = f"{old_node_options or ''} --require {json.dumps(str(preload))}".strip()
            experiment.run(port=port)
        models = _trial_records(chain)
    finally:
        if old_node_options is None:
            os.environ.pop("NODE_OPTIONS", None)
        else:
            os.environ["NODE_OPTIONS"] = old_node_options
        try:
            experiment.stop()  # stops NNI's node manager: a killed Python would leave it holding the port
        except Exception:  # noqa: BLE001  (stopping a sequential experiment that never started is harmless)
            logging.getLogger(__name__).debug("experiment.stop() failed", exc_info=True)
        if record is not None:
            stop_recorded(record.path)  # the manager gone, its port free, the manifest entry removed
        else:
            with contextlib.suppress(Exception):
                forget_experiment(experiment.id)
    if replay.replayed:
        log.info("%d finished trial(s) answered from the ledger without training", replay.replayed)
    return ("sequential" if sequential else "training_service"), models


def _sample_key(sample: Any) -> str:
    return json.dumps(dict(sample or {}), sort_keys=True, default=str)


def _trial_records(strategy: Any) -> list[dict[str, Any]]:
    """NNI's view of the trials (read while the NNI manager still runs)."""
    try:
        models = list(strategy.list_models(sort=False))
    except Exception as err:  # noqa: BLE001  (only a fallback for trials whose own rows are missing)
        logging.getLogger(__name__).warning("could not list NNI's trials: %s", err)
        return []
    return [{"sample": json.loads(json.dumps(dict(m.sample or {}))), "metric": m.metric,
             "status": getattr(m.status, "value", str(m.status))} for m in models]


def multitrial_config(work_dir: Path, *, max_trials: int, max_seconds: float | None = None, parallel: int = 1,
                      training_service: dict[str, Any] | None = None) -> Any:
    """NNI's experiment config for a multi-trial run (see :func:`run_multitrial_experiment`).

    ``training_service`` is NNI's own training-service section, as in NNI's YAML (camelCase or
    snake_case keys): ``platform`` (local when left out: ``remote``, ``kubeflow``, ``frameworkcontroller``,
    ...) and that platform's fields, including NNI's per-service ``trial_gpu_number`` and ``nni_manager_ip``.
    """
    service = dict(training_service or {})
    if parallel == 1 and not service:
        engine = SequentialEngineConfig(continue_on_failure=True, max_model_count=max_trials, max_duration=max_seconds)
        config = NasExperimentConfig(execution_engine=engine, model_format="simplified")
    else:
        service.setdefault("platform", "local")
        config = NasExperimentConfig(execution_engine="ts", model_format="simplified", training_service=service,
                                     trial_concurrency=parallel)
        if max_seconds is not None:
            config.max_experiment_duration = f"{max(1, math.ceil(max_seconds))}s"
    config.max_trial_number = max_trials
    config.experiment_working_directory = str(Path(work_dir).expanduser().resolve())  # see run_multitrial_experiment
    config.log_level = "error"
    return config


def _service(config: Any) -> Any:
    service = config.training_service
    return service[0] if isinstance(service, list) else service


def _platform(config: Any) -> str:
    return str(getattr(_service(config), "platform", "local"))


def _binds_loopback(config: Any) -> bool:
    """Whether the manager may listen on 127.0.0.1 only: its trials all reach it through the loopback."""
    if _platform(config) == "local":
        return True
    address = str(getattr(_service(config), "nni_manager_ip", None) or "")
    return address == "localhost" or address.startswith("127.")
