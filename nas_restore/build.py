"""From a genotype to a network, and from a trained weights file back to a ready model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nas_restore.errors import UserError
from nas_restore.genotype import Genotype
from nas_restore.sources import load_genotype
from search_spaces import find_space, validate_genotype


WEIGHTS_FORMAT = "nas-restore-weights"
WEIGHTS_VERSION = 1
RETRAIN_HINT = "pass the model.pt written by `nas-restore retrain` (or its output folder)"


class ModelFileError(UserError, ValueError):
    """A weights file (``model.pt``) that is missing, corrupt, or not one that nas-restore wrote."""


def build_model(genotype: Genotype | str | Path) -> nn.Module:
    """The plain ``nn.Module`` of a genotype (validated against its space first); no NNI at inference."""
    if not isinstance(genotype, Genotype):
        genotype = load_genotype(genotype)
    else:
        validate_genotype(genotype)
    return find_space(genotype.space).make_network(genotype)


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Genotype]:
    """Rebuild a retrained model from its ``model.pt`` (or the retrain folder holding it)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ModelFileError(f"{path} is a folder without model.pt: {RETRAIN_HINT}")
        path = path / "model.pt"
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist: {RETRAIN_HINT}")
    blob = _read_weights_file(path, "cpu")
    if not isinstance(blob, dict) or "genotype" not in blob:
        raise ModelFileError(f"{path} holds no genotype: it was not written by `nas-restore retrain`; rebuild the "
                             "network with build_model(genotype) and load the state_dict yourself")
    genotype = Genotype.from_dict(blob["genotype"])
    model = build_model(genotype)
    load_weights(model, path, map_location=map_location)
    model.eval()
    return model, genotype


def save_weights(model: nn.Module, path: Path, **meta: Any) -> None:
    """Write ``{"state_dict", "format", "version", **meta}``: plain tensors and numbers only, so it loads
    with ``torch.load(weights_only=True)`` and without Lightning or NNI."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # plain NCHW fp32
    torch.save({"state_dict": state, "format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, **meta}, path)


def load_weights(model: nn.Module, path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``save_weights`` file into ``model`` (strict); returns the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file {path} does not exist: {RETRAIN_HINT}")
    blob = _read_weights_file(path, map_location)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ModelFileError(f"{path} is not a nas-restore weights file (no 'state_dict' key): write it with "
                             f"nas_restore.build.save_weights or retrain")
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:  # missing/unexpected keys or shapes: weights of another network
        first = str(err).strip().splitlines()[0]
        raise ModelFileError(f"{path} holds the weights of another network ({first}); {RETRAIN_HINT} "
                             "together with its own genotype") from None
    return {k: v for k, v in blob.items() if k != "state_dict"}


def _read_weights_file(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``, with a :class:`ModelFileError` for a file torch cannot read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch raise many kinds for a foreign file
        head = path.read_bytes()[:64].lstrip()
        what = ("a JSON file (a genotype? train it first with `nas-restore retrain GENOTYPE --out DIR`)"
                if head.startswith(b"{") else f"not a torch weights file ({type(err).__name__})")
        raise ModelFileError(f"cannot load {path}: it is {what}; {RETRAIN_HINT}") from None
