"""``darts2``: second-order DARTS (Liu et al. 2019, eq. 6-8), on top of NNI's first-order DARTS.

The architecture gradient is taken through one virtual SGD step of the weights (the "unrolled"
model), and the second-order term is a finite-difference Hessian-vector product:

    w'  = w - xi * grad_w L_train(w, a)
    g_a = grad_a L_val(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)
    w+- = w +- eps * grad_w' L_val(w', a),   eps = 0.01 / ||grad_w' L_val(w', a)||

:func:`unrolled_arch_gradient` computes ``g_a`` for any pair of loss closures (so it is checked
against a numerical derivative in the tests); :func:`module_classes` builds the NNI Lightning
modules that use it. ``xi`` defaults to the weight optimiser's current learning rate.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from strategies import StrategySpec, register_strategy

Closure = Callable[[], Tensor]


def _grads(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    found = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]


@torch.no_grad()
def _set(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def unrolled_arch_gradient(train_loss: Closure, val_loss: Closure, weights: Sequence[Tensor],
                           alphas: Sequence[Tensor], xi: float, eps_scale: float = 0.01) -> tuple[list[Tensor], Tensor]:
    """The second-order DARTS gradient of the unrolled validation loss w.r.t. ``alphas``.

    ``train_loss`` / ``val_loss`` evaluate the loss at the parameters' current values (they are
    called several times while the weights are moved). The weights are restored exactly before
    returning, also on error. Returns (one gradient per alpha, L_val(w', a) detached).
    """
    weights, alphas = list(weights), list(alphas)
    saved = [w.detach().clone() for w in weights]
    try:
        grad_w = _grads(train_loss(), weights)
        _set(weights, [w - xi * g for w, g in zip(saved, grad_w)])             # w' (virtual step)
        loss_val = val_loss()
        found = _grads(loss_val, alphas + weights)
        grad_a, grad_w_val = found[:len(alphas)], found[len(alphas):]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grad_w_val))
        if xi == 0 or not norm > 0:
            return grad_a, loss_val.detach()
        eps = eps_scale / float(norm)
        _set(weights, [w + eps * g for w, g in zip(saved, grad_w_val)])         # w+
        grad_plus = _grads(train_loss(), alphas)
        _set(weights, [w - eps * g for w, g in zip(saved, grad_w_val)])         # w-
        grad_minus = _grads(train_loss(), alphas)
        hessian = [(gp - gm) / (2 * eps) for gp, gm in zip(grad_plus, grad_minus)]
        return [ga - xi * h for ga, h in zip(grad_a, hessian)], loss_val.detach()
    finally:
        _set(weights, saved)


@contextlib.contextmanager
def quiet_logging(module: Any) -> Iterator[None]:
    """Silence ``module.log``/``log_dict`` for extra loss evaluations, so that the epoch's logged
    training loss stays the loss of the weight steps."""
    saved = module.__dict__.get("log"), module.__dict__.get("log_dict")
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for name, value in zip(("log", "log_dict"), saved):
            if value is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, value)


def step_loss(result: Any) -> Tensor:
    """The loss of a Lightning ``training_step`` result (a tensor or a dict with ``loss``)."""
    return result["loss"] if isinstance(result, dict) else result


@functools.cache
def module_classes() -> dict[str, type]:
    """NNI's DARTS Lightning module split into an architecture step and a weight step, and its
    second-order subclass. Built on first use: listing strategies does not import NNI."""
    from nas_restore.nni_layer import nni  # noqa: F401  (our NNI import set-up first)
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule

    class StagedDartsModule(DartsLightningModule):
        """NNI's DARTS step as two overridable halves: ``architecture_step`` (validation batch,
        after the warm-up epochs) then ``weight_step`` (training batch)."""

        def training_step(self, batch, batch_idx):
            trn_batch, val_batch = batch["train"], batch["val"]
            if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
                self.architecture_step(trn_batch, val_batch, batch_idx)
            self.upper_step(val_batch, batch_idx)
            result = self.weight_step(trn_batch, batch_idx)
            if batch_idx % self.log_prob_every_n_step == 0:
                self.log_probs(self.export_probs())
            return result

        def arch_optimizer(self):
            found = self.architecture_optimizers()
            found = found if isinstance(found, list) else [found]
            found = [o for o in found if not getattr(o, "is_upper_optimizer", False)]
            if len(found) != 1:
                raise TypeError(f"expected one architecture optimiser, found {len(found)}")
            return found[0]

        def loss_on(self, batch: Any, batch_idx: int) -> Tensor:
            """The training module's loss on ``batch``, not logged."""
            with quiet_logging(self.training_module):
                return step_loss(self.training_module.training_step(batch, batch_idx))

        def architecture_step(self, trn_batch: Any, val_batch: Any, batch_idx: int) -> None:
            """First order: one optimiser step of the alphas on the validation loss."""
            optimizer = self.arch_optimizer()
            self.resample()
            optimizer.zero_grad()
            loss = self.loss_on(val_batch, 2 * batch_idx)
            if self.penalty is not None:
                loss, details = self.penalty(loss, self.export_probs())
                self.log_dict({f"penalty/{k}": v for k, v in details.items()})
            self.manual_backward(loss)
            optimizer.step()

        def upper_step(self, val_batch: Any, batch_idx: int) -> None:
            """A third level's step (none in DARTS; see strategies.triple_level)."""

        def weight_step(self, trn_batch: Any, batch_idx: int) -> Any:
            self.resample()
            result = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
            self.advance_optimization(step_loss(result), batch_idx, self.gradient_clip_val)
            self.advance_lr_schedulers(batch_idx)
            return result

        def weight_parameters(self) -> list[Tensor]:
            """The parameters the weight optimiser trains (what the unrolled step moves)."""
            arch = {id(p) for p in self.arch_parameters()}
            weights = []
            for optimizer in self.trainer.optimizers:
                if getattr(optimizer, "is_arch_optimizer", False):
                    continue
                for group in optimizer.param_groups:
                    weights += [p for p in group["params"] if p.requires_grad and id(p) not in arch]
            return weights

        def weight_lr(self) -> float:
            for optimizer in self.trainer.optimizers:
                if not getattr(optimizer, "is_arch_optimizer", False):
                    return float(optimizer.param_groups[0]["lr"])
            raise RuntimeError("no weight optimiser found")

    class SecondOrderDartsModule(StagedDartsModule):
        """DARTS with the unrolled (second-order) architecture gradient."""

        def __init__(self, training_module, *, xi: float | None = None, unrolled: bool = True, **kwargs):
            super().__init__(training_module, **kwargs)
            if xi is not None and xi < 0:
                raise ValueError(f"xi (the virtual step size) must be >= 0 or None (the weight lr), got {xi}")
            self.xi = xi
            self.unrolled = unrolled

        def architecture_step(self, trn_batch: Any, val_batch: Any, batch_idx: int) -> None:
            if not self.unrolled:
                return super().architecture_step(trn_batch, val_batch, batch_idx)
            if self.penalty is not None:
                raise ValueError("the second-order step has no profiler penalty: use darts for penalties")
            optimizer = self.arch_optimizer()
            self.resample()
            optimizer.zero_grad()
            alphas = self.arch_parameters()
            xi = self.weight_lr() if self.xi is None else self.xi
            grads, _ = unrolled_arch_gradient(lambda: self.loss_on(trn_batch, 2 * batch_idx + 1),
                                              lambda: self.loss_on(val_batch, 2 * batch_idx),
                                              self.weight_parameters(), alphas, xi)
            for alpha, grad in zip(alphas, grads):
                alpha.grad = grad.detach()
            optimizer.step()

    return {"staged": StagedDartsModule, "second_order": SecondOrderDartsModule}


@functools.cache
def strategy_classes() -> dict[str, type]:
    """NNI strategy subclasses that build the modules above."""
    from strategies.differentiable import darts_class

    modules = module_classes()

    class SecondOrderDARTS(darts_class()):
        """NNI's DARTS with the unrolled architecture gradient (NNI has only the first order)."""

        def __init__(self, *, xi: float | None = None, **kwargs):
            super().__init__(**kwargs)
            self.xi = xi

        def configure_oneshot_module(self, training_module):
            return modules["second_order"](
                training_module, xi=self.xi, arc_learning_rate=self.arc_learning_rate,
                gradient_clip_val=self.gradient_clip_val, log_prob_every_n_step=self.log_prob_every_n_step,
                warmup_epochs=self.warmup_epochs, penalty=self.penalty)

    return {"darts2": SecondOrderDARTS}


def _darts2(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int, xi: float | None):
    return strategy_classes()["darts2"](arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                                        warmup_epochs=warmup_epochs, xi=xi, log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="darts2",
    family="differentiable",
    description="DARTS, second order (Liu et al. 2019, eq. 7-8): the architecture gradient through one virtual "
                "weight step, with the finite-difference Hessian-vector product; xi=None uses the weight lr. "
                "About 2x the cost of an architecture step of darts",
    make=_darts2,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0, "xi": None},
))
