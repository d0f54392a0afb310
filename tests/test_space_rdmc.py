"""The rdmc space: shared recursions, multi-scale encoders, upsampling and recruitment choices."""

import numpy as np
import pytest
import torch

from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.genotype import GenotypeError
from nas_restore.nni_layer import darts_supernet, frozen_model, labelled_alphas, random_architecture
from search_spaces import find_space
from search_spaces.rdmc import RDMCNet, make_space, to_nni_arch

TINY = {"channels": 4, "levels": 3, "recursions": [1, 2, 3], "upsamplings": ["bilinear", "pixelshuffle", "transposed"]}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def genotype_of(arch_overrides: dict | None = None, seed: int = 0, **settings):
    spec = find_space("rdmc")
    config = spec.config(**{**TINY, **settings})
    arch = random_architecture(make_space(config), seed=seed)
    arch.update(arch_overrides or {})
    return spec, config, arch, spec.to_genotype(arch, config, {})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sample_freezes_runs_on_images_and_matches_the_plain_network(seed):
    spec = find_space("rdmc")
    config = spec.config(**TINY)
    arch: dict = {}
    frozen = make_space(config).random(memo=arch, random_state=np.random.RandomState(seed))  # NNI's own freeze
    genotype = spec.to_genotype(arch, config, {})
    net = spec.make_network(genotype)
    assert isinstance(net, RDMCNet) and not any("nni" in type(m).__module__ for m in net.modules())
    x = torch.rand(2, 1, 3, 18, 14)  # the image mode's [B, 1, 3, H, W]; odd sizes are padded and cropped
    assert frozen(x).shape == net(x).shape == (2, 3, 18, 14)
    assert net(x[:, 0]).shape == (2, 3, 18, 14)
    assert n_params(net) == n_params(frozen)


@pytest.mark.parametrize("upsample", ["bilinear", "pixelshuffle", "transposed"])
def test_each_upsampling_and_recruitment_freezes_to_the_plain_network(upsample):
    spec, config, arch, genotype = genotype_of({"dec0/upsample": upsample, "dec1/upsample": upsample,
                                                "dec0/recruit": "enc1", "dec1/recruit": "enc2",
                                                "recursions": 2})
    frozen = frozen_model(type(make_space(config)), to_nni_arch(genotype), config.to_dict())
    net = spec.make_network(genotype)
    assert n_params(net) == n_params(frozen)
    net.load_state_dict(frozen.state_dict())  # same names: the shared body once, the passes hold no weights
    x = torch.rand(1, 1, 3, 16, 16)
    assert torch.allclose(net(x), frozen(x), atol=1e-6)


def test_recursions_share_the_body_and_rejoin_the_rainy_input():
    weights = []
    for r in ("1", "3"):
        _, _, _, genotype = genotype_of({"recursions": r})
        net = build_model(genotype)
        weights.append(n_params(net))
        seen = []
        net.body.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        x = torch.rand(1, 3, 16, 16)
        net(x)
        assert len(seen) == int(r)
        for k, joined in enumerate(seen):          # every pass reads [rainy, estimate]
            assert joined.shape[1] == 6 and torch.equal(joined[:, :3], x)
            if k == 0:
                assert torch.equal(joined[:, 3:], x)  # the first estimate is the rainy input itself
    assert weights[0] == weights[1]


def test_recruitment_adds_the_adapter_weights_only_when_chosen():
    _, _, _, none = genotype_of({"dec0/recruit": "none", "dec1/recruit": "none"})
    _, _, _, finer = genotype_of({"dec0/recruit": "none", "dec1/recruit": "enc0"})
    _, _, _, coarser = genotype_of({"dec0/recruit": "none", "dec1/recruit": "enc2"})
    base = n_params(build_model(none))
    assert n_params(build_model(finer)) == base + (9 * 4 * 8 + 8)    # stride-2 3x3 conv, 4 -> 8 channels
    assert n_params(build_model(coarser)) == base + (16 * 8 + 8)     # 1x1 conv, 16 -> 8 channels


def test_darts_supernet_gradients_reach_every_architecture_weight():
    torch.manual_seed(0)
    supernet = darts_supernet(make_space(find_space("rdmc").config(**TINY)))
    alphas = labelled_alphas(supernet)
    assert {label for label, *_ in alphas} == {"recursions", "dec0/upsample", "dec0/recruit", "dec1/upsample",
                                               "dec1/recruit"}
    x, target = torch.rand(2, 1, 3, 16, 16), torch.rand(2, 3, 16, 16)
    (supernet(x) - target).abs().mean().backward()
    for label, alpha, names in alphas:
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, label
        assert len(names) == alpha.numel()


