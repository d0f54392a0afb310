"""The RRGNet search space: a frame-grouping encoder-decoder for fast video deraining.

After Cai, Mu et al., "Towards General and Fast Video Derain via Knowledge Distillation"
(arXiv 2308.05346). Only the abstract is public ("a frame grouping-based encoder-decoder network that
makes full use of the temporal information", "the best results in terms of running speed"), so the
layout below is our reading (../shared/seeds/RESEARCH.md section 2.4), built for speed:

    frames [B,T,3,H,W] -> groups {t-s, t, t+s} for each stride s of the chosen grouping
                       -> one light encoder shared by every group (9 -> C channels, full resolution)
                       -> fusion of the group features (sum / concat + 1x1 conv / per-pixel attention)
                       -> U-Net: ``depth`` levels, carrier width C * 2^level, downsampled by a strided
                          conv right after each level's block; decoder: 1x1 conv, bilinear x2, + skip, block
                       -> conv 3x3 to RGB, + centre frame

Architecture choices (all NNI ``LayerChoice``, so DARTS relaxes every one of them), and the genotype's
``macro`` keys (values are strings):

* ``grouping``: which strides form groups, a non-empty subset of ``strides`` written ``"1+2"``;
* ``fusion``: how the group features are merged (one of ``fusions``);
* ``depth``: the number of U-Net levels (one of ``depths``); each depth is a candidate network;
* ``level<i>/op``: the block operation of level ``i`` (from the op registry, :mod:`nas_restore.ops`),
  used by its encoder and decoder block;
* ``level<i>/width``: the channels that operation works at (``expansion x`` the level's carrier; a
  1x1 conv expands and projects back, as in MobileNetV2/ProxylessNAS expansion-ratio search).

The width choice is an expansion inside a block, not the carrier width between levels: candidates of a
``LayerChoice`` must return the same shape for DARTS to mix them. :class:`RRGNet` is the plain
network a genotype builds; the NNI space freezes to the same modules (same parameter count).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_restore.config import SIZE_LIMIT_NOTE, check_ranges, from_dict
from nas_restore.genotype import Genotype, GenotypeError
from nas_restore.ops import build_op, op_names
from search_spaces import SpaceSpec, register_space

FUSIONS = ("sum", "concat", "attention")
DEFAULT_OPERATIONS = ("Residualblocks_3_1", "DilConv_3_2", "SepConv_3", "ECAattention_3")


@dataclass
class RRGNetConfig:
    """Size and candidate sets of the space. Defaults are sized for a 2-core CPU."""

    channels: int = 8                      # carrier width at full resolution; doubles at every level
    frames: int = 5
    strides: list[int] = field(default_factory=lambda: [1, 2])   # temporal strides s of groups {t-s, t, t+s}
    fusions: list[str] = field(default_factory=lambda: list(FUSIONS))
    depths: list[int] = field(default_factory=lambda: [2, 3])    # U-Net levels
    expansions: list[int] = field(default_factory=lambda: [1, 2])  # block width = expansion x carrier
    operations: list[str] = field(default_factory=lambda: list(DEFAULT_OPERATIONS))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RRGNetConfig":
        return from_dict(cls, data, "space")  # runs validate() too

    def validate(self) -> None:
        if self.frames < 3 or self.frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 3 (rrgnet groups frames around the centre t), "
                             f"got {self.frames}; for single images use the rdmc or tmics space")
        check_ranges(self, {"frames": (3, 15), "channels": (1, 128)}, SIZE_LIMIT_NOTE)
        _check_ints("strides", self.strides, low=1, high=self.frames // 2,
                    why=f"a stride s needs frames t-s and t+s in the {self.frames}-frame window")
        _check_ints("depths", self.depths, low=1, high=6, why="levels of the U-Net")
        _check_ints("expansions", self.expansions, low=1, high=8, why="block width = expansion x carrier")
        bad = [f for f in self.fusions if f not in FUSIONS]
        if bad or not self.fusions:
            raise ValueError(f"fusions {bad or '[]'} unknown or empty; allowed: {', '.join(FUSIONS)}")
        known = set(op_names()) - {"none"}
        bad = [op for op in self.operations if op not in known]
        if bad or not self.operations:
            raise ValueError(f"operations has unknown or unusable entries {bad or '[]'}; choose from "
                             "`nas-restore ops` (except none)")
        for name in ("strides", "fusions", "depths", "expansions", "operations"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # the candidate values of every choice, as the genotype writes them (strings)

    @property
    def groupings(self) -> list[str]:
        return [grouping_name(s) for r in range(1, len(self.strides) + 1)
                for s in itertools.combinations(sorted(self.strides), r)]

    def carrier(self, level: int) -> int:
        return self.channels * 2 ** level

    def widths(self, level: int) -> list[str]:
        return [str(e * self.carrier(level)) for e in self.expansions]

    def choices(self) -> dict[str, list[str]]:
        """Every macro key of the space (levels up to the deepest candidate) with its allowed values."""
        out = {"grouping": self.groupings, "fusion": list(self.fusions), "depth": [str(d) for d in self.depths]}
        for level in range(max(self.depths)):
            out[f"level{level}/op"] = list(self.operations)
            out[f"level{level}/width"] = self.widths(level)
        return out


def _check_ints(name: str, values: Sequence[int], low: int, high: int, why: str) -> None:
    if not values or not all(isinstance(v, int) and low <= v <= high for v in values):
        raise ValueError(f"{name} must be a non-empty list of integers in {low}..{high} ({why}), got {values}")


def grouping_name(strides: Sequence[int]) -> str:
    return "+".join(str(s) for s in sorted(strides))


def grouping_strides(name: str) -> list[int]:
    return [int(s) for s in name.split("+")]


PRESETS = {
    "cpu": {},
    "demo": {"channels": 8, "frames": 5, "depths": [2, 3], "expansions": [1, 2],
             "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3"]},
    "paper": {"channels": 32, "frames": 5, "strides": [1, 2], "depths": [3, 4], "expansions": [1, 2],
              "operations": ["Residualblocks_3_1", "Residualblocks_5_1", "Denseblocks_3_1", "DilConv_3_2",
                             "SepConv_3", "SPAattention_3", "ECAattention_3"]},
}


# --------------------------------------------------------------------------------------------------
# building blocks shared by the space and the plain network


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad the last two dims up to a multiple (so every level halves exactly); returns (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        x = F.pad(flat, (0, pw, 0, ph), mode="replicate").reshape(*shape[:-2], h + ph, w + pw)
    return x, (h, w)


class GroupEncoder(nn.Module):
    """The light encoder every frame group shares: 9 channels (3 frames) -> C at full resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(9, channels, 3, padding=1), nn.PReLU(channels),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SumFusion(nn.Module):
    """Mean of the group features: no weights."""

    def forward(self, groups: torch.Tensor) -> torch.Tensor:  # [B, G, C, H, W]
        return groups.mean(dim=1)


