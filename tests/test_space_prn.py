"""The prn baseline (PRN_r, Ren et al. CVPR 2019): its published size, real weight sharing, genotypes, training."""

import pytest
import torch

from nas_restore.build import build_model
from nas_restore.genotype import GenotypeError, read_genotype_file
from nas_restore.profiling import count_parameters
from nas_restore.sources import load_genotype, with_frames
from search_spaces import find_space, list_spaces
from search_spaces.prn import PAPER_PARAMETERS, PRN, PRNConfig, expected_parameters, prn_genotype
from search_spaces.reference import reference_names

PAPER_QUOTED = 21_540  # issue 12's figure for PRN_r; the public code's PRN_r (and derain-toolbox's 21.12k) is 21,123


def test_paper_size_has_the_documented_count_close_to_the_published_one():
    net = build_model(prn_genotype("paper"))
    assert isinstance(net, PRN)
    assert count_parameters(net) == PAPER_PARAMETERS == 21_123
    # the docstring's breakdown: f_in 1,760 + one residual block 18,496 + f_out 867
    assert PAPER_PARAMETERS == (6 * 32 * 9 + 32) + 2 * (32 * 32 * 9 + 32) + (32 * 3 * 9 + 3)
    assert abs(PAPER_PARAMETERS - PAPER_QUOTED) / PAPER_QUOTED < 0.02
    for preset in ("cpu", "demo", "paper"):
        genotype = prn_genotype(preset)
        assert count_parameters(build_model(genotype)) == expected_parameters(PRNConfig.from_dict(genotype.space_config))


def test_weight_sharing_is_real():
    one = PRN(PRNConfig(channels=8, stages=1, recursions=1))
    six = PRN(PRNConfig(channels=8, stages=6, recursions=5))
    # one stage's parameters, whatever the number of stages and recursions
    assert count_parameters(one) == count_parameters(six) == expected_parameters(PRNConfig(channels=8))
    assert list(one.state_dict()) == list(six.state_dict())
    six.load_state_dict(one.state_dict())
    calls = {"f_in": 0, "block": 0}
    six.f_in.register_forward_hook(lambda *_: calls.__setitem__("f_in", calls["f_in"] + 1))
    six.block.register_forward_hook(lambda *_: calls.__setitem__("block", calls["block"] + 1))
    x = torch.rand(1, 1, 3, 16, 16)
    with torch.no_grad():
        out_one, out_six = one(x), six(x)
    assert calls == {"f_in": 6, "block": 30}  # the same modules re-applied stages x recursions times
    assert not torch.allclose(out_one, out_six)


def test_forward_shape_and_frames():
    net = build_model(prn_genotype("cpu"))
    assert net(torch.rand(2, 1, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="built for 1 frame"):
        net(torch.rand(1, 3, 3, 16, 16))
    # a window of 3 frames: the same weights, and only the centre frame is derained
    wide = with_frames(prn_genotype("cpu"), 3)
    assert wide.space_config["frames"] == 3 and wide.macro["frames"] == "3"
    net3 = build_model(wide)
    net3.load_state_dict(net.state_dict())
    clip = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        expected = net(clip[:, 1:2])
        assert torch.allclose(net3(clip), expected)
        clip[:, 0] = 0.0
        clip[:, 2] = 1.0
        assert torch.allclose(net3(clip), expected)


def test_listed_as_a_baseline_and_reachable_by_name(capsys):
    from nas_restore.cli import main

    assert "prn" in {s.name for s in list_spaces()} and find_space("prn").description.startswith("baseline")
    assert main(["spaces"]) == 0
    assert any(l.startswith("prn") and "baseline (no search)" in l for l in capsys.readouterr().out.splitlines())
    assert "prn" in reference_names()
    reference = load_genotype("prn")
    assert reference.space == "prn" and reference.space_config == PRNConfig().to_dict()  # the paper size
    assert load_genotype("space:prn:paper").genotype_id() == reference.genotype_id()
    assert load_genotype("space:prn").space_config["channels"] == 16  # the cpu preset by default


def test_genotype_round_trips_and_builds(tmp_path):
    genotype = load_genotype("space:prn:paper")
    path = genotype.save(tmp_path / "genotype.json")
    for loaded in (load_genotype(path), read_genotype_file(path)):
        assert loaded.genotype_id() == genotype.genotype_id()
        assert loaded.macro == {"channels": "32", "stages": "6", "recursions": "5", "frames": "1"}
        assert count_parameters(build_model(loaded)) == PAPER_PARAMETERS
    spec = find_space("prn")
    assert spec.to_genotype({}, spec.config("paper"), {}).macro == genotype.macro


def test_stages_are_bounded():
    """The rest of the bad-genotype checks are shared with rescnn (tests/test_space_rescnn.py)."""
    bad = prn_genotype("cpu").copy()
    bad.space_config["stages"] = 10_000
    with pytest.raises(GenotypeError, match="stages must be between 1 and 32"):
        find_space("prn").validate_genotype(bad)


def test_two_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = build_model(load_genotype("space:prn:cpu"))
    clean = torch.rand(2, 3, 24, 24)
    rainy = (clean + 0.3 * (torch.rand_like(clean) > 0.9)).clamp(0, 1).unsqueeze(1)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        return torch.nn.functional.l1_loss(net(rainy), clean)

    before = loss().item()
    for _ in range(2):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    assert loss().item() < before
