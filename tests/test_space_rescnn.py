"""The rescnn baseline: no choices, a genotype of its config, listed as a baseline, retrainable."""

import pytest
import torch

from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.genotype import GenotypeError
from search_spaces import find_space, list_spaces
from search_spaces.baselines import ResCNN, baseline_genotype
from search_spaces.prn import prn_genotype

DEMO_GENOTYPE_WEIGHTS = 35_520  # the demo's searched tmics genotype de40d40c90b2 (reports/demo_cpu.md)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_listed_as_a_baseline(capsys):
    from nas_restore.cli import main

    assert find_space("rescnn").description.startswith("baseline")
    assert {"rescnn", "rrgnet", "rdmc", "tmics"} <= {s.name for s in list_spaces()}
    assert main(["spaces"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("rescnn"))
    assert "baseline (no search)" in line


def test_demo_genotype_is_about_the_demo_searched_size_and_runs():
    genotype = baseline_genotype("demo")
    assert genotype.cells == {} and genotype.macro == {"channels": "16", "blocks": "7", "frames": "3"}
    net = build_model(genotype)
    assert isinstance(net, ResCNN)
    assert abs(n_params(net) - DEMO_GENOTYPE_WEIGHTS) / DEMO_GENOTYPE_WEIGHTS < 0.05
    assert net(torch.rand(2, 3, 3, 20, 12)).shape == (2, 3, 20, 12)
    # 2 convs of 3x3 per block: the count follows the config exactly
    assert n_params(net) == (27 * 3 * 16 + 16) + 7 * 2 * (9 * 16 * 16 + 16) + (9 * 16 * 3 + 3)


def test_image_mode_and_frames_mismatch():
    net = build_model(baseline_genotype(None, frames=1, channels=8, blocks=2))
    assert net(torch.rand(1, 3, 16, 16)).shape == net(torch.rand(1, 1, 3, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="built for 1 frame"):
        net(torch.rand(1, 3, 3, 16, 16))


def test_genotype_round_trips(tmp_path):
    genotype = baseline_genotype("demo", channels=12)
    loaded = load_genotype(genotype.save(tmp_path / "genotype.json"))
    assert loaded.genotype_id() == genotype.genotype_id() and loaded.space_config["channels"] == 12
    spec = find_space("rescnn")
    assert spec.to_genotype({}, spec.config("demo"), {}).macro == baseline_genotype("demo").macro


@pytest.mark.parametrize("name, make, size_key", [("rescnn", lambda: baseline_genotype("demo"), "channels"),
                                                    ("prn", lambda: prn_genotype("cpu"), "stages")])
def test_nothing_to_search_and_bad_genotypes_are_named(name, make, size_key):
    """The spaces without choices (search_spaces.baselines.fixed_space): nothing to search, the macro
    repeats the config, and a bad genotype is named."""
    spec = find_space(name)
    with pytest.raises(ValueError, match="no architecture choice: there is nothing to search"):
        spec.make_space(spec.config())
    genotype = make()
    bad = genotype.copy()
    bad.macro[size_key] = "5"
    with pytest.raises(GenotypeError, match="does not repeat space_config"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.space_config["frames"] = 2
    with pytest.raises(GenotypeError, match="frames must be odd"):
        spec.validate_genotype(bad)
    with pytest.raises(GenotypeError, match="no architecture choices"):
        spec.to_genotype({"depth": "2"}, spec.config(), {})


def test_a_genotype_renders(tmp_path):
    from nas_restore.render import render_genotype

    render_genotype(baseline_genotype("demo"), tmp_path, formats=("svg",), overview=False)
    assert "blocks" in (tmp_path / "network.gv").read_text()
