"""The operation registry: restoration blocks that a search space chooses between.

Every operation maps ``[N, C, H, W]`` to ``[N, C, H, W]`` (same channels, same size), so any op can sit
on any edge of a cell. Names follow TMICS's released code (``operations_m.py``): ``Name_kernel_dilation``
(``Residualblocks_5_1``, ``Denseblocks_3_1``, ``DilConv_3_2``), and ``Name_kernel`` for attention
blocks (``SPAattention_3``, ``ECAattention_3``), so TMICS genotypes read unchanged.

Differences from TMICS, on purpose:

* **No BatchNorm anywhere.** Restoration networks dropped it with EDSR (it removes the range flexibility
  that per-pixel regression needs), and NAS search batches are tiny (often 1-4 patches), where batch
  statistics are noise. Because no BN provides a shift, every convolution carries a bias.
* ``Denseblocks``: TMICS's output ``0.333 * x3 + x`` (a scaled residual, as in ESRGAN's RRDB) is kept
  rather than a local 1x1 fusion: no extra parameters, and the released genotypes were trained with it.
* ``DilConv``: TMICS's ``op(x) + x`` residual (ReLU -> depthwise dilated -> pointwise) is kept; DARTS's
  version has no residual, but a residual is what lets a cheap op be stacked in a chain cell.
* ``NonLocalattention``: the embedded-Gaussian block of Wang et al. (2018) with phi/g on a 2x
  max-pooled grid (the paper's memory trick), then ``+ x``; TMICS's extra convs around it are left out.

The registry follows timm/BasicSR: ``register_op`` adds an :class:`OpSpec`; ``build_op(name, C)``
makes the module; ``op_names()`` lists them (``nas-restore ops`` prints them with descriptions).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from nas_restore.errors import UnknownNameError
from nas_restore.registry import Registry

FAMILIES = ("residual", "dense", "dilated", "attention", "separable", "skip", "none", "pool", "conv")


@dataclass(frozen=True)
class OpSpec:
    """A registered operation: its name, family (for colours and filtering) and how to build it."""

    name: str
    family: str
    description: str
    factory: Callable[[int], nn.Module]

    def build(self, channels: int) -> nn.Module:
        return self.factory(channels)


OPS: Registry[OpSpec] = Registry("operation", listing="nas-restore ops")


class UnknownOperationError(UnknownNameError):
    """An operation name that is not in the registry; the message suggests close names."""

    def __init__(self, name: str, known: Iterable[str]):
        super().__init__("operation", name, known, listing="nas-restore ops",
                         extra=" (or nas_restore.ops.op_names())")


def register_op(name: str, family: str, description: str,
                factory: Callable[[int], nn.Module] | None = None):
    """Register ``factory`` (channels -> module) under ``name``; usable as a decorator or a call."""
    if family not in FAMILIES:
        raise ValueError(f"op {name!r}: family {family!r} is not one of {', '.join(FAMILIES)}")

    def add(fn: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        OPS.register(name, OpSpec(name=name, family=family, description=description, factory=fn))
        return fn

    return add(factory) if factory is not None else add


def get_op(name: str) -> OpSpec:
    """The :class:`OpSpec` of ``name``; :class:`UnknownOperationError` with suggestions if unknown."""
    spec = OPS.find(name)
    if spec is None:
        raise UnknownOperationError(name, OPS.names())
    return spec


def build_op(name: str, channels: int) -> nn.Module:
    """A fresh module for operation ``name`` on ``channels`` channels."""
    spec = get_op(name)
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"build_op({name!r}): channels must be a positive integer, got {channels!r}")
    return spec.factory(channels)


def op_names(families: Iterable[str] | str | None = None) -> list[str]:
    """Registered names in registration order, optionally only those of the given families."""
    if families is None:
        return OPS.names()
    wanted = {families} if isinstance(families, str) else set(families)
    unknown = wanted - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown op families {sorted(unknown)}; families are {', '.join(FAMILIES)}")
    return [spec.name for spec in OPS.values() if spec.family in wanted]


# DARTS / NASNet / AmoebaNet primitives: known here only to colour foreign genotypes by family.
_FOREIGN_FAMILIES = (
    (re.compile(r"^none$|^zero$"), "none"),
    (re.compile(r"^(skip_connect|identity)$"), "skip"),
    (re.compile(r"pool"), "pool"),
    (re.compile(r"^sep_conv"), "separable"),
    (re.compile(r"^dil_conv"), "dilated"),
    (re.compile(r"^conv_"), "conv"),
)


def op_family(name: str) -> str:
    """Family of a registered op or a DARTS primitive (``sep_conv_3x3`` ...); "other" otherwise."""
    spec = OPS.find(name)
    if spec is not None:
        return spec.family
    for pattern, family in _FOREIGN_FAMILIES:
        if pattern.search(name):
            return family
    return "other"


# --------------------------------------------------------------------------------------------------
# building blocks


def _conv(c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """'Same' convolution: odd kernel, padding chosen so H and W do not change."""
    return nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                     groups=groups, bias=True)


class Zero(nn.Module):
    """The DARTS ``none`` op: zeros, kept in the graph so a mixed op's weight still gets a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ResidualBlock(nn.Module):
    """TMICS ``ResidualModule``: conv kxk (dil d) -> PReLU -> conv 3x3 dil 2 -> PReLU -> conv 1x1, + x."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, kernel, dilation), nn.PReLU(),
            _conv(channels, channels, 3, 2), nn.PReLU(),
            _conv(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PlainResidualBlock(nn.Module):
    """PRN_r's residual block (Ren et al. CVPR 2019): conv kxk -> ReLU -> conv kxk -> ReLU, + x, then ReLU.

    Plain: ReLU rather than PReLU, no dilation, no 1x1 (unlike :class:`ResidualBlock`); the progressive
    space's PRN_r member applies it recursively with shared weights (search_spaces/progressive.py).
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, kernel), nn.ReLU(),
                                  _conv(channels, channels, kernel), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DenseBlock(nn.Module):
    """TMICS ``ResidualDenseBlock``: three densely connected kxk convs, out = 0.333 * x3 + x."""

    scale = 0.333

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels * (i + 1), channels, kernel, dilation) for i in range(3))
        self.acts = nn.ModuleList(nn.PReLU() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv, act in zip(self.convs, self.acts):
            features.append(act(conv(torch.cat(features, dim=1))))
        return self.scale * features[-1] + x


class DilatedConv(nn.Module):
    """TMICS ``DilConv``: ReLU -> depthwise kxk dilated -> pointwise 1x1, + x."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            _conv(channels, channels, kernel, dilation, groups=channels),
            _conv(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SeparableConv(nn.Module):
    """DARTS ``SepConv`` (ReLU -> depthwise kxk -> pointwise, twice), + x."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), _conv(channels, channels, kernel, groups=channels), _conv(channels, channels, 1),
            nn.ReLU(), _conv(channels, channels, kernel, groups=channels), _conv(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SpatialAttention(nn.Module):
    """CBAM spatial gate: channel max and mean -> conv kxk -> sigmoid, multiplied in."""

    def __init__(self, kernel: int):
        super().__init__()
        self.conv = _conv(2, 1, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class EfficientChannelAttention(nn.Module):
    """ECA-Net gate: global average pool -> Conv1d(k) across channels -> sigmoid, multiplied in."""

    def __init__(self, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.conv(x.mean(dim=(2, 3)).unsqueeze(1))  # [N, 1, C]
        return x * torch.sigmoid(weights).transpose(1, 2).unsqueeze(-1)  # [N, C, 1, 1]


class AttentionBlock(nn.Module):
    """TMICS attention block: conv 3x3 -> PReLU -> conv kxk -> gate, + x -> PReLU."""

    def __init__(self, channels: int, kernel: int, gate: nn.Module):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3), nn.PReLU(), _conv(channels, channels, kernel))
        self.gate = gate
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.gate(self.body(x)))


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018), phi/g on a 2x max-pooled grid, + x.

    The attention matrix is HW x HW/4, so memory grows with the square of the patch area: fine for
    search patches (64x64 -> 16 MB per image), costly on full frames.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [N, HW, C']
        phi = self.pool(self.phi(x)).flatten(2)  # [N, C', HW/4]
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # [N, HW/4, C']
        attn = torch.softmax(theta @ phi, dim=-1)  # [N, HW, HW/4]
        y = (attn @ g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


def spatial_attention_block(channels: int, kernel: int) -> AttentionBlock:
    return AttentionBlock(channels, kernel, SpatialAttention(kernel))


def channel_attention_block(channels: int, kernel: int) -> AttentionBlock:
    return AttentionBlock(channels, kernel, EfficientChannelAttention(kernel))


# --------------------------------------------------------------------------------------------------
# the registry entries

for _k in (3, 5, 7):
    for _d in (1, 2):
        register_op(f"Residualblocks_{_k}_{_d}", "residual",
                    f"residual block: conv {_k}x{_k} dil {_d}, conv 3x3 dil 2, conv 1x1 (PReLU), + input",
                    functools.partial(ResidualBlock, kernel=_k, dilation=_d))
register_op("PlainResblock_3", "residual",
            "PRN_r's residual block: conv 3x3, ReLU, conv 3x3, ReLU, + input, ReLU",
            functools.partial(PlainResidualBlock, kernel=3))
for _k in (3, 5, 7):
    for _d in (1, 2):
        register_op(f"Denseblocks_{_k}_{_d}", "dense",
                    f"dense block: 3 densely connected convs {_k}x{_k} dil {_d} (PReLU), 0.333*out + input",
                    functools.partial(DenseBlock, kernel=_k, dilation=_d))
for _k, _d in ((3, 2), (5, 2), (3, 4)):
    register_op(f"DilConv_{_k}_{_d}", "dilated",
                f"ReLU, depthwise {_k}x{_k} conv dil {_d}, pointwise 1x1, + input (cheap, wide view)",
                functools.partial(DilatedConv, kernel=_k, dilation=_d))
for _k in (3, 5):
    register_op(f"SepConv_{_k}", "separable",
                f"DARTS separable conv {_k}x{_k} (ReLU, depthwise, pointwise) twice, + input",
                functools.partial(SeparableConv, kernel=_k))
for _k in (3, 5, 7):
    register_op(f"SPAattention_{_k}", "attention",
                f"conv 3x3, conv {_k}x{_k}, spatial attention (channel max/mean, conv {_k}x{_k}, sigmoid), "
                "+ input, PReLU",
                functools.partial(spatial_attention_block, kernel=_k))
for _k in (3, 5):
    register_op(f"ECAattention_{_k}", "attention",
                f"conv 3x3, conv {_k}x{_k}, channel attention ECA (avg pool, Conv1d k={_k}, sigmoid), "
                "+ input, PReLU",
                functools.partial(channel_attention_block, kernel=_k))
register_op("NonLocalattention", "attention",
            "embedded-Gaussian non-local attention over all positions (phi/g 2x pooled), + input",
            NonLocalBlock)
register_op("skip_connect", "skip", "identity: passes the input through", lambda c: nn.Identity())
register_op("none", "none", "zeros: removes the edge (DARTS cells)", lambda c: Zero())
del _k, _d
