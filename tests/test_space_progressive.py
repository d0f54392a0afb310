"""The progressive space: PRN_r's weight-shared stages and recursions as choices, and PRN_r as a member."""

import numpy as np
import pytest
import torch

from nas_restore.build import build_model
from nas_restore.genotype import GenotypeError
from nas_restore.nni_layer import darts_supernet, frozen_model, labelled_alphas, random_architecture
from nas_restore.precision import to_channels_last
from nas_restore.profiling import count_parameters
from nas_restore.sources import load_genotype
from search_spaces import find_space
from search_spaces.prn import PAPER_PARAMETERS, PRN, PRNConfig
from search_spaces.progressive import (ConvLSTM, ProgressiveNet, make_space, prn_genotype, to_nni_arch,
                                       unit_cell)
from search_spaces.reference import reference_names

SPACE = "progressive"
TINY = {"channels": 4, "stages": [1, 2, 3], "recursions": [1, 2],
        "operations": ["PlainResblock_3", "DilConv_3_2", "ECAattention_3", "skip_connect"]}
# the state_dict names of search_spaces.prn.PRN -> those of the progressive network's PRN_r member
PRN_NAMES = {"f_in.0": "stage.f_in.0", "block.0": "stage.unit.ops.0.body.0", "block.2": "stage.unit.ops.0.body.2",
             "f_out": "stage.f_out"}


def genotype_of(arch_overrides: dict | None = None, seed: int = 0, **settings):
    spec = find_space(SPACE)
    config = spec.config(**{**TINY, **settings})
    arch = random_architecture(make_space(config), seed=seed)
    arch.update(arch_overrides or {})
    return spec, config, arch, spec.to_genotype(arch, config, {})


def prn_weights(prn: PRN) -> dict:
    out = {}
    for name, value in prn.state_dict().items():
        module, _, kind = name.rpartition(".")
        out[f"{PRN_NAMES[module]}.{kind}"] = value
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_members_freeze_and_match_the_plain_network(seed):
    spec = find_space(SPACE)
    config = spec.config(**TINY)
    arch: dict = {}
    frozen = make_space(config).random(memo=arch, random_state=np.random.RandomState(seed))  # NNI's own freeze
    genotype = spec.to_genotype(arch, config, {})
    assert set(arch) == {"stages", "recursions", "recurrent", "unit/chain_0", "unit/chain_1"}
    net = spec.make_network(genotype)
    assert isinstance(net, ProgressiveNet) and not any("nni" in type(m).__module__ for m in net.modules())
    assert count_parameters(net) == count_parameters(frozen)
    net.load_state_dict(frozen.state_dict())  # the same names: one stage's weights, the passes hold none
    x = torch.rand(2, 1, 3, 14, 18)
    with torch.no_grad():
        assert torch.allclose(net(x), frozen(x), atol=1e-6)
        assert net(x[:, 0]).shape == (2, 3, 14, 18)


def test_stages_and_recursions_change_the_compute_not_the_parameters():
    counts, calls = [], []
    for stages, recursions in (("1", "1"), ("3", "2")):
        _, _, _, genotype = genotype_of({"stages": stages, "recursions": recursions, "recurrent": "none",
                                         "unit/chain_0": "PlainResblock_3", "unit/chain_1": "DilConv_3_2"})
        net = build_model(genotype)
        counts.append(count_parameters(net))
        seen = {"f_in": 0, "unit": 0}
        net.stage.f_in.register_forward_hook(lambda *_: seen.__setitem__("f_in", seen["f_in"] + 1))
        net.stage.unit.register_forward_hook(lambda *_: seen.__setitem__("unit", seen["unit"] + 1))
        net(torch.rand(1, 3, 8, 8))
        calls.append(seen)
    assert counts[0] == counts[1]
    assert calls == [{"f_in": 1, "unit": 1}, {"f_in": 3, "unit": 6}]  # the same modules, stages x recursions


def test_the_prn_r_member_is_prn_weight_for_weight():
    genotype = load_genotype("progressive-prn")
    assert genotype.macro == {"stages": "6", "recursions": "5", "recurrent": "none"}
    assert [e.op for node in genotype.cells["unit"].nodes for e in node] == ["PlainResblock_3", "skip_connect"]
    net, prn = build_model(genotype), PRN(PRNConfig())  # both at the paper size, 32 channels
    assert count_parameters(net) == count_parameters(prn) == PAPER_PARAMETERS == 21_123
    net.load_state_dict(prn_weights(prn))
    x = torch.rand(2, 1, 3, 20, 24)
    with torch.no_grad():
        assert torch.allclose(net(x), prn(x), atol=1e-6)
    # the same at another width and depth inside the space (demo preset: 24 channels)
    small = prn_genotype("demo")
    small_prn = PRN(PRNConfig(channels=24))
    small_net = build_model(small)
    small_net.load_state_dict(prn_weights(small_prn))
    with torch.no_grad():
        assert torch.allclose(small_net(x), small_prn(x), atol=1e-6)