class ConcatFusion(nn.Module):
    """Concatenate the groups, 1x1 conv back to C channels."""

    def __init__(self, channels: int, n_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(channels * n_groups, channels, 1)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        return self.conv(groups.flatten(1, 2))


class AttentionFusion(nn.Module):
    """Per-pixel softmax over groups of a score (3x3 conv, shared by the groups), weighted sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, c, h, w = groups.shape
        scores = self.score(groups.reshape(b * g, c, h, w)).reshape(b, g, 1, h, w)
        return (torch.softmax(scores, dim=1) * groups).sum(dim=1)


def make_fusion(name: str, channels: int, n_groups: int) -> nn.Module:
    if name == "sum":
        return SumFusion()
    if name == "concat":
        return ConcatFusion(channels, n_groups)
    if name == "attention":
        return AttentionFusion(channels)
    raise ValueError(f"fusion {name!r} unknown; allowed: {', '.join(FUSIONS)}")


class FrameGrouping(nn.Module):
    """Groups {t-s, t, t+s} for the given strides, each through the shared encoder, then fused."""

    def __init__(self, strides: Sequence[int], encoder: GroupEncoder, fusion: nn.Module):
        super().__init__()
        self.strides = list(strides)
        self.encoder = encoder
        self.fusion = fusion

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        c = frames.shape[1] // 2
        b, _, _, h, w = frames.shape
        groups = torch.cat([torch.cat([frames[:, c - s], frames[:, c], frames[:, c + s]], 1).unsqueeze(1)
                            for s in self.strides], dim=1)                        # [B, G, 9, H, W]
        feats = self.encoder(groups.flatten(0, 1)).reshape(b, len(self.strides), -1, h, w)
        return self.fusion(feats)


class LevelBlock(nn.Module):
    """A level's block: 1x1 expand to ``width``, the searched op, 1x1 project back, + input.

    At ``width == carrier`` there is no expansion: just the op (every registry op keeps its shape).
    """

    def __init__(self, carrier: int, width: int, op: nn.Module):
        super().__init__()
        self.expanded = width != carrier
        self.expand = nn.Conv2d(carrier, width, 1) if self.expanded else nn.Identity()
        self.op = op
        self.project = nn.Conv2d(width, carrier, 1) if self.expanded else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.op(self.expand(x)))
        return x + y if self.expanded else y


class UNet(nn.Module):
    """``depth`` levels; level ``l`` carries ``C * 2^l`` channels at 1/2^l resolution.

    ``make_block(level, carrier)`` gives a level's block (called for the encoder, then the decoder).
    """

    def __init__(self, channels: int, depth: int, make_block: Callable[[int, int], nn.Module]):
        super().__init__()
        self.depth = depth
        carrier = [channels * 2 ** level for level in range(depth)]
        self.enc = nn.ModuleList(make_block(level, carrier[level]) for level in range(depth))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(carrier[level], carrier[level + 1], 3, stride=2, padding=1),
                          nn.PReLU(carrier[level + 1]))
            for level in range(depth - 1))
        self.up = nn.ModuleList(nn.Conv2d(carrier[level + 1], carrier[level], 1) for level in range(depth - 1))
        self.dec = nn.ModuleList(make_block(level, carrier[level]) for level in range(depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(self.depth):
            x = self.enc[level](x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.down[level](x)
        for level in reversed(range(self.depth - 1)):
            skip = skips[level]
            x = F.interpolate(self.up[level](x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.dec[level](x + skip)
        return x


class _RRGNetBody:
    """The forward pass shared by the NNI space and the plain network."""

    grouping: nn.Module
    unet: nn.Module
    head: nn.Module
    max_depth: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"rrgnet reads clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        x, (h, w) = pad_to_multiple(x, 2 ** (self.max_depth - 1))
        centre = x[:, x.shape[1] // 2]
        out = centre + self.head(self.unet(self.grouping(x)))
        return out[..., :h, :w]


class RRGNet(_RRGNetBody, nn.Module):
    """The network an rrgnet genotype builds to: plain PyTorch, no NNI needed."""

    def __init__(self, genotype: Genotype):
        nn.Module.__init__(self)
        config = RRGNetConfig.from_dict(genotype.space_config)
        self.config = config
        macro = genotype.macro
        c = config.channels
        strides = grouping_strides(macro["grouping"])
        self.grouping = FrameGrouping(strides, GroupEncoder(c), make_fusion(macro["fusion"], c, len(strides)))
        depth = int(macro["depth"])
        self.max_depth = max(config.depths)  # pad as the space does, so both see the same pixels

        def block(level: int, carrier: int) -> nn.Module:
            width = int(macro[f"level{level}/width"])
            return LevelBlock(carrier, width, build_op(macro[f"level{level}/op"], width))

        self.unet = UNet(c, depth, block)
        self.head = nn.Conv2d(c, 3, 3, padding=1)


# --------------------------------------------------------------------------------------------------
# the NNI model space


@functools.cache
def _make_space_class():
    """Defined on first use, so that building a genotype's plain network never imports NNI."""
    from nas_restore.nni_layer import LayerChoice, ModelSpace, label_scope

    def choice(candidates: dict[str, nn.Module], label: str) -> nn.Module:
        """A LayerChoice, or the module itself when there is nothing to choose."""
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return LayerChoice(candidates, label=label)

    class RRGNetSpace(_RRGNetBody, ModelSpace):
        """RRGNet as an NNI model space: grouping, fusion, depth, and op + width per level."""

        def __init__(self, **settings: Any):
            super().__init__()
            config = RRGNetConfig.from_dict(settings)
            self.config = config
            c = config.channels
            encoder = GroupEncoder(c)  # shared by every group of every grouping candidate

            def grouping(name: str) -> nn.Module:
                strides = grouping_strides(name)
                fusion = choice({f: make_fusion(f, c, len(strides)) for f in config.fusions}, "fusion")
                return FrameGrouping(strides, encoder, fusion)

            self.grouping = choice({g: grouping(g) for g in config.groupings}, "grouping")

            def block(level: int, carrier: int) -> nn.Module:
                with label_scope(f"level{level}"):
                    return choice({
                        str(width): LevelBlock(carrier, width, choice(
                            {op: build_op(op, width) for op in config.operations}, "op"))
                        for width in map(int, config.widths(level))}, "width")

            self.unet = choice({str(d): UNet(c, d, block) for d in config.depths}, "depth")
            self.head = nn.Conv2d(c, 3, 3, padding=1)
            self.max_depth = max(config.depths)

    return RRGNetSpace


def make_space(config: RRGNetConfig):
    """A fresh NNI ``ModelSpace`` (one-shot strategies mutate it in place: never reuse one)."""
    return _make_space_class()(**config.to_dict())


# --------------------------------------------------------------------------------------------------
# genotypes


def searched_labels(config: RRGNetConfig) -> dict[str, list[str]]:
    """The labels the NNI space really has: choices with more than one candidate."""
    return {k: v for k, v in config.choices().items() if len(v) > 1}


def to_genotype(arch: dict[str, Any], config: RRGNetConfig, metadata: dict[str, Any] | None = None) -> Genotype:
    """NNI architecture dict -> genotype; the macro keeps only the levels the chosen depth uses."""
    unknown = sorted(set(arch) - set(searched_labels(config)))
    if unknown:
        raise GenotypeError(f"the architecture has keys the rrgnet space does not know: {unknown}")
    choices = config.choices()
    full = {key: str(arch.get(key, values[0])) for key, values in choices.items()}
    depth = int(full["depth"])
    used = [k for k in searched_labels(config) if not k.startswith("level") or int(k[5:].split("/")[0]) < depth]
    missing = sorted(set(used) - set(arch))
    if missing:
        raise GenotypeError(f"the architecture answers no value for the rrgnet choice(s) {missing}: give every "
                            "searched label of the levels in use (single-candidate choices may be left out)")
    macro = {k: v for k, v in full.items() if not k.startswith("level") or int(k[5:].split("/")[0]) < depth}
    genotype = Genotype(space="rrgnet", cells={}, macro=macro, space_config=config.to_dict(),
                        fusion={"type": macro["fusion"]}, metadata=dict(metadata or {}))
    return validate_genotype(genotype)


def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
    """Genotype -> NNI architecture dict; levels deeper than the chosen depth get their first candidate."""
    config = RRGNetConfig.from_dict(genotype.space_config)
    return {key: genotype.macro.get(key, values[0]) for key, values in searched_labels(config).items()}


def validate_genotype(genotype: Genotype) -> Genotype:
    try:
        config = RRGNetConfig.from_dict(genotype.space_config)
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space_config: {err}") from None
    if genotype.cells:
        raise GenotypeError(f"cells: an rrgnet genotype has no cells (all its choices are macro), got "
                            f"{sorted(genotype.cells)}")
    choices = config.choices()
    genotype.validate(allowed_macro={"depth": choices["depth"]})
    depth = int(genotype.macro["depth"])
    allowed = {k: v for k, v in choices.items()
               if not k.startswith("level") or int(k[5:].split("/")[0]) < depth}
    unknown = sorted(set(genotype.macro) - set(allowed))
    if unknown:
        raise GenotypeError(f"macro has keys {unknown} that an rrgnet of depth {depth} does not use; its keys: "
                            f"{', '.join(allowed)}")
    genotype.validate(allowed_macro=allowed)
    return genotype


register_space(SpaceSpec(
    name="rrgnet",
    description="RRGNet fast video deraining: frame groups at searched strides, searched fusion, U-Net with "
                "searched depth, op and width per level",
    config_class=RRGNetConfig,
    make_space=make_space,
    make_network=RRGNet,
    to_genotype=to_genotype,
    validate_genotype=validate_genotype,
    presets=PRESETS,
    to_nni_arch=to_nni_arch,
))
