"""The TMICS space: macro choices, image and video modes, freezing, and the plain network twin."""

import numpy as np
import pytest
import torch

from search_spaces import find_space
from search_spaces.tmics import (TMICSNet, TemporalGroupAlignment, flow_warp, streak_kernels,
                                 temporal_groups)


def sample_space(seed: int, **settings):
    spec = find_space("tmics")
    config = spec.config("demo", **settings)
    space = spec.make_space(config)
    arch: dict = {}
    frozen = space.random(memo=arch, random_state=np.random.RandomState(seed))
    return spec, config, arch, frozen


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_random_sample_freezes_runs_and_matches_the_plain_network(frames):
    spec, config, arch, frozen = sample_space(frames, frames=frames)
    x = torch.rand(2, frames, 3, 24, 24)
    assert frozen(x).shape == (2, 3, 24, 24)
    genotype = spec.to_genotype(arch, config, {})
    net = spec.make_network(genotype)
    assert isinstance(net, TMICSNet) and not any("nni" in type(m).__module__ for m in net.modules())
    assert net(x).shape == (2, 3, 24, 24)
    # the same architecture: same number of weights in NNI's frozen model and in our twin
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in frozen.parameters())
    assert genotype.macro["alignment"] == ("none" if frames == 1 else arch["alignment"])


@pytest.mark.parametrize("alignment", ["ofm", "tgm"])
def test_each_alignment_builds_and_passes_gradients(alignment):
    spec, config, arch, _ = sample_space(0)
    arch["alignment"] = alignment
    net = spec.make_network(spec.to_genotype(arch, config, {}))
    x = torch.rand(1, 3, 3, 16, 16, requires_grad=True)
    net(x).mean().backward()
    assert x.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in net.named_parameters() if n.startswith("alignment")}
    assert grads and all(g is not None for g in grads.values())
    # the flow heads start at zero (identity warp), so judge the encoders: they must learn
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "flow" not in n)


def test_single_image_input_is_accepted():
    spec, config, arch, _ = sample_space(0, frames=1)
    net = spec.make_network(spec.to_genotype(arch, config, {}))
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


def test_temporal_groups_follow_tmics():
    assert temporal_groups(5) == [(1, 2, 3), (0, 2, 4)]
    assert temporal_groups(3) == [(0, 1, 2)]
    assert len(TemporalGroupAlignment(5, 8).encoders) == 2


def test_backward_warp_undoes_a_known_shift():
    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 40, 40), 5, 1, 2)
    shifted = torch.roll(image, shifts=3, dims=-1)  # content moved 3 px right
    flow = torch.zeros(1, 2, 40, 40)
    flow[:, 0] = 3.0                                  # look 3 px to the right
    restored = flow_warp(shifted, flow)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -8))
    assert torch.allclose(restored[inner], image[inner], atol=1e-5)


def test_rain_kernels_start_as_oriented_streaks():
    k = streak_kernels(3, 5, 9)
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.ones(3))
    vertical = k[0, 2]   # the middle kernel is the vertical line
    assert vertical[:, 4].sum() > 0.9 * vertical.sum()


def test_config_typo_names_the_field():
    with pytest.raises(ValueError, match=r"space\.chanels \(did you mean space\.channels\?\)"):
        find_space("tmics").config(chanels=8)
    with pytest.raises(ValueError, match="frames must be odd"):
        find_space("tmics").config(frames=4)
    with pytest.raises(KeyError, match="unknown search space 'tmic'.*Did you mean tmics"):
        find_space("tmic")
