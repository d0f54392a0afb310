"""The op registry: every op keeps [N, C, H, W], trains, and bad names get a useful error."""

import pytest
import torch
from torch import nn

from nas_restore import ops
from nas_restore.precision import to_channels_last
from nas_restore.profiling import count_parameters

C = 8
ALL_OPS = ops.op_names()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_has_tmics_released_names():
    expected = {"Residualblocks_5_1", "Residualblocks_3_1", "Denseblocks_3_1", "Denseblocks_5_1",
                "DilConv_3_2", "SPAattention_3", "ECAattention_3", "skip_connect"}
    assert expected <= set(ALL_OPS)
    for name in ALL_OPS:
        spec = ops.OPS[name]
        assert spec.name == name and spec.family in ops.FAMILIES
        assert spec.description and "\n" not in spec.description


@pytest.mark.parametrize("name", ALL_OPS)
def test_op_keeps_shape_and_trains(name):
    module = ops.build_op(name, C)
    x = torch.randn(2, C, 16, 16, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    params = [(n, p) for n, p in module.named_parameters()]
    if not params:
        return
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in params:
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


def test_ops_with_parameters_are_not_identity():
    x = torch.randn(2, C, 16, 16)
    for name in ALL_OPS:
        module = ops.build_op(name, C)
        if count_parameters(module):
            assert not torch.allclose(module(x), x), name


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(2, C, 16, 16)
    assert torch.equal(ops.build_op("none", C)(x), torch.zeros_like(x))
    assert torch.equal(ops.build_op("skip_connect", C)(x), x)


def test_odd_sizes_keep_shape():
    x = torch.randn(1, C, 15, 9)
    for name in ("NonLocalattention", "Residualblocks_7_2", "DilConv_3_4", "SPAattention_7"):
        assert ops.build_op(name, C)(x).shape == x.shape


def test_unknown_op_suggests_close_match():
    with pytest.raises(ops.UnknownOperationError) as info:
        ops.build_op("Residualblock_3_1", C)
    message = str(info.value)
    assert "'Residualblock_3_1'" in message
    assert "Residualblocks_3_1" in message
    assert "nas-restore ops" in message and "op_names()" in message
    assert isinstance(info.value, KeyError)


def test_build_op_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        ops.build_op("Residualblocks_3_1", 0)


def test_families_and_foreign_names():
    assert ops.op_family("Residualblocks_3_1") == "residual"
    assert ops.op_family("ECAattention_3") == "attention"
    assert ops.op_family("sep_conv_7x7") == "separable"
    assert ops.op_family("dil_conv_5x5") == "dilated"
    assert ops.op_family("max_pool_3x3") == "pool"
    assert ops.op_family("avg_pool_3x3") == "pool"
    assert ops.op_family("conv_7x1_1x7") == "conv"
    assert ops.op_family("skip_connect") == "skip"
    assert ops.op_family("none") == "none"
    assert ops.op_family("mystery_op") == "other"
    assert set(ops.op_names("attention")) >= {"SPAattention_3", "ECAattention_3", "NonLocalattention"}
    assert all(ops.op_family(n) == "residual" for n in ops.op_names(["residual"]))
    with pytest.raises(ValueError, match="families"):
        ops.op_names(["residuals"])


def test_register_op_decorator_and_duplicates():
    name = "_test_only_conv1x1"
    try:
        @ops.register_op(name, "conv", "test op")
        def make(c: int) -> nn.Module:
            return nn.Conv2d(c, c, 1)

        assert ops.build_op(name, C)(torch.zeros(1, C, 4, 4)).shape == (1, C, 4, 4)
        with pytest.raises(ValueError, match="already registered"):
            ops.register_op(name, "conv", "again", make)
    finally:
        ops.OPS.unregister(name)
    with pytest.raises(ValueError, match="family"):
        ops.register_op("_bad", "fancy", "bad family")


def test_count_parameters():
    conv = nn.Conv2d(4, 4, 3)
    assert count_parameters(conv) == 4 * 4 * 9 + 4
    conv.bias.requires_grad_(False)
    assert count_parameters(conv, trainable_only=True) == 4 * 4 * 9


@pytest.mark.parametrize("name", ALL_OPS)
def test_bf16_gradients_do_not_depend_on_the_memory_layout(name):
    """channels_last (what bf16 training uses) must give the NCHW gradients up to rounding; it did not for
    dilated convolutions on 32 px inputs (a oneDNN bug, worked around in precision.to_channels_last)."""
    torch.manual_seed(0)
    module = ops.build_op(name, C)
    if not count_parameters(module):
        return
    x = torch.randn(2, C, 32, 32)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        module.zero_grad()
        if layout == torch.channels_last:
            to_channels_last(module)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x.to(memory_format=layout))
        (out.float() ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    for key, nchw in grads[0].items():
        scale = nchw.abs().max()
        if scale > 1e-6:  # a bias whose gradient is zero in exact arithmetic (softmax shift) has no scale
            assert (grads[1][key] - nchw).abs().max() <= 0.05 * scale, key