def test_the_prenet_r_member_has_the_published_size_and_carries_its_state_between_stages():
    genotype = load_genotype("progressive-prenet-r")
    assert genotype.macro["recurrent"] == "convlstm"
    net = build_model(genotype)
    assert count_parameters(net) == 94_979  # PReNet_r: 94.98k in the paper; + 4 gate convs 64 -> 32 over PRN_r
    assert count_parameters(net) - PAPER_PARAMETERS == 4 * (64 * 32 * 9 + 32)
    assert isinstance(net.stage.recurrent, ConvLSTM)
    memories = []
    net.stage.recurrent.register_forward_pre_hook(lambda module, args: memories.append(args[0][:, 32:].clone()))
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
    assert len(memories) == 6
    assert torch.count_nonzero(memories[0]) == 0  # h = c = 0 at the first stage
    assert all(torch.count_nonzero(m) > 0 for m in memories[1:])  # then the previous stage's state


def test_references_and_space_listing():
    assert {"progressive-prn", "progressive-prenet-r"} <= set(reference_names())
    assert load_genotype("progressive-prn").genotype_id() == prn_genotype("paper").genotype_id()
    spec = find_space(SPACE)
    assert spec.config("paper").channels == 32 and spec.config("demo").channels == 24
    assert spec.config("cpu").channels == 16
    with pytest.raises(GenotypeError, match="needs 6 stages.*allows \\[2, 3, 4\\]: use the demo or paper preset"):
        prn_genotype("cpu")


