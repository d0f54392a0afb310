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

# NNI's launcher gives its node manager 3 tries a second apart to answer, then fails the experiment ("Create
# experiment failed: Expecting value"): on a loaded 2-core machine node starts slower than that (seen: a
# --parallel search failed at load 8). Give it MANAGER_START_TRIES a second apart instead.
from nni.experiment import launcher as _launcher  # noqa: E402

MANAGER_START_TRIES = 60
_check_rest_server = _launcher._check_rest_server


def _patient_check_rest_server(port: int, retry: int = 3, url_prefix: str | None = None) -> None:
    _check_rest_server(port, max(retry, MANAGER_START_TRIES), url_prefix)


_launcher._check_rest_server = _patient_check_rest_server

__all__ = ["nni", "pl"]
