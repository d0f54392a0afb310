"""The TMICS space: macro choices, image and video modes, freezing, and the plain network twin."""

import numpy as np
import pytest
import torch

from search_spaces import find_space
from nas_restore.flow import flow_warp
from search_spaces.tmics import TMICSNet, TemporalGroupAlignment, streak_kernels, temporal_groups


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


# --------------------------------------------------------------------------------------------------
# classical flow, chain cells, DARTS gradients (the TMICS-space issue)

from nas_restore.genotype import GenotypeError  # noqa: E402
from nas_restore.nni_layer import darts_supernet, frozen_model, labelled_alphas, random_architecture  # noqa: E402
from nas_restore.flow import ClassicalFlow, FlowCache  # noqa: E402
from search_spaces.tmics import CompactFlow, OpticalFlowAlignment, chain_cell, to_nni_arch  # noqa: E402

TINY = {"channels": 6, "frames": 3, "cells_per_branch": 2, "nodes_per_cell": 2,
        "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}


def smooth_image(size: int = 48) -> torch.Tensor:
    """A textured but smooth RGB image [3, H, W]: what Lucas-Kanade can track."""
    from skimage import data, transform

    photo = transform.resize(data.astronaut()[100:300, 150:350], (size, size), anti_aliasing=True)
    return torch.from_numpy(photo.transpose(2, 0, 1).astype(np.float32))


def test_classical_flow_warps_a_shifted_frame_back():
    centre = smooth_image()
    # neighbours: the content moved by (dx, dy) = (2, 1) and (-1, 2) pixels
    shifts = [(2, 1), (-1, 2)]
    moved = [torch.roll(centre, shifts=(dy, dx), dims=(1, 2)) for dx, dy in shifts]
    clip = torch.stack([moved[0], centre, moved[1]]).unsqueeze(0)           # [1, 3, 3, H, W]
    flows = ClassicalFlow(FlowCache())(clip)
    assert flows.shape == (1, 3, 2, 48, 48) and flows[0, 1].abs().max() == 0  # zero at the centre
    inner = (slice(None), slice(8, -8), slice(8, -8))
    for t, (dx, dy) in zip((0, 2), shifts):
        flow = flows[0, t]
        assert abs(float(flow[0][inner[1:]].median()) - dx) < 0.1 and abs(float(flow[1][inner[1:]].median()) - dy) < 0.1
        warped = flow_warp(clip[:, t], flows[:, t])[0]
        before = (clip[0, t] - centre)[inner].abs().mean()
        after = (warped - centre)[inner].abs().mean()
        assert after < 0.01 and after < before / 5, (float(before), float(after))


def test_classical_flow_is_cached_per_window_and_bounded_in_bytes():
    cache = FlowCache()
    flow = ClassicalFlow(cache)
    clip = torch.rand(2, 3, 3, 16, 16)
    first = flow(clip)
    assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)
    again = flow(clip.flip(0))                       # same windows, other batch order: no recomputation
    assert (cache.misses, cache.hits) == (2, 2) and torch.equal(again, first.flip(0))
    flow(clip + 0.01)                                # new pixels, new key
    assert cache.misses == 4
    small = FlowCache(max_bytes=3 * 2 * 16 * 16 * 4 * 2)  # room for two windows' flows
    for k in range(3):
        ClassicalFlow(small)(torch.rand(1, 3, 3, 16, 16))
    assert len(small) == 2 and small.bytes <= small.max_bytes


@pytest.mark.parametrize("flow", ["learned", "classical"])
def test_ofm_flow_option_in_space_and_network(flow):
    spec, config, arch, frozen = sample_space(3, **TINY, flow=flow, alignments=["ofm"])
    net = spec.make_network(spec.to_genotype(arch, config, {}))
    assert isinstance(net.alignment, OpticalFlowAlignment)
    assert isinstance(net.alignment.flow, CompactFlow if flow == "learned" else ClassicalFlow)
    if flow == "classical":
        assert not list(net.alignment.flow.parameters())  # no weights: nothing to learn in the flow
    x = torch.rand(1, 3, 3, 16, 16)
    assert net(x).shape == frozen(x).shape == (1, 3, 16, 16)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in frozen.parameters())


