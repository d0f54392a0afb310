"""The one thin layer through which nas-restore reaches NNI 3.0.

Everything NNI-specific lives here: the import-time warning filters, the model-space primitives the
spaces use, the Lightning evaluator and the experiment runner. The rest of the code (and every
retrained model) works with plain torch modules and genotypes, so another NNI version, or none at
inference, only touches this file. The workarounds follow ../shared/NNI_NOTES.md.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

# NNI regenerates stubs of torch.nn on import and warns about two torch 2.13 classes: harmless.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
# one-shot runs are in-process: NNI's advice to trace DataLoaders for training services does not apply
warnings.filterwarnings("ignore", message=r".*wrap PyTorch DataLoader with nni\.trace.*")

import nni  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from nni.nas.evaluator.pytorch import Lightning  # noqa: E402
from nni.nas.evaluator.pytorch import LightningModule as NNILightningModule  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.nn.pytorch import Cell, LayerChoice, ModelSpace  # noqa: E402

logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # PL resets it on import: set it after

# NNI prints its INFO lines to stdout; keep them in the run's log files only (`-v` shows ours)
from nni.runtime.log import silence_stdout  # noqa: E402

silence_stdout()

_NOISE = (
    "will be ignored for sequential execution engine",
    "Checkpoint callback is found to be None",
    "Validation dataloaders are missing",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in _NOISE)


for _name in ("nni", "nni.nas.experiment.config.experiment", "nni.nas.oneshot.pytorch.strategy",
              "nni.nas.evaluator.pytorch.lightning", "nni.nas.experiment.experiment"):
    logging.getLogger(_name).addFilter(_DropNoise())

__all__ = ["ModelSpace", "LayerChoice", "Cell", "Lightning", "NNILightningModule", "nni", "pl",
           "run_oneshot", "labelled_alphas", "make_search_module"]


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


def labelled_alphas(module: Any) -> list[tuple[str, torch.Tensor, list[str]]]:
    """(label, raw alpha, choice names) for every architecture parameter of a one-shot supernet.

    DARTS cells keep one alpha per edge (``<cell>/<node>_<input>``) with a trailing "none" slot that
    NNI's ``export_probs`` drops; it is kept here. Shared labels are reported once.
    """
    found: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for sub in module.modules():
        alphas = getattr(sub, "_arch_alpha", None)
        if isinstance(alphas, torch.nn.ParameterDict) and hasattr(sub, "depth_choice"):  # Repeat: depth counts
            for label, choice in sub.depth_choice.simplify().items():
                if label in alphas:
                    found.setdefault(label, (alphas[label], [str(v) for v in choice.values]))
        elif isinstance(alphas, torch.nn.ParameterDict):
            names = list(getattr(sub, "op_names", []))
            for label, alpha in alphas.items():
                found.setdefault(label, (alpha, names + ["none"] if len(names) + 1 == alpha.numel() else names))
        elif isinstance(alphas, torch.Tensor) and hasattr(sub, "label"):
            names = [str(n) for n in getattr(sub, "names", range(alphas.numel()))]
            found.setdefault(sub.label, (alphas, names))
    out = []
    for label in sorted(found):
        alpha, names = found[label]
        if len(names) != alpha.numel():
            names = [str(i) for i in range(alpha.numel())]
        out.append((label, alpha, names))
    return out


def make_lightning_evaluator(module: NNILightningModule, trainer_kwargs: dict[str, Any],
                             train_loader: Any, val_loader: Any) -> Lightning:
    """NNI's Lightning evaluator around our restoration module, with NNI's traced Trainer."""
    from nni.nas.evaluator.pytorch import Trainer

    return Lightning(module, Trainer(**trainer_kwargs), train_dataloaders=train_loader, val_dataloaders=val_loader)


def make_search_module(loss: Any, lr: float, weight_decay: float, epochs: int) -> NNILightningModule:
    """Our restoration training steps inside NNI's LightningModule (NNI sets ``self.model``)."""
    return SearchModule(loss=loss, lr=lr, weight_decay=weight_decay, epochs=epochs)


def _search_module_class() -> type:
    from nas_restore.losses import LossConfig, RestorationLoss
    from nas_restore.training import OptimConfig, RestorationSteps

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


SearchModule = _search_module_class()


# --------------------------------------------------------------------------------------------------
# helpers for search spaces (user spaces, chain cells) and the search-step benchmark

from nni.mutable import label_scope  # noqa: E402  (hierarchical labels "<scope>/<label>"; "/" is not allowed in one)


def is_model_space_class(obj: Any) -> bool:
    """Whether ``obj`` is a subclass of NNI's ``ModelSpace`` (what a user's space file must define)."""
    return isinstance(obj, type) and issubclass(obj, ModelSpace) and obj is not ModelSpace


def space_init_signature(space_class: type) -> Any:
    """The signature of a space's own ``__init__`` (NNI wraps it to record the arguments)."""
    import inspect

    return inspect.signature(getattr(space_class, "_init_wrapped", None) or space_class.__init__)


def check_architecture(space: ModelSpace, arch: dict[str, Any]) -> str | None:
    """Why ``arch`` is not an architecture of ``space`` (a missing or unknown label, a bad value), or None."""
    unknown = sorted(set(arch) - set(space.simplify()))
    if unknown:
        return f"labels {unknown} are not choices of the space"
    error = space.check_contains(arch)
    return None if error is None else str(error)


