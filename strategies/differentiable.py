"""Differentiable (one-shot, weight-sharing) strategies: the DARTS family, through NNI."""

from __future__ import annotations

import functools

from strategies import StrategySpec, register_strategy
from strategies.mixing import AutocastMixing


@functools.cache
def darts_class() -> type:
    """NNI's DARTS whose mixed edges sum in bf16 under autocast (strategies/mixing.py); the base of the family."""
    from nas_restore.nni_layer import nni  # noqa: F401  (applies our NNI import set-up first)
    from nni.nas.strategy import DARTS

    class AutocastDARTS(AutocastMixing, DARTS):
        """NNI's DARTS (first order); under mixed precision its edges mix in the candidates' dtype."""

    return AutocastDARTS


def _darts(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int):
    return darts_class()(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         warmup_epochs=warmup_epochs, log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="darts",
    family="differentiable",
    description="DARTS, first order (Liu et al. 2019), NNI's implementation: weights on the train split, "
                "architecture on the validation split, one alpha vector per cell edge",
    make=_darts,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0},
))


@functools.cache
def _gumbel_darts_class() -> type:
    from nas_restore.nni_layer import nni  # noqa: F401
    from nni.nas.strategy import GumbelDARTS

    class HardableGumbelDARTS(AutocastMixing, GumbelDARTS):
        """NNI's GumbelDARTS; ``hard`` makes the forward pass one-hot (straight-through) and runs only the
        sampled candidate of each edge, as GDAS (strategies.single_path)."""

        def __init__(self, *, hard: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.hard = bool(hard)

        def configure_softmax(self):
            softmax = super().configure_softmax()
            softmax.hard = self.hard
            return softmax

        def default_mutation_hooks(self):
            hooks = super().default_mutation_hooks()
            if self.hard:  # GDAS: LayerChoices and factory cells run only their sampled candidate
                from strategies.single_path import hard_gumbel_hooks

                hooks = hard_gumbel_hooks() + hooks
            return hooks

    return HardableGumbelDARTS


def _gdas(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int,
          temperature_init: float, temperature_min: float, hard: bool):
    if not float(temperature_init) >= float(temperature_min) > 0:
        raise ValueError(f"gdas needs temperature_init >= temperature_min > 0, got {temperature_init} and "
                         f"{temperature_min}")
    return _gumbel_darts_class()(
        hard=hard, arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
        warmup_epochs=warmup_epochs, temperature=(float(temperature_init), float(temperature_min)),
        log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="gdas",
    family="differentiable",
    description="GDAS-style Gumbel-softmax DARTS (Dong & Yang 2019), NNI's GumbelDARTS: the edge weights are "
                "Gumbel-softmax samples of the alphas, temperature annealed linearly from temperature_init to "
                "temperature_min over the epochs; hard=True samples one-hot (straight-through) and runs only the "
                "sampled op of each edge, forward and backward",
    make=_gdas,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0,
              "temperature_init": 10.0, "temperature_min": 0.1, "hard": False},
))