def test_genotype_round_trips_through_json_and_nni(tmp_path):
    spec, config, arch, genotype = genotype_of(seed=5)
    assert to_nni_arch(genotype) == arch and isinstance(arch["recursions"], int)
    assert genotype.cells == {} and all(isinstance(v, str) for v in genotype.macro.values())
    loaded = load_genotype(genotype.save(tmp_path / "genotype.json"))
    assert loaded.macro == genotype.macro and loaded.genotype_id() == genotype.genotype_id()
    assert build_model(loaded)(torch.rand(1, 1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_single_choices_are_fixed_not_searched():
    spec = find_space("rdmc")
    config = spec.config(**{**TINY, "recursions": [2], "upsamplings": ["transposed"], "recruit_range": 0})
    assert random_architecture(make_space(config)) == {}
    genotype = spec.to_genotype({}, config, {})
    assert genotype.macro == {"recursions": "2", "dec0/upsample": "transposed", "dec0/recruit": "none",
                              "dec1/upsample": "transposed", "dec1/recruit": "none"}


def test_bad_values_give_clear_errors():
    spec, config, arch, genotype = genotype_of()
    for key, value, allowed in (("recursions", "9", "1, 2, 3"),
                                ("dec0/upsample", "nearest", "bilinear, pixelshuffle, transposed"),
                                ("dec0/recruit", "enc2", "none, enc1")):
        bad = genotype.copy()
        bad.macro[key] = value
        with pytest.raises(GenotypeError, match=rf"macro\.{key} is '{value}'; allowed values: {allowed}"):
            spec.validate_genotype(bad)
    bad = genotype.copy()
    bad.macro["dec2/upsample"] = "bilinear"
    with pytest.raises(GenotypeError, match=r"keys \['dec2/upsample'\] that this rdmc space \(3 levels\)"):
        spec.validate_genotype(bad)
    with pytest.raises(ValueError, match="frames must be 1: rdmc derains single images"):
        spec.config(frames=3)
    with pytest.raises(ValueError, match="upsamplings .* allowed: bilinear, bicubic, pixelshuffle, transposed"):
        spec.config(upsamplings=["nearest"])
    with pytest.raises(ValueError, match="recruit_range must be in 0..2"):
        spec.config(recruit_range=3)
    with pytest.raises(ValueError, match="got a clip of 3 frames"):
        build_model(genotype)(torch.rand(1, 3, 3, 16, 16))


def test_a_genotype_renders(tmp_path):
    from nas_restore.render import render_genotype

    _, _, _, genotype = genotype_of(seed=3)
    render_genotype(genotype, tmp_path, formats=("svg",), overview=False)
    assert "recursions" in (tmp_path / "network.gv").read_text()


def test_tiny_darts_search_returns_a_valid_genotype(tmp_path):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search

    settings = {**TINY, "levels": 2, "recursions": [1, 2], "upsamplings": ["bilinear", "transposed"]}
    config = SearchConfig(space="rdmc", preset="demo", space_settings=settings, epochs=2, batch_size=2,
                          strategy_options={"arc_learning_rate": 3e-2},
                          data=DataConfig(patch_size=16, train_items=2, val_items=2), device="cpu", progress=False)
    result = run_search(config, tmp_path / "run")
    genotype = load_genotype(result.genotype_path)
    assert genotype.space == "rdmc" and genotype.metadata["strategy"] == "darts"
    assert set(genotype.macro) == {"recursions", "dec0/upsample", "dec0/recruit"}
    assert genotype.macro["recursions"] in ("1", "2")
    assert build_model(genotype)(torch.rand(1, 1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_tiny_evolution_search_trains_sampled_networks(tmp_path):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search

    settings = {**TINY, "levels": 2, "recursions": [1, 2], "upsamplings": ["bilinear", "transposed"]}
    config = SearchConfig(space="rdmc", preset="demo", space_settings=settings, strategy="evolution",
                          max_trials=2, trial_epochs=1, batch_size=2,
                          data=DataConfig(patch_size=16, train_items=2, val_items=2), device="cpu", progress=False)
    genotype = load_genotype(run_search(config, tmp_path / "run").genotype_path)
    assert genotype.metadata["trials_run"] == 2 and genotype.metadata["trials_failed"] == 0
    assert genotype.macro["recursions"] in ("1", "2")