def frozen_model(space_class: type, arch: dict[str, Any], settings: dict[str, Any]) -> torch.nn.Module:
    """A space's network for one architecture, built directly (no supernet): NNI's ``model_context``."""
    from nni.nas.space import model_context

    with model_context(arch):
        return space_class(**settings)


def random_architecture(space: ModelSpace, seed: int = 0) -> dict[str, Any]:
    """One architecture drawn at random from ``space`` (NNI wants a numpy RandomState)."""
    import numpy as np

    arch: dict[str, Any] = {}
    space.random(memo=arch, random_state=np.random.RandomState(seed))
    return json.loads(json.dumps(arch))


def darts_supernet(space: ModelSpace, **options: Any) -> ModelSpace:
    """The supernet NNI's DARTS trains, made in place from ``space`` (mixed ops, one alpha per label).

    Its alphas are read with :func:`labelled_alphas`; the weights are every other parameter.
    """
    from nni.nas.strategy import DARTS

    return DARTS(**options).mutate_model(space)


# --------------------------------------------------------------------------------------------------
# multi-trial search: a space's choices as plain categoricals, and NNI's multi-trial experiment

from contextlib import ExitStack  # noqa: E402
from itertools import combinations  # noqa: E402


class ChoiceSpace(ModelSpace):
    """Only the choices of another space, each a plain categorical: what multi-trial strategies explore.

    Trials build the real network from the decoded architecture (:func:`decode_choices`), so the
    strategies never build the real space, and TPE, which rejects NNI's ``InputChoice`` (also the
    one inside every ``Cell``), sees each input choice as a categorical over the allowed input sets.
    Defined at module level so that NNI's training-service trials can import it.
    """

    def __init__(self, choices: dict[str, list[Any]]):
        super().__init__()
        from nni.mutable import ensure_frozen

        self.choices = {label: list(values) for label, values in choices.items()}
        self.arch: dict[str, Any] = {}
        for label, values in self.choices.items():
            *scopes, name = label.split("/")  # NNI forbids "/" in a label: rebuild it from label scopes
            with ExitStack() as stack:
                for scope in scopes:
                    stack.enter_context(label_scope(scope))
                choice = self.add_mutable(nni.choice(name, values))
            self.arch[label] = ensure_frozen(choice)

    def freeze(self, sample: dict[str, Any]) -> "ChoiceSpace":
        from nni.nas.space import model_context

        with model_context(sample):
            return ChoiceSpace(self.choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # never run: trials build the real network
        raise RuntimeError("a ChoiceSpace holds architecture choices only; build the network from decode_choices")


def space_choices(space: ModelSpace) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """(choices, multiples) of ``space`` for a :class:`ChoiceSpace`.

    ``choices`` maps every label to its candidates. An input choice (NNI's ``CategoricalMultiple``)
    becomes one categorical over the index sets it allows: the index itself when it picks one input,
    ``"0+2"``-style strings otherwise; ``multiples`` keeps what :func:`decode_choices` needs to turn it back.
    """
    from nni.mutable import Categorical, CategoricalMultiple, MutableAnnotation

    choices: dict[str, list[Any]] = {}
    multiples: dict[str, dict[str, Any]] = {}
    for label, mutable in space.simplify().items():
        if isinstance(mutable, MutableAnnotation):  # constraints: trials reject invalid networks themselves
            logging.getLogger(__name__).info("multi-trial search ignores the annotation %r", label)
            continue
        if isinstance(mutable, CategoricalMultiple):
            n = len(mutable.values)
            sizes = [mutable.n_chosen] if mutable.n_chosen is not None else range(1, n + 1)
            sets = [c for k in sizes for c in combinations(range(n), k)]
            single = all(len(s) == 1 for s in sets)
            choices[label] = [s[0] if single else "+".join(map(str, s)) for s in sets]
            multiples[label] = {"values": json.loads(json.dumps(list(mutable.values))), "single": single}
        elif isinstance(mutable, Categorical):
            choices[label] = json.loads(json.dumps(list(mutable.values)))
        else:
            raise ValueError(f"choice {label!r} of the space is a {type(mutable).__name__}; multi-trial search "
                             "supports categorical choices (LayerChoice, InputChoice, Cell, nni.choice): "
                             "make it an nni.choice over a list of values")
    return choices, multiples


def decode_choices(sample: dict[str, Any], multiples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A :class:`ChoiceSpace` sample -> the architecture dict of the real space (input choices as lists)."""
    arch = {}
    for label, value in sample.items():
        if label in multiples:
            spec = multiples[label]
            indices = [int(value)] if spec["single"] else [int(i) for i in str(value).split("+")]
            arch[label] = [spec["values"][i] for i in indices]
        else:
            arch[label] = value
    return json.loads(json.dumps(arch))


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
    import time

    from nni.nas.execution import SequentialExecutionEngine

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
    import socket

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
    """
    import os
    import time

    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment.config import SequentialEngineConfig

    work_dir = Path(work_dir)
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
    import math

    from nni.nas.experiment.config import NasExperimentConfig, SequentialEngineConfig

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
    config.experiment_working_directory = str(work_dir)
    config.log_level = "error"
    return config


def _platform(config: Any) -> str:
    service = config.training_service
    return str(getattr(service[0] if isinstance(service, list) else service, "platform", "local"))
