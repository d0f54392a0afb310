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
        if isinstance(alphas, torch.nn.ParameterDict):
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
