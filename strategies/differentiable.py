"""Differentiable (one-shot, weight-sharing) strategies: the DARTS family, through NNI."""

from __future__ import annotations

from strategies import StrategySpec, register_strategy


def _darts(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int):
    from nas_restore.nni_layer import nni  # noqa: F401  (applies our NNI import set-up first)
    from nni.nas.strategy import DARTS

    return DARTS(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                 warmup_epochs=warmup_epochs, log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="darts",
    family="differentiable",
    description="DARTS, first order (Liu et al. 2019), NNI's implementation: weights on the train split, "
                "architecture on the validation split, one alpha vector per cell edge",
    make=_darts,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0},
))
