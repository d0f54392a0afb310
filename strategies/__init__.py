"""Search strategies, found by name.

Each strategy is a :class:`StrategySpec`: a name, its family, documented defaults and a factory that
builds the configured NNI strategy. ``nas-restore strategies`` lists them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

_STRATEGIES: dict[str, "StrategySpec"] = {}


@dataclass
class StrategySpec:
    name: str
    family: str                      # "differentiable" (one-shot, weight sharing) or "multi-trial"
    description: str
    make: Callable[..., Any]         # (**options) -> configured NNI strategy
    defaults: dict[str, Any] = field(default_factory=dict)

    def build(self, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"strategy {self.name!r} has no option(s) {unknown}; its options: "
                             f"{', '.join(f'{k}={v!r}' for k, v in self.defaults.items())}")
        return self.make(**{**self.defaults, **options})

    @property
    def one_shot(self) -> bool:
        return self.family == "differentiable"


def register_strategy(spec: StrategySpec) -> StrategySpec:
    _STRATEGIES[spec.name] = spec
    return spec


def find_strategy(name: str) -> StrategySpec:
    _load_builtin()
    if name not in _STRATEGIES:
        close = difflib.get_close_matches(name, list(_STRATEGIES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown strategy {name!r}; known strategies: {', '.join(sorted(_STRATEGIES))}.{hint} "
                       "(list them with `nas-restore strategies`)")
    return _STRATEGIES[name]


def list_strategies() -> list[StrategySpec]:
    _load_builtin()
    return [_STRATEGIES[n] for n in sorted(_STRATEGIES)]


def _load_builtin() -> None:
    # imported every time (a no-op once loaded): a strategy module imported on its own registers only its
    # own strategies, so a non-empty registry does not mean that the built-ins are all there
    from strategies import differentiable  # noqa: F401  (registers itself)
    from strategies import multi_trial  # noqa: F401  (evolution, random, tpe)
    from strategies import second_order, triple_level  # noqa: F401  (darts2, tmics)
