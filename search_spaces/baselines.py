"""Hand-designed baselines: networks with no architecture choice, retrained beside searched genotypes.

``rescnn`` is a plain residual CNN (DnCNN/EDSR-style body, no BatchNorm): the frames of the window
stacked on the channels, a 3x3 conv to ``channels``, ``blocks`` residual blocks
(conv 3x3 -> ReLU -> conv 3x3, + input), a 3x3 conv to RGB, + the centre frame. It answers "does the
search beat a plain network of the same size?": its ``demo`` preset has about the parameter count of
the demo's searched TMICS genotype (``de40d40c90b2``: 35,520 weights; rescnn demo: 34,227).

Its genotype has no cells; ``macro`` repeats the config (channels, blocks, frames), so a rendered or
compared genotype shows its size. ``baseline_genotype()`` makes one (save it with ``.save(path)``
and retrain it like any genotype). There is nothing to search: ``make_space`` says so.
:func:`fixed_space` registers any such space without choices (``rescnn`` here, ``prn`` in ``prn.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from nas_restore.config import SIZE_LIMIT_NOTE, ConfigError, check_ranges, from_dict
from nas_restore.genotype import Genotype, GenotypeError
from search_spaces import SpaceSpec, find_space, register_space

BASELINE_PREFIX = "baseline (no search): "


@dataclass
class ResCNNConfig:
    channels: int = 16
    blocks: int = 7
    frames: int = 3

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResCNNConfig":
        return from_dict(cls, data, "space")  # runs validate() too

    def validate(self) -> None:
        if self.frames < 1 or self.frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1 (a window centred on t), got {self.frames}")
        check_ranges(self, {"frames": (1, 15), "channels": (1, 512), "blocks": (0, 128)}, SIZE_LIMIT_NOTE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "cpu": {},
    "demo": {"channels": 16, "blocks": 7, "frames": 3},     # ~ the demo's searched genotype in weights
    "paper": {"channels": 64, "blocks": 16, "frames": 5},
}


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResCNN(nn.Module):
    """The plain residual CNN; takes clips [B, T, 3, H, W] (or images [B, 3, H, W] when T = 1)."""

    def __init__(self, config: ResCNNConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.head = nn.Sequential(nn.Conv2d(3 * config.frames, c, 3, padding=1), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*(ResBlock(c) for _ in range(config.blocks)))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.shape[1] != self.config.frames:
            raise ValueError(f"rescnn was built for {self.config.frames} frame(s), got a clip of {x.shape[1]}")
        centre = x[:, x.shape[1] // 2]
        return centre + self.tail(self.body(self.head(x.flatten(1, 2))))


def fixed_space(name: str, config_class: Any, network: Callable[[Any], nn.Module], description: str,
                presets: dict[str, dict[str, Any]], retrain_hint: str) -> SpaceSpec:
    """Register a space without architecture choices (a hand design): its genotype has no cells, and its
    ``macro`` repeats the config, so that a rendered or compared genotype shows the network's size."""

    def macro(config: Any) -> dict[str, str]:
        return {k: str(v) for k, v in config.to_dict().items()}

    def make_space(config: Any) -> Any:
        raise ConfigError(f"{name} is a hand-designed baseline with no architecture choice: there is nothing to "
                          f"search. Retrain it beside searched genotypes ({retrain_hint})")

    def validate_genotype(genotype: Genotype) -> Genotype:
        try:
            config = config_class.from_dict(genotype.space_config)
        except (TypeError, ValueError) as err:
            raise GenotypeError(f"space_config: {err}") from None
        if genotype.cells:
            raise GenotypeError(f"cells: a {name} genotype has no cells, got {sorted(genotype.cells)}")
        expected = macro(config)
        if genotype.macro != expected:
            raise GenotypeError(f"macro {genotype.macro} does not repeat space_config: it must be {expected} "
                                f"({name} has no choices; change space_config and the macro together)")
        return genotype

    def to_genotype(arch: dict[str, Any], config: Any, metadata: dict[str, Any] | None = None) -> Genotype:
        if arch:
            raise GenotypeError(f"{name} has no architecture choices, got {sorted(arch)}")
        genotype = Genotype(space=name, cells={}, macro=macro(config), space_config=config.to_dict(),
                            metadata=dict(metadata or {}))
        return validate_genotype(genotype)

    def make_network(genotype: Genotype) -> nn.Module:
        return network(config_class.from_dict(genotype.space_config))

    return register_space(SpaceSpec(
        name=name, description=BASELINE_PREFIX + description, config_class=config_class, make_space=make_space,
        make_network=make_network, to_genotype=to_genotype, validate_genotype=validate_genotype, presets=presets,
        to_nni_arch=lambda genotype: {}))


def baseline_genotype(preset: str | None = "demo", **overrides: Any) -> Genotype:
    """The rescnn genotype for a preset and overrides (``baseline_genotype(channels=32)``)."""
    spec = find_space("rescnn")
    return spec.to_genotype({}, spec.config(preset, **overrides),
                            {"name": "rescnn", "strategy": "hand-designed baseline (no search)", "preset": preset})


fixed_space("rescnn", ResCNNConfig, ResCNN,
            "hand-designed residual CNN (channels, blocks, frames), to retrain beside searched genotypes", PRESETS,
            "`nas-restore retrain rescnn --out ...`, or a genotype from search_spaces.baselines.baseline_genotype()")

