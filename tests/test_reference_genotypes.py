"""The released TMICS networks as built-in reference genotypes: loadable by name, buildable, documented."""

import re

import pytest
import torch

import search_spaces.reference as reference
from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.genotype import Genotype, GenotypeError
from nas_restore.nni_layer import frozen_model
from nas_restore.profiling import count_parameters
from search_spaces import find_space


def documented_counts() -> dict[str, int]:
    """The parameter counts the module docstring states (they must stay true)."""
    rows = re.findall(r"^(tmics-\w+)\s+([\d,]+)\s", reference.__doc__, flags=re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


@pytest.mark.parametrize("name,alignment,ops", [
    ("tmics-heavy", "tgm", ["Residualblocks_5_1", "SPAattention_3", "ECAattention_3", "Residualblocks_3_1"]),
    ("tmics-light", "ofm", ["Residualblocks_5_1", "SPAattention_3", "DilConv_3_2", "ECAattention_3"]),
])
def test_reference_loads_by_name_builds_at_paper_size_and_runs(name, alignment, ops):
    genotype = load_genotype(name)
    config = genotype.space_config
    assert (config["channels"], config["frames"], config["cells_per_branch"], config["cell"]) == (96, 5, 4, "chain")
    assert genotype.macro == {"alignment": alignment}
    for cell in genotype.cells.values():
        assert cell.kind == "chain" and cell.ops == ops
    model = build_model(name).eval()
    assert len(model.dna_cells) == len(model.cna_cells) == 4
    assert count_parameters(model) == documented_counts()[name]
    with torch.no_grad():
        out = model(torch.rand(1, 5, 3, 32, 32))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_reference_round_trips_through_json_and_the_nni_space(tmp_path):
    genotype = load_genotype("tmics-heavy")
    again = load_genotype(genotype.save(tmp_path / "heavy.json"))
    assert again.genotype_id() == genotype.genotype_id()
    spec = find_space("tmics")
    arch = spec.to_nni_arch(genotype)
    assert arch == {**{f"{b}/chain_{i}": op for b in ("dna", "cna") for i, op in enumerate(reference.HEAVY_OPS)},
                    "alignment": "tgm"}
    # the NNI space frozen on the reference is our plain network, weight for weight
    from search_spaces.tmics import make_space

    config = spec.config(**genotype.space_config)
    space_class = type(make_space(spec.config("demo", cell="chain")))
    frozen = frozen_model(space_class, arch, config.to_dict())
    assert count_parameters(frozen) == documented_counts()["tmics-heavy"]


def test_references_are_fresh_copies_and_unknown_names_are_clear():
    a, b = load_genotype("tmics-light"), load_genotype("tmics-light")
    assert isinstance(a, Genotype) and a is not b
    a.macro["alignment"] = "tgm"
    assert load_genotype("tmics-light").macro["alignment"] == "ofm"
    with pytest.raises(GenotypeError, match=r"tmics-hevy does not exist.*built-in name \(prn, progressive-prenet-r, "
                                            r"progressive-prn, rescnn, tmics-heavy, tmics-light\)"):
        load_genotype("tmics-hevy")
    with pytest.raises(KeyError, match="Did you mean tmics-heavy"):
        reference.reference_genotype("tmics-hevy")
