"""``tmics``: the triple-level search of TMICS (Mu et al., IEEE TIP 2022), on NNI's DARTS.

Three groups of variables, three optimisers, one training step per batch pair:

1. *middle level* - architecture weights (the cells' operation alphas and the OFM/TGM alignment
   alpha): one step on the **validation** batch (first order by default, ``unrolled=True`` for the
   second-order gradient of :mod:`strategies.second_order`);
2. *upper level* - the AAS fusion weight lambda (the parameters of the space's fusion module, by
   name: ``fusion.*`` in the tmics space): one step of a third optimiser on the **validation** batch,
   with a fresh forward pass after the architecture step, so lambda answers the current architecture;
3. *lower level* - every other network weight: one step of the evaluator's weight optimiser on the
   **training** batch (the fusion parameters are taken out of that optimiser).

docs/strategies.md states where this departs from the paper (whose equations are not available
here: see ../shared/seeds/RESEARCH.md section 1.4).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from strategies import StrategySpec, register_strategy
from strategies.second_order import module_classes


def _as_prefixes(value: str | Sequence[str]) -> tuple[str, ...]:
    prefixes = (value,) if isinstance(value, str) else tuple(value)
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"fusion_parameters must name parameter prefixes (e.g. 'fusion'), got {value!r}")
    return prefixes


def matches(name: str, prefixes: Sequence[str]) -> bool:
    """Whether parameter ``name`` lies under one of the module ``prefixes`` ("fusion" -> "fusion.*")."""
    return any(name == p or name.startswith(p.rstrip(".") + ".") for p in prefixes)


@functools.cache
def module_class() -> type:
    base = module_classes()["second_order"]

    class TripleLevelModule(base):
        """DARTS's two levels plus an upper level (lambda) with its own optimiser on the validation split."""

        def __init__(self, training_module, *, fusion_parameters: Sequence[str] = ("fusion",),
                     fusion_learning_rate: float = 1e-3, **kwargs):
            super().__init__(training_module, **kwargs)
            self.fusion_prefixes = _as_prefixes(fusion_parameters)
            if not fusion_learning_rate > 0:
                raise ValueError(f"fusion_learning_rate must be > 0, got {fusion_learning_rate}")
            self.fusion_learning_rate = fusion_learning_rate

        def upper_parameters(self) -> list[torch.nn.Parameter]:
            """The AAS (lambda) parameters, found by name in the model space."""
            found = [p for n, p in self.training_module.model.named_parameters() if matches(n, self.fusion_prefixes)]
            if not found:
                raise ValueError(f"the space has no parameters under {list(self.fusion_prefixes)}: the tmics "
                                 "strategy needs the AAS fusion module (set the strategy option fusion_parameters "
                                 "to the fusion module's name)")
            return found

        def postprocess_weight_optimizers(self, optimizer):
            upper = {id(p) for p in self.upper_parameters()}
            optimizer = super().postprocess_weight_optimizers(optimizer)
            for opt in _optimizers_in(optimizer):
                for group in opt.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in upper]
            return optimizer

        def configure_architecture_optimizers(self):
            arch = super().configure_architecture_optimizers()
            upper = torch.optim.Adam(self.upper_parameters(), lr=self.fusion_learning_rate, betas=(0.9, 0.999))
            upper.is_upper_optimizer = True
            return [arch, upper]

        def upper_optimizer(self):
            found = self.architecture_optimizers()
            found = [o for o in (found if isinstance(found, list) else [found])
                     if getattr(o, "is_upper_optimizer", False)]
            if len(found) != 1:
                raise TypeError(f"expected one upper-level (fusion) optimiser, found {len(found)}")
            return found[0]

        def upper_step(self, val_batch: Any, batch_idx: int) -> None:
            """Upper level: one step of lambda (the AAS parameters) on the validation loss."""
            optimizer = self.upper_optimizer()
            params = self.upper_parameters()
            self.resample()
            optimizer.zero_grad()
            loss = self.loss_on(val_batch, 2 * batch_idx)
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                p.grad = None if g is None else g.detach()
            optimizer.step()
            self.log("upper_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=_batch_size(val_batch))

    return TripleLevelModule


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0]) if hasattr(first, "shape") else 1


def _optimizers_in(conf: Any) -> list[Any]:
    """Every torch optimiser inside a Lightning ``configure_optimizers`` result."""
    if isinstance(conf, torch.optim.Optimizer):
        return [conf]
    if isinstance(conf, dict):
        return _optimizers_in(conf.get("optimizer"))
    if isinstance(conf, (list, tuple)):
        return [o for item in conf for o in _optimizers_in(item)]
    return []


@functools.cache
def strategy_class() -> type:
    from strategies.differentiable import darts_class

    module = module_class()

    class TripleLevelDARTS(darts_class()):
        """TMICS's triple-level search: weights (train split), architecture (validation), lambda (validation)."""

        def __init__(self, *, fusion_parameters: Sequence[str] = ("fusion",), fusion_learning_rate: float = 1e-3,
                     unrolled: bool = False, xi: float | None = None, **kwargs):
            super().__init__(**kwargs)
            self.fusion_parameters = _as_prefixes(fusion_parameters)
            self.fusion_learning_rate = fusion_learning_rate
            self.unrolled = unrolled
            self.xi = xi

        def configure_oneshot_module(self, training_module):
            return module(
                training_module, fusion_parameters=self.fusion_parameters,
                fusion_learning_rate=self.fusion_learning_rate, unrolled=self.unrolled, xi=self.xi,
                arc_learning_rate=self.arc_learning_rate, gradient_clip_val=self.gradient_clip_val,
                log_prob_every_n_step=self.log_prob_every_n_step, warmup_epochs=self.warmup_epochs,
                penalty=self.penalty)

    return TripleLevelDARTS


def _tmics(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int,
           fusion_learning_rate: float, fusion_parameters: str | list[str], unrolled: bool, xi: float | None):
    return strategy_class()(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                            warmup_epochs=warmup_epochs, fusion_learning_rate=fusion_learning_rate,
                            fusion_parameters=fusion_parameters, unrolled=bool(unrolled), xi=xi,
                            log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="tmics",
    family="differentiable",
    description="TMICS triple-level search (Mu et al. 2022): weights on the train split, architecture (cell ops, "
                "OFM/TGM) on the validation split, then the AAS fusion weight lambda (parameters named "
                "fusion.*) by a third optimiser on the validation split; see docs/strategies.md",
    make=_tmics,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0,
              "fusion_learning_rate": 1e-3, "fusion_parameters": "fusion", "unrolled": False, "xi": None},
))
