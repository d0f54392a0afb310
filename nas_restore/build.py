"""From a genotype to a network, and from a trained weights file back to a ready model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from nas_restore.genotype import Genotype, load_genotype, validate_against_space


def build_model(genotype: Genotype | str | Path) -> nn.Module:
    """The plain ``nn.Module`` of a genotype (validated against its space first); no NNI at inference."""
    from search_spaces import find_space

    if not isinstance(genotype, Genotype):
        genotype = load_genotype(genotype)
    else:
        validate_against_space(genotype)
    return find_space(genotype.space).make_network(genotype)


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Genotype]:
    """Rebuild a retrained model from its ``model.pt`` (or the retrain folder holding it)."""
    from nas_restore.training import load_weights

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the model.pt written by `nas-restore retrain` "
                                "(or its output folder)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "genotype" not in blob:
        raise ValueError(f"{path} holds no genotype: it was not written by `nas-restore retrain`; rebuild the "
                         "network with build_model(genotype) and load the state_dict yourself")
    genotype = Genotype.from_dict(blob["genotype"])
    model = build_model(genotype)
    load_weights(model, path, map_location=map_location)
    model.eval()
    return model, genotype
