"""Search strategies, found by name.

Each strategy is a :class:`StrategySpec`: a name, its family, documented defaults and a factory that
builds the configured NNI strategy. ``nas-restore strategies`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nas_restore.config import ConfigError, coerce
from nas_restore.registry import Registry


def _load_builtin() -> None:
    # imported every time (a no-op once loaded): a strategy module imported on its own registers only its
    # own strategies, so a non-empty registry does not mean that the built-ins are all there
    from strategies import differentiable, multi_trial, partial_channel, second_order, single_path, triple_level  # noqa: F401,E501


STRATEGIES: Registry["StrategySpec"] = Registry("strategy", listing="nas-restore strategies", load=_load_builtin)


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
            raise ConfigError(f"strategy {self.name!r} has no option(s) {unknown}; choose from its options: "
                             f"{', '.join(f'{k}={v!r}' for k, v in self.defaults.items())}")
        for key, value in options.items():  # typed by the default: `arc_learning_rate=fast` is refused here
            default = self.defaults[key]
            if default is not None and value is not None:
                options[key] = coerce(value, type(default), f"strategy option {self.name}.{key}")
        try:
            return self.make(**{**self.defaults, **options})
        except (TypeError, ValueError) as err:
            if not options:
                raise  # the defaults themselves fail: a bug, not the user's input
            raise ConfigError(f"strategy {self.name!r} refused the option(s) {options}: {err}. Its options and "
                              f"defaults: {', '.join(f'{k}={v!r}' for k, v in self.defaults.items())}") from None

    @property
    def one_shot(self) -> bool:
        return self.family == "differentiable"


def register_strategy(spec: StrategySpec) -> StrategySpec:
    return STRATEGIES.register(spec.name, spec, replace=True)  # replace: a strategy module may be reloaded


def find_strategy(name: str) -> StrategySpec:
    return STRATEGIES.lookup(name)


def list_strategies() -> list[StrategySpec]:
    return [STRATEGIES[n] for n in sorted(STRATEGIES.names())]
