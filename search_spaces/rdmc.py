"""The RDMC search space: a recursive, multi-scale image derainer with dynamic cross-level recruitment.

After Jiang, Liu et al., "Contrastive Learning Based Recursive Dynamic Multi-Scale Network for Image
Deraining" (arXiv 2305.18092) and its public successor DRNet (``Jzy2017/DRNet``, ``P_3UNet_Darts.py``);
see ../shared/seeds/RESEARCH.md section 3. One recursion pass (the *body*, shared by every pass):

    [rainy, estimate] (6 channels)
      -> three parallel encoders, 3x3 convs with dilation 1 / 2 / 3 (``dilations``), ``levels`` levels
         each (max-pool 2 between levels), level l carrying C * 2^l channels per encoder
      -> per level: the encoders' features concatenated, 1x1 conv back to C * 2^l
      -> decoder, coarse to fine: searched upsampling of the coarser level, + the level's skip
         + a *recruited* feature (dynamic cross-level recruitment), double conv
      -> 1x1 conv to RGB = y;  estimate <- rainy + y

    the body runs ``recursions`` times, the rainy input re-joined (concatenated) at every pass.

Architecture choices, and the genotype's ``macro`` keys (values are strings):

* ``recursions``: passes of the shared body (NNI ``Repeat``, whose DARTS form mixes the outputs after
  each pass with softmax weights: one forward of the deepest candidate serves every candidate);
* ``dec<l>/upsample``: how decoder level ``l`` upsamples the coarser level (``upsamplings``:
  bilinear or bicubic + 1x1 conv, pixel shuffle, transposed conv); a ``LayerChoice``;
* ``dec<l>/recruit``: which other encoder level decoder ``l`` recruits (``none``, or ``enc<k>`` with
  ``|k - l| <= recruit_range``: a finer level through strided convs, a coarser one through a 1x1 conv
  and bilinear upsampling). A ``LayerChoice`` over recruitment modules rather than an ``InputChoice``
  over features: the frozen network then holds only the chosen adapter's weights (with an
  InputChoice every adapter would be built and run).

Differences from DRNet, on purpose: the three encoders' concatenated features are fused back to one
width by a 1x1 conv per level (DRNet keeps 3x the width through the decoder, 15.9 M weights at 32
channels); no BatchNorm (tiny search batches); the recursion count and the recruited skips are
architecture choices (DRNet fixes 3 passes and picks skips with a hand-set mask).
:class:`RDMCNet` is the plain network a genotype builds.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_restore.config import SIZE_LIMIT_NOTE, check_ranges, from_dict
from nas_restore.genotype import Genotype, GenotypeError
from search_spaces import SpaceSpec, register_space
from search_spaces.rrgnet import pad_to_multiple

UPSAMPLINGS = ("bilinear", "bicubic", "pixelshuffle", "transposed")


@dataclass
class RDMCConfig:
    """Size and candidate sets of the space. Defaults are sized for a 2-core CPU."""

    channels: int = 8                   # width of level 0 (per encoder); doubles at every level
    frames: int = 1                     # an image derainer: one frame
    levels: int = 3                     # encoder levels (resolutions)
    dilations: list[int] = field(default_factory=lambda: [1, 2, 3])      # one parallel encoder each
    recursions: list[int] = field(default_factory=lambda: [1, 2, 3])     # candidate numbers of passes
    upsamplings: list[str] = field(default_factory=lambda: ["bilinear", "pixelshuffle", "transposed"])
    recruit_range: int = 1              # a decoder level may recruit encoder levels up to this far away

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RDMCConfig":
        return from_dict(cls, data, "space")  # runs validate() too

    def validate(self) -> None:
        if self.frames != 1:
            raise ValueError(f"frames must be 1: rdmc derains single images, got {self.frames} "
                             "(for video use the rrgnet or tmics space)")
        check_ranges(self, {"channels": (1, 128)}, SIZE_LIMIT_NOTE)
        if not 2 <= self.levels <= 6:
            raise ValueError(f"levels must be in 2..6 (an encoder-decoder needs two resolutions), got {self.levels}")
        for name, values, high in (("dilations", self.dilations, 8), ("recursions", self.recursions, 8)):
            if not values or not all(isinstance(v, int) and 1 <= v <= high for v in values):
                raise ValueError(f"{name} must be a non-empty list of integers in 1..{high}, got {values}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        bad = [u for u in self.upsamplings if u not in UPSAMPLINGS]
        if bad or not self.upsamplings or len(set(self.upsamplings)) != len(self.upsamplings):
            raise ValueError(f"upsamplings {self.upsamplings} has unknown, repeated or no entries; allowed: "
                             f"{', '.join(UPSAMPLINGS)}")
        if not 0 <= self.recruit_range < self.levels:
            raise ValueError(f"recruit_range must be in 0..{self.levels - 1} (0: no recruitment), "
                             f"got {self.recruit_range}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def width(self, level: int) -> int:
        return self.channels * 2 ** level

    def recruit_sources(self, level: int) -> list[str]:
        return ["none"] + [f"enc{k}" for k in range(self.levels)
                           if k != level and abs(k - level) <= self.recruit_range]

    def choices(self) -> dict[str, list[str]]:
        """Every macro key with its allowed values (as strings)."""
        out = {"recursions": [str(r) for r in self.recursions]}
        for level in range(self.levels - 1):
            out[f"dec{level}/upsample"] = list(self.upsamplings)
            out[f"dec{level}/recruit"] = self.recruit_sources(level)
        return out


PRESETS = {
    "cpu": {},
    "demo": {"channels": 8, "levels": 3, "recursions": [1, 2, 3]},
    "paper": {"channels": 32, "levels": 5, "recursions": [1, 2, 3, 4],
              "upsamplings": ["bilinear", "bicubic", "pixelshuffle", "transposed"]},
}


# --------------------------------------------------------------------------------------------------
# building blocks shared by the space and the plain network


class DilatedUnit(nn.Module):
    """DRNet's ``Dilconv`` without BatchNorm: conv 3x3 -> ReLU -> conv 3x3 (dilation d) -> ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation),
                                  nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MultiScaleEncoder(nn.Module):
    """Parallel encoders (one per dilation), ``levels`` levels each; per level the branches are fused."""

    def __init__(self, config: RDMCConfig, in_channels: int = 6):
        super().__init__()
        self.branches = nn.ModuleList()
        for d in config.dilations:
            units = [DilatedUnit(in_channels if level == 0 else config.width(level - 1), config.width(level), d)
                     for level in range(config.levels)]
            self.branches.append(nn.ModuleList(units))
        n = len(config.dilations)
        self.fuse = nn.ModuleList(nn.Conv2d(n * config.width(level), config.width(level), 1)
                                  for level in range(config.levels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        per_level: list[list[torch.Tensor]] = [[] for _ in self.fuse]
        for units in self.branches:
            h = x
            for level, unit in enumerate(units):
                h = unit(h if level == 0 else F.max_pool2d(h, 2))
                per_level[level].append(h)
        return [fuse(torch.cat(feats, 1)) for fuse, feats in zip(self.fuse, per_level)]


class Upsample(nn.Module):
    """x2 upsampling from ``cin`` to ``cout`` channels, by one of :data:`UPSAMPLINGS`."""

    def __init__(self, kind: str, cin: int, cout: int):
        super().__init__()
        self.kind = kind
        if kind in ("bilinear", "bicubic"):
            self.conv = nn.Conv2d(cin, cout, 1)
        elif kind == "pixelshuffle":
            self.conv = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2))
        elif kind == "transposed":
            self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:
            raise ValueError(f"upsampling {kind!r} unknown; allowed: {', '.join(UPSAMPLINGS)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind in ("bilinear", "bicubic"):
            return F.interpolate(self.conv(x), scale_factor=2, mode=self.kind, align_corners=False)
        return self.conv(x)


class Recruit(nn.Module):
    """Dynamic cross-level recruitment: encoder level ``source`` brought to decoder level ``target``.

    ``source=None`` recruits nothing (zeros). Finer sources go down through stride-2 convs, coarser
    ones through a 1x1 conv and bilinear upsampling. Reads the list of encoder features.
    """

    def __init__(self, config: RDMCConfig, source: int | None, target: int):
        super().__init__()
        self.source, self.target = source, target
        if source is None:
            self.adapt = None
        elif source < target:
            steps = []
            for level in range(source, target):
                steps += [nn.Conv2d(config.width(level), config.width(level + 1), 3, stride=2, padding=1),
                          nn.ReLU(inplace=True)]
            self.adapt = nn.Sequential(*steps)
        else:
            self.adapt = nn.Conv2d(config.width(source), config.width(target), 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        reference = feats[self.target]
        if self.adapt is None:
            return torch.zeros_like(reference)
        y = self.adapt(feats[self.source])
        if y.shape[-2:] != reference.shape[-2:]:
            y = F.interpolate(y, size=reference.shape[-2:], mode="bilinear", align_corners=False)
        return y


def make_recruit(config: RDMCConfig, name: str, target: int) -> Recruit:
    return Recruit(config, None if name == "none" else int(name[3:]), target)


class DecoderLevel(nn.Module):
    """Upsample the coarser level, add skip + recruited feature, double conv."""

    def __init__(self, width: int, upsample: nn.Module, recruit: nn.Module):
        super().__init__()
        self.upsample = upsample
        self.recruit = recruit
        self.body = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, coarse: torch.Tensor, feats: Sequence[torch.Tensor], level: int) -> torch.Tensor:
        up = self.upsample(coarse)
        return self.body(torch.cat([up, feats[level] + self.recruit(feats)], 1))


class RecursionBody(nn.Module):
    """One pass: multi-scale encoder, decoder with recruitment, 1x1 conv to the residual ``y``."""

    def __init__(self, config: RDMCConfig, decoders: Sequence[nn.Module]):
        super().__init__()
        self.encoder = MultiScaleEncoder(config)
        self.decoders = nn.ModuleList(decoders)   # decoders[l] serves level l
        self.out = nn.Conv2d(config.width(0), 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        h = feats[-1]
        for level in reversed(range(len(self.decoders))):
            h = self.decoders[level](h, feats, level)
        return self.out(h)


class RecursionPass(nn.Module):
    """``(rainy, estimate) -> (rainy, rainy + body([rainy, estimate]))``.

    Holds the body without registering it: the body belongs to the network once and every pass
    shares it (a recursion shares its weights).
    """

    def __init__(self, body: RecursionBody):
        super().__init__()
        self._body = [body]

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rainy, estimate = state
        return rainy, rainy + self._body[0](torch.cat([rainy, estimate], 1))


class _RDMCBody:
    """The forward pass shared by the NNI space and the plain network."""

    body: RecursionBody
    passes: nn.Module
    levels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"rdmc derains single images: got a clip of {x.shape[1]} frames; give [B, 1, 3, H, W] "
                                 "or [B, 3, H, W]")
            x = x[:, 0]
        rainy, (h, w) = pad_to_multiple(x, 2 ** (self.levels - 1))
        _, estimate = self.passes((rainy, rainy))
        return estimate[..., :h, :w]


class RDMCNet(_RDMCBody, nn.Module):
    """The network an rdmc genotype builds to: plain PyTorch, no NNI needed."""

    def __init__(self, genotype: Genotype):
        nn.Module.__init__(self)
        config = RDMCConfig.from_dict(genotype.space_config)
        self.config = config
        self.levels = config.levels
        macro = genotype.macro
        decoders = [DecoderLevel(config.width(level),
                                 Upsample(macro[f"dec{level}/upsample"], config.width(level + 1), config.width(level)),
                                 make_recruit(config, macro[f"dec{level}/recruit"], level))
                    for level in range(config.levels - 1)]
        self.body = RecursionBody(config, decoders)
        self.passes = nn.Sequential(*(RecursionPass(self.body) for _ in range(int(macro["recursions"]))))


# --------------------------------------------------------------------------------------------------
# the NNI model space


@functools.cache
def _make_space_class():
    """Defined on first use, so that building a genotype's plain network never imports NNI."""
    from nas_restore.nni_layer import LayerChoice, ModelSpace, label_scope, nni

    Repeat = nni.nas.nn.pytorch.Repeat  # DARTS mixes its depths: one forward of the deepest serves all

    def choice(candidates: dict[str, nn.Module], label: str) -> nn.Module:
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return LayerChoice(candidates, label=label)

    class RDMCSpace(_RDMCBody, ModelSpace):
        """RDMC as an NNI model space: recursions (Repeat), upsampling and recruitment per decoder level."""

        def __init__(self, **settings: Any):
            super().__init__()
            config = RDMCConfig.from_dict(settings)
            self.config = config
            self.levels = config.levels
            decoders = []
            for level in range(config.levels - 1):
                with label_scope(f"dec{level}"):
                    up = choice({u: Upsample(u, config.width(level + 1), config.width(level))
                                 for u in config.upsamplings}, "upsample")
                    recruit = choice({s: make_recruit(config, s, level) for s in config.recruit_sources(level)},
                                     "recruit")
                decoders.append(DecoderLevel(config.width(level), up, recruit))
            self.body = RecursionBody(config, decoders)
            depth: Any = (config.recursions[0] if len(config.recursions) == 1
                          else nni.choice("recursions", sorted(config.recursions)))
            self.passes = Repeat([RecursionPass(self.body) for _ in range(max(config.recursions))], depth)

    return RDMCSpace


def make_space(config: RDMCConfig):
    """A fresh NNI ``ModelSpace`` (one-shot strategies mutate it in place: never reuse one)."""
    return _make_space_class()(**config.to_dict())


# --------------------------------------------------------------------------------------------------
# genotypes


def searched_labels(config: RDMCConfig) -> dict[str, list[str]]:
    """The labels the NNI space really has: choices with more than one candidate."""
    return {k: v for k, v in config.choices().items() if len(v) > 1}


def to_genotype(arch: dict[str, Any], config: RDMCConfig, metadata: dict[str, Any] | None = None) -> Genotype:
    """NNI architecture dict -> genotype (every choice in ``macro``, as strings)."""
    unknown = sorted(set(arch) - set(searched_labels(config)))
    if unknown:
        raise GenotypeError(f"the architecture has keys the rdmc space does not know: {unknown}")
    missing = sorted(set(searched_labels(config)) - set(arch))
    if missing:
        raise GenotypeError(f"the architecture answers no value for the rdmc choice(s) {missing}: give every "
                            "searched label (single-candidate choices may be left out)")
    macro = {key: str(arch.get(key, values[0])) for key, values in config.choices().items()}
    genotype = Genotype(space="rdmc", cells={}, macro=macro, space_config=config.to_dict(),
                        metadata=dict(metadata or {}))
    return validate_genotype(genotype)


def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
    """Genotype -> NNI architecture dict (``recursions`` back to an integer, as NNI's Repeat wants)."""
    config = RDMCConfig.from_dict(genotype.space_config)
    arch: dict[str, Any] = {key: genotype.macro[key] for key in searched_labels(config)}
    if "recursions" in arch:
        arch["recursions"] = int(arch["recursions"])
    return arch


def validate_genotype(genotype: Genotype) -> Genotype:
    try:
        config = RDMCConfig.from_dict(genotype.space_config)
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space_config: {err}") from None
    if genotype.cells:
        raise GenotypeError(f"cells: an rdmc genotype has no cells (all its choices are macro), got "
                            f"{sorted(genotype.cells)}")
    choices = config.choices()
    unknown = sorted(set(genotype.macro) - set(choices))
    if unknown:
        raise GenotypeError(f"macro has keys {unknown} that this rdmc space ({config.levels} levels) does not "
                            f"have; its keys: {', '.join(choices)}")
    genotype.validate(allowed_macro=choices)
    return genotype


register_space(SpaceSpec(
    name="rdmc",
    description="RDMC recursive image deraining: searched recursions, multi-scale dilated encoders, "
                "searched upsampling and cross-level recruitment",
    config_class=RDMCConfig,
    make_space=make_space,
    make_network=RDMCNet,
    to_genotype=to_genotype,
    validate_genotype=validate_genotype,
    presets=PRESETS,
    to_nni_arch=to_nni_arch,
))
