"""Search spaces, found by name.

A space registers a :class:`SpaceSpec`: how to build its NNI ``ModelSpace`` for a search, how to turn
an NNI architecture dict into a :class:`~nas_restore.genotype.Genotype`, and how to build the plain
``nn.Module`` of a genotype (no NNI at inference).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from nas_restore.genotype import Genotype, GenotypeError

_SPACES: dict[str, "SpaceSpec"] = {}


@dataclass
class SpaceSpec:
    name: str
    description: str
    config_class: type
    make_space: Callable[..., Any]                       # (config) -> nni ModelSpace
    make_network: Callable[[Genotype], Any]              # genotype -> plain nn.Module
    to_genotype: Callable[[dict, Any, dict], Genotype]   # (nni arch dict, config, metadata) -> Genotype
    validate_genotype: Callable[[Genotype], Genotype]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self, preset: str | None = None, **overrides: Any) -> Any:
        """The space's config: its defaults, then a named preset, then explicit overrides."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                raise ValueError(f"space {self.name!r} has no preset {preset!r}; presets: {', '.join(self.presets)}")
            values.update(self.presets[preset])
        values.update(overrides)
        return self.config_class.from_dict(values)


def register_space(spec: SpaceSpec) -> SpaceSpec:
    _SPACES[spec.name] = spec
    return spec


def find_space(name: str, missing_ok: bool = False) -> SpaceSpec | None:
    _load_builtin()
    if name in _SPACES:
        return _SPACES[name]
    if missing_ok:
        return None
    close = difflib.get_close_matches(name, list(_SPACES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown search space {name!r}; known spaces: {', '.join(sorted(_SPACES))}.{hint} "
                   "(list them with `nas-restore spaces`)")


def list_spaces() -> list[SpaceSpec]:
    _load_builtin()
    return [_SPACES[n] for n in sorted(_SPACES)]


def _load_builtin() -> None:
    if not _SPACES:
        from search_spaces import tmics  # noqa: F401  (registers itself)


__all__ = ["SpaceSpec", "register_space", "find_space", "list_spaces", "GenotypeError"]
