"""The runners that hand NNI a search: one-shot in-process, multi-trial on NNI's engines.

One-shot strategies train a supernet inside NNI's Lightning evaluator with our restoration training
steps (:func:`make_search_module`); multi-trial strategies run a function per trial, sequentially or as
parallel processes on NNI's training-service engine (:func:`run_multitrial_experiment`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from nas_restore.nni_layer.setup import nni  # first: NNI's warning filters and log routing

from nas_restore.losses import LossConfig, RestorationLoss  # noqa: E402
from nas_restore.nni_layer.space import ChoiceSpace, ModelSpace  # noqa: E402
from nas_restore.training import OptimConfig, RestorationSteps  # noqa: E402
from nni.nas.evaluator import FunctionalEvaluator  # noqa: E402
from nni.nas.evaluator.pytorch import Lightning, Trainer  # noqa: E402
from nni.nas.evaluator.pytorch import LightningModule as NNILightningModule  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.experiment.config import NasExperimentConfig, SequentialEngineConfig  # noqa: E402


def run_oneshot(space: ModelSpace, evaluator: Lightning, strategy: Any, work_dir: Path) -> dict[str, Any]:
    """Run a one-shot (weight-sharing) strategy in-process and return NNI's architecture dict.

    One-shot strategies always run on NNI's sequential engine: no NNI manager, no web portal.
    NNI mutates ``space`` in place; build the final network from the genotype, not from ``space``.
    """
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(work_dir)
    experiment.config.log_level = "error"
    try:
        experiment.run()
        top = experiment.export_top_models(formatter="dict")
    finally:
        try:
            experiment.stop()
        except Exception:  # stopping an experiment that never started a manager is harmless
            logging.getLogger(__name__).debug("experiment.stop() failed", exc_info=True)
    if not top:
        raise RuntimeError("NNI returned no architecture: the search did not finish (see the run log)")
    # NNI's keys and values can be its own str/int subclasses (labels): make them plain JSON types
    return json.loads(json.dumps(dict(top[0])))


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

def _deadline_experiment(deadline: float | None) -> type:
    """NasExperiment whose sequential engine also stops submitting at a wall-clock ``deadline``.

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

    return _Experiment


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_multitrial_experiment(space: ChoiceSpace, function: Any, arguments: dict[str, Any], strategy: Any,
                              work_dir: Path, *, max_trials: int, max_seconds: float | None = None,
                              parallel: int = 1, training_service: dict[str, Any] | None = None
                              ) -> tuple[str, list[dict[str, Any]]]:
    """Run a multi-trial strategy; each trial calls ``function(frozen ChoiceSpace, **arguments)``.

    Without ``training_service`` settings and with ``parallel == 1`` it uses NNI's sequential engine
    (in-process, no NNI manager, no web portal; a failing trial is skipped, not fatal). Otherwise it
    uses NNI's training-service engine: ``parallel`` trials at once in separate processes, launched
    by NNI's node manager, whose web portal listens on 127.0.0.1 only for the local platform (a
    remote platform's trials must reach it: NNI's own binding then). The manager is always stopped,
    also on errors. ``function`` must be importable (a module-level function) for that engine.
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
    experiment = _deadline_experiment(deadline)(space, evaluator, strategy, config)
    old_node_options = os.environ.get("NODE_OPTIONS")
    try:
        if sequential:
            experiment.run()
        else:
            if _platform(config) == "local":
                preload = work_dir / "bind_localhost.js"
                preload.write_text(BIND_LOCALHOST_JS)
                os.environ["NODE_OPTIONS"] = f"{old_node_options or ''} --require {json.dumps(str(preload))}".strip()
            experiment.run(port=_free_port())
        models = _trial_records(strategy)
    finally:
        if old_node_options is None:
            os.environ.pop("NODE_OPTIONS", None)
        else:
            os.environ["NODE_OPTIONS"] = old_node_options
        try:
            experiment.stop()  # stops NNI's node manager: a killed Python would leave it holding the port
        except Exception:  # noqa: BLE001  (stopping a sequential experiment that never started is harmless)
            logging.getLogger(__name__).debug("experiment.stop() failed", exc_info=True)
    return ("sequential" if sequential else "training_service"), models


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


def _platform(config: Any) -> str:
    service = config.training_service
    return str(getattr(service[0] if isinstance(service, list) else service, "platform", "local"))
