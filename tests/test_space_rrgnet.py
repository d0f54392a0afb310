"""The rrgnet space: frame groups, fusion, U-Net depth/op/width choices; freezing, DARTS, genotypes."""

import numpy as np
import pytest
import torch

from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.genotype import GenotypeError
from nas_restore.nni_layer import darts_supernet, frozen_model, labelled_alphas, random_architecture
from search_spaces import find_space
from search_spaces.rrgnet import RRGNet, make_space, to_nni_arch

TINY = {"channels": 4, "frames": 5, "strides": [1, 2], "depths": [1, 2], "expansions": [1, 2],
        "operations": ["DilConv_3_2", "ECAattention_3"]}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def genotype_of(arch_overrides: dict | None = None, seed: int = 0, **settings):
    spec = find_space("rrgnet")
    config = spec.config(**{**TINY, **settings})
    arch = random_architecture(make_space(config), seed=seed)
    arch.update(arch_overrides or {})
    return spec, config, arch, spec.to_genotype(arch, config, {})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sample_freezes_runs_and_matches_the_plain_network(seed):
    spec = find_space("rrgnet")
    config = spec.config(**TINY)
    arch: dict = {}
    frozen = make_space(config).random(memo=arch, random_state=np.random.RandomState(seed))  # NNI's own freeze
    genotype = spec.to_genotype(arch, config, {})
    net = spec.make_network(genotype)
    assert isinstance(net, RRGNet) and not any("nni" in type(m).__module__ for m in net.modules())
    x = torch.rand(2, 5, 3, 18, 14)  # odd sizes: padded to the U-Net's multiple and cropped back
    assert frozen(x).shape == net(x).shape == (2, 3, 18, 14)
    assert n_params(net) == n_params(frozen)


@pytest.mark.parametrize("depth", ["1", "2"])
@pytest.mark.parametrize("fusion", ["sum", "concat", "attention"])
def test_every_depth_and_fusion_freezes_to_the_plain_network(depth, fusion):
    spec, config, arch, genotype = genotype_of({"depth": depth, "fusion": fusion, "grouping": "1+2"})
    assert genotype.macro["depth"] == depth and genotype.fusion == {"type": fusion}
    assert sorted(k for k in genotype.macro if k.startswith("level")) == sorted(
        f"level{i}/{c}" for i in range(int(depth)) for c in ("op", "width"))
    frozen = frozen_model(type(make_space(config)), to_nni_arch(genotype), config.to_dict())
    net = spec.make_network(genotype)
    assert n_params(net) == n_params(frozen)
    # same modules, same names: the frozen space's weights load into the plain network
    net.load_state_dict(frozen.state_dict())
    x = torch.rand(1, 5, 3, 16, 16)
    assert torch.allclose(net(x), frozen(x), atol=1e-6)


def test_width_choice_expands_the_block():
    _, _, _, narrow = genotype_of({"depth": "1", "level0/width": "4"})
    _, _, _, wide = genotype_of({"depth": "1", "level0/width": "8"})
    assert n_params(build_model(wide)) > n_params(build_model(narrow))


def test_grouping_reads_only_the_frames_of_its_strides():
    torch.manual_seed(0)
    _, _, _, genotype = genotype_of({"grouping": "1"})  # groups {t-1, t, t+1} of 5 frames: frames 1, 2, 3
    net = build_model(genotype).eval()
    x = torch.rand(1, 5, 3, 16, 16)
    y = x.clone()
    y[:, 0] = torch.rand(3, 16, 16)   # frames t-2 and t+2 are in no group
    y[:, 4] = 0
    assert torch.equal(net(x), net(y))
    y[:, 1] = 0                       # t-1 is
    assert not torch.equal(net(x), net(y))


def test_darts_supernet_gradients_reach_every_architecture_weight():
    torch.manual_seed(0)
    supernet = darts_supernet(make_space(find_space("rrgnet").config(**TINY)))
    alphas = labelled_alphas(supernet)
    assert {label for label, *_ in alphas} == {"grouping", "fusion", "depth", "level0/op", "level0/width",
                                               "level1/op", "level1/width"}
    x, target = torch.rand(2, 5, 3, 16, 16), torch.rand(2, 3, 16, 16)
    (supernet(x) - target).abs().mean().backward()
    for label, alpha, names in alphas:
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, label
        assert len(names) == alpha.numel()


