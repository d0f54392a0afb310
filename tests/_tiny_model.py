"""A tiny retrained-model file (model.pt with its genotype) for the derain/export/evaluate tests."""
from pathlib import Path

from nas_restore.build import build_model
from nas_restore.genotype import CellGenotype, Edge, Genotype
from nas_restore.build import save_weights
from search_spaces import find_space


def tiny_genotype(frames: int = 3, alignment: str = "tgm") -> Genotype:
    """A TMICS network with 8 channels and one 2-node cell per branch (a few thousand parameters)."""
    config = find_space("tmics").config("demo", channels=8, frames=frames, rain_kernels=4)
    cell = CellGenotype(nodes=[[Edge("Residualblocks_3_1", 0), Edge("skip_connect", 1)],
                               [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    return Genotype(space="tmics", cells={"dna": cell, "cna": cell}, macro={"alignment": alignment},
                    space_config=config.to_dict(), fusion={"type": "aas", "mode": "channel"}, metadata={})


def write_model(folder: Path, frames: int = 3, alignment: str = "tgm") -> Path:
    """Write ``folder/model.pt`` as `nas-restore retrain` does (weights + genotype), untrained."""
    genotype = tiny_genotype(frames, alignment)
    model = build_model(genotype)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_weights(model, path, genotype=genotype.to_dict())
    return path
