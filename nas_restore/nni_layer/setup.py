"""NNI's import set-up: warning filters and log routing that must run before NNI is used.

Every module of the layer imports ``nni`` from here, so the set-up runs once, first. The workarounds
follow ../shared/NNI_NOTES.md.
"""

from __future__ import annotations

import logging
import warnings

# NNI regenerates stubs of torch.nn on import and warns about two torch 2.13 classes: harmless.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
# one-shot runs are in-process: NNI's advice to trace DataLoaders for training services does not apply
warnings.filterwarnings("ignore", message=r".*wrap PyTorch DataLoader with nni\.trace.*")

import nni  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

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

__all__ = ["nni", "pl"]