def test_genotype_round_trips_through_json_and_nni(tmp_path):
    spec, config, arch, genotype = genotype_of(seed=5)
    assert to_nni_arch(genotype) == arch
    assert isinstance(arch["stages"], int) and isinstance(arch["recursions"], int)
    assert all(isinstance(v, str) for v in genotype.macro.values())
    loaded = load_genotype(genotype.save(tmp_path / "genotype.json"))
    assert loaded.genotype_id() == genotype.genotype_id() and to_nni_arch(loaded) == arch
    assert build_model(loaded)(torch.rand(1, 1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_single_candidates_are_fixed_not_searched():
    spec = find_space(SPACE)
    config = spec.config(**{**TINY, "stages": [2], "recursions": [3], "recurrent": ["convlstm"],
                            "operations": ["PlainResblock_3"], "unit_ops": 1})
    assert random_architecture(make_space(config)) == {}
    genotype = spec.to_genotype({}, config, {})
    assert genotype.macro == {"stages": "2", "recursions": "3", "recurrent": "convlstm"}
    assert to_nni_arch(genotype) == {}
    frozen = frozen_model(type(make_space(config)), {}, config.to_dict())
    assert count_parameters(frozen) == count_parameters(build_model(genotype))


def test_bad_genotypes_and_settings_are_refused_clearly():
    spec, config, arch, genotype = genotype_of()
    bad = genotype.copy()
    bad.cells["unit"] = unit_cell(["Residualblocks_3_1", "skip_connect"])  # registered, but not a candidate here
    with pytest.raises(GenotypeError, match=r"cells\.unit\.nodes\[0\]\[0\]\.op: unknown operation "
                                            r"'Residualblocks_3_1'; allowed: "):
        spec.validate_genotype(bad)
    bad.cells["unit"] = unit_cell(["PlainResblok_3", "skip_connect"])
    with pytest.raises(GenotypeError, match="did you mean 'PlainResblock_3'"):
        spec.validate_genotype(bad)
    for key, value, allowed in (("stages", "7", "1, 2, 3"), ("recursions", "0", "1, 2"),
                                ("recurrent", "gru", "none, convlstm")):
        bad = genotype.copy()
        bad.macro[key] = value
        with pytest.raises(GenotypeError, match=rf"macro\.{key} is '{value}'; allowed values: {allowed}"):
            spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.macro["width"] = "8"
    with pytest.raises(GenotypeError, match=r"macro has keys \['width'\] that the progressive space does not have"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.cells["unit"].nodes[1][0] = type(bad.cells["unit"].nodes[1][0])("skip_connect", 0)  # a branch, not a chain
    with pytest.raises(GenotypeError, match=r"cells\.unit must be the unit's 2 op\(s\) in sequence"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.cells = {"dna": bad.cells["unit"]}
    with pytest.raises(GenotypeError, match="exactly one cell, 'unit'"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.space_config["stages"] = [2, 100]
    with pytest.raises(GenotypeError, match=r"space_config: .*stages must be a non-empty list of integers in 1\.\.32"):
        spec.validate_genotype(bad)
    with pytest.raises(GenotypeError, match=r"keys the progressive space does not know: \['alignment'\]"):
        spec.to_genotype({**arch, "alignment": "ofm"}, config, {})
    with pytest.raises(GenotypeError, match=r"answers no value for the progressive choice\(s\) \['stages'\]"):
        spec.to_genotype({k: v for k, v in arch.items() if k != "stages"}, config, {})
    with pytest.raises(ValueError, match="recurrent .* allowed: none, convlstm"):
        spec.config(recurrent=["gru"])
    with pytest.raises(ValueError, match="operations has unknown"):
        spec.config(operations=["none"])
    with pytest.raises(ValueError, match="frames must be odd"):
        spec.config(frames=2)
    with pytest.raises(ValueError, match="built for 1 frame"):
        build_model(genotype)(torch.rand(1, 3, 3, 8, 8))


def test_darts_supernet_gradients_reach_every_architecture_weight():
    supernet = darts_supernet(make_space(find_space(SPACE).config(**TINY)))
    alphas = labelled_alphas(supernet)
    assert {label for label, *_ in alphas} == {"stages", "recursions", "recurrent", "unit/chain_0", "unit/chain_1"}
    x, target = torch.rand(2, 1, 3, 12, 12), torch.rand(2, 3, 12, 12)
    (supernet(x) - target).abs().mean().backward()
    for label, alpha, names in alphas:
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, label
        assert len(names) == alpha.numel()
    depths = dict((label, names) for label, _, names in alphas)
    assert depths["stages"] == ["1", "2", "3"] and depths["recursions"] == ["1", "2"]


def test_bf16_channels_last_matches_fp32_and_nchw():
    """A member with a dilated op and the ConvLSTM: bf16 under autocast with channels_last weights (what
    bf16 training runs) gives the fp32 output up to rounding, and the NCHW bf16 gradients."""
    _, _, _, genotype = genotype_of({"stages": "2", "recursions": "2", "recurrent": "convlstm",
                                     "unit/chain_0": "DilConv_3_2", "unit/chain_1": "PlainResblock_3"},
                                    channels=8)
    x = torch.rand(2, 3, 32, 32)
    net = build_model(genotype)
    reference = net(x).detach()
    grads = []
    for channels_last in (False, True):
        net.zero_grad()
        if channels_last:
            to_channels_last(net)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        assert torch.isfinite(out).all() and (out.float() - reference).abs().max() < 0.05
        (out.float() ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for key, nchw in grads[0].items():
        scale = nchw.abs().max()
        assert torch.isfinite(grads[1][key]).all(), key
        if scale > 1e-6:
            assert (grads[1][key] - nchw).abs().max() <= 0.05 * scale, key


def test_a_genotype_renders_and_inspects(tmp_path):
    from nas_restore.analysis import inspect_genotype
    from nas_restore.render import render_genotype

    genotype = load_genotype("progressive-prn")
    render_genotype(genotype, tmp_path, formats=("svg",), overview=False)
    network = (tmp_path / "network.gv").read_text()
    assert "unit x 5" in network and "6 weight-shared stages" in network
    assert "PlainResblock_3" in (tmp_path / "cell_unit.gv").read_text()
    report = inspect_genotype(genotype)
    assert report.total_params == PAPER_PARAMETERS and report.cell_op_params == 18_496  # the unit counted once


def _search(tmp_path, strategy: str, **overrides):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search

    config = SearchConfig(space=SPACE, preset="cpu", space_settings={**TINY, "stages": [1, 2]}, strategy=strategy,
                          batch_size=2, data=DataConfig(patch_size=16, train_items=2, val_items=2), device="cpu",
                          progress=False, **overrides)
    genotype = load_genotype(run_search(config, tmp_path / "run").genotype_path)
    assert genotype.space == SPACE and genotype.metadata["strategy"] == strategy
    assert genotype.macro["stages"] in ("1", "2") and genotype.macro["recursions"] in ("1", "2")
    assert build_model(genotype)(torch.rand(1, 1, 3, 16, 16)).shape == (1, 3, 16, 16)
    return genotype


def test_tiny_darts_search_returns_a_valid_genotype(tmp_path):
    genotype = _search(tmp_path, "darts", epochs=2, strategy_options={"arc_learning_rate": 3e-2})
    assert genotype.metadata["epochs"] == 2 and "decision" in genotype.metadata
    assert set(genotype.metadata["nni_arch"]) == {"stages", "recursions", "recurrent", "unit/chain_0",
                                                  "unit/chain_1"}


def test_tiny_random_search_trains_two_sampled_networks(tmp_path):
    genotype = _search(tmp_path, "random", max_trials=2, trial_epochs=1)
    assert genotype.metadata["trials_run"] == 2 and genotype.metadata["trials_failed"] == 0


@pytest.mark.parametrize("strategy,options", [("gdas", {"hard": True}), ("pcdarts", {}), ("spos", {}),
                                              ("darts2", {})])
def test_other_one_shot_strategies_search_the_space(tmp_path, strategy, options):
    _search(tmp_path, strategy, epochs=1, strategy_options=options)