@pytest.mark.parametrize("frames", [1, 3])
def test_chain_cells_share_labels_per_branch_and_round_trip(frames):
    spec, config, arch, frozen = sample_space(frames, **{**TINY, "frames": frames}, cell="chain")
    chain_keys = sorted(k for k in arch if "/chain_" in k)
    assert chain_keys == ["cna/chain_0", "cna/chain_1", "dna/chain_0", "dna/chain_1"]
    assert set(arch) - set(chain_keys) == ({"alignment"} if frames > 1 else set())
    genotype = spec.to_genotype(arch, config, {})
    for name in ("dna", "cna"):
        cell = genotype.cells[name]
        assert cell.kind == "chain" and cell.n_inputs == 1
        assert cell.ops == [arch[f"{name}/chain_{i}"] for i in range(2)]
    assert to_nni_arch(genotype) == arch
    net = spec.make_network(genotype)
    x = torch.rand(2, frames, 3, 16, 16)
    assert net(x).shape == (2, 3, 16, 16)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in frozen.parameters())
    # every cell of a branch got the same ops (one shared choice per position)
    for cells in (frozen.dna_cells, frozen.cna_cells):
        assert len({tuple(type(m).__name__ for m in cell.ops) for cell in cells}) == 1


def test_genotype_freezes_the_nni_space_to_the_plain_network():
    from search_spaces.tmics import make_space

    spec = find_space("tmics")
    for cell in ("dag", "chain"):
        config = spec.config(**TINY, cell=cell)
        arch = random_architecture(make_space(config), seed=5)
        genotype = spec.to_genotype(arch, config, {})
        frozen = frozen_model(type(make_space(config)), spec.to_nni_arch(genotype), config.to_dict())
        plain = spec.make_network(genotype)
        assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("cell", ["dag", "chain"])
def test_darts_supernet_gradients_reach_every_architecture_weight(cell):
    torch.manual_seed(0)
    spec = find_space("tmics")
    config = spec.config(**TINY, cell=cell)
    supernet = darts_supernet(spec.make_space(config))
    alphas = labelled_alphas(supernet)
    labels = {label for label, *_ in alphas}
    expected = {"alignment"} | ({f"{b}/chain_{i}" for b in ("dna", "cna") for i in range(2)} if cell == "chain"
                                else {f"{b}/{n}_{j}" for b in ("dna", "cna") for n in (2, 3) for j in range(n)})
    assert labels == expected
    x, target = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 16, 16)
    (supernet(x) - target).abs().mean().backward()
    for label, alpha, names in alphas:
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, label
        assert len(names) == alpha.numel()


def test_chain_genotype_errors_name_the_field():
    spec = find_space("tmics")
    config = spec.config(**TINY, cell="chain")
    arch = random_architecture(spec.make_space(config), seed=1)
    genotype = spec.to_genotype(arch, config, {})
    wrong_kind = genotype.copy()
    wrong_kind.space_config["cell"] = "dag"
    with pytest.raises(GenotypeError, match=r"cells\.dna\.kind is 'chain' but space_config\.cell is 'dag'"):
        spec.validate_genotype(wrong_kind)
    too_long = genotype.copy()
    too_long.cells["cna"] = chain_cell(["skip_connect"] * 3)
    with pytest.raises(GenotypeError, match=r"cells\.cna chains 3 ops but space_config\.nodes_per_cell is 2"):
        spec.validate_genotype(too_long)
    with pytest.raises(ValueError, match="flow is 'raft'; allowed: learned, classical"):
        spec.config(flow="raft")
    with pytest.raises(ValueError, match="cell is 'tree'; allowed: dag, chain"):
        spec.config(cell="tree")