def test_genotype_round_trips_through_json_and_nni(tmp_path):
    spec, config, arch, genotype = genotype_of({"depth": "2"}, seed=4)
    assert to_nni_arch(genotype) == arch and genotype.cells == {}
    loaded = load_genotype(genotype.save(tmp_path / "genotype.json"))
    assert loaded.macro == genotype.macro and loaded.genotype_id() == genotype.genotype_id()
    assert build_model(loaded)(torch.rand(1, 5, 3, 16, 16)).shape == (1, 3, 16, 16)
    # a depth-1 genotype leaves the unused level out; to_nni_arch fills it for NNI
    _, _, _, shallow = genotype_of({"depth": "1"})
    assert "level1/op" not in shallow.macro and "level1/op" in to_nni_arch(shallow)


def test_bad_values_give_clear_errors():
    spec, config, arch, genotype = genotype_of({"depth": "1"})
    bad = genotype.copy()
    bad.macro["fusion"] = "max"
    with pytest.raises(GenotypeError, match=r"macro\.fusion is 'max'; allowed values: sum, concat, attention"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.macro["level0/op"] = "SepConv_3"
    with pytest.raises(GenotypeError, match=r"macro\.level0/op is 'SepConv_3'; allowed values: DilConv_3_2"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.macro["level1/op"] = "DilConv_3_2"
    with pytest.raises(GenotypeError, match=r"keys \['level1/op'\] that an rrgnet of depth 1 does not use"):
        spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.macro["depth"] = "4"
    with pytest.raises(GenotypeError, match=r"macro\.depth is '4'; allowed values: 1, 2"):
        spec.validate_genotype(bad)
    with pytest.raises(ValueError, match="frames must be odd and >= 3"):
        spec.config(frames=4)
    with pytest.raises(ValueError, match=r"strides must be .* in 1\.\.1 .*needs frames t-s and t\+s"):
        spec.config(frames=3, strides=[1, 2])
    with pytest.raises(ValueError, match="fusions .*'max'.* allowed: sum, concat, attention"):
        spec.config(fusions=["max"])
    with pytest.raises(GenotypeError, match="does not know"):
        spec.to_genotype({**arch, "alignment": "ofm"}, config, {})
    with pytest.raises(ValueError, match=r"rrgnet reads clips \[B, T, 3, H, W\]"):
        build_model(genotype)(torch.rand(1, 3, 16, 16))


def test_a_genotype_renders(tmp_path):
    from nas_restore.render import render_genotype

    _, _, _, genotype = genotype_of(seed=3)
    result = render_genotype(genotype, tmp_path, formats=("svg",), overview=False)
    assert (tmp_path / "network.gv").exists()
    assert "grouping" in (tmp_path / "network.gv").read_text()
    assert result.paths


def test_tiny_darts_search_returns_a_valid_genotype(tmp_path):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search

    settings = {**TINY, "frames": 3, "strides": [1]}
    config = SearchConfig(space="rrgnet", preset="demo", space_settings=settings, epochs=2, batch_size=2,
                          strategy_options={"arc_learning_rate": 3e-2},
                          data=DataConfig(patch_size=16, train_items=2, val_items=2), device="cpu", progress=False)
    result = run_search(config, tmp_path / "run")
    genotype = load_genotype(result.genotype_path)
    assert genotype.space == "rrgnet" and genotype.metadata["strategy"] == "darts"
    assert set(genotype.macro) >= {"grouping", "fusion", "depth", "level0/op", "level0/width"}
    assert build_model(genotype)(torch.rand(1, 3, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_tiny_evolution_search_trains_sampled_networks(tmp_path):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search

    settings = {**TINY, "frames": 3, "strides": [1], "depths": [1]}
    config = SearchConfig(space="rrgnet", preset="demo", space_settings=settings, strategy="evolution",
                          max_trials=2, trial_epochs=1, batch_size=2,
                          data=DataConfig(patch_size=16, train_items=2, val_items=2), device="cpu", progress=False)
    genotype = load_genotype(run_search(config, tmp_path / "run").genotype_path)
    assert genotype.metadata["trials_run"] == 2 and genotype.metadata["trials_failed"] == 0
    assert genotype.macro["level0/op"] in TINY["operations"]


@pytest.mark.parametrize("space", ["rrgnet", "rdmc"])
def test_an_architecture_missing_a_choice_is_refused_not_filled_in(space):
    """A partial NNI architecture must not silently become the first candidate of every missing choice."""
    from nas_restore.genotype import GenotypeError
    from nas_restore.nni_layer import random_architecture
    from search_spaces import find_space

    spec = find_space(space)
    config = spec.config("cpu")
    arch = random_architecture(spec.make_space(config), seed=1)
    spec.to_genotype(arch, config, {})  # the whole architecture is fine
    dropped = next(k for k in arch if k in ("fusion", "recursions"))
    with pytest.raises(GenotypeError, match=rf"no value for the {space} choice\(s\) \['{dropped}'\]"):
        spec.to_genotype({k: v for k, v in arch.items() if k != dropped}, config, {})
