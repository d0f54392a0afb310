"""DARTS's mixed edges under autocast: the weighted sum of the candidates in their own dtype.

NNI's mixed layers and cells multiply each candidate's output (bfloat16 under autocast) by an fp32 softmax
weight. The products, the edge sums and every node are then fp32, twice the memory traffic, and each
candidate op of the next edge casts that fp32 input back to bfloat16 on its own (autocast caches the casts
of weights, not of activations): a paper-size DARTS step ran no faster in bf16 than in fp32, with a quarter of
its time in casts (reports/search_step_cpu.md). Here, under autocast, each weight is cast to its output's dtype
first (the gradient still reaches the fp32 alphas through the cast) and the edge is a running sum, without
NNI's stacked copy of every output. Without autocast NNI's own forward runs unchanged, so an fp32 search
computes exactly what NNI computes.

:class:`AutocastMixing` is a mixin for NNI strategies of the DARTS family: it puts these modules' hooks first.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch


def mix(outputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * outputs[k]`` in the outputs' dtype; a trailing weight without an output (DARTS's
    ``none``, the zero op) adds nothing, as in NNI."""
    total = None
    for out, weight in zip(outputs, weights):
        term = out * weight.to(out.dtype)
        total = term if total is None else total + term
    return total


def _autocast_on(reference: Any) -> bool:
    device = reference.device.type if isinstance(reference, torch.Tensor) else "cpu"
    return torch.is_autocast_enabled(device)


@functools.cache
def mixed_classes() -> dict[str, type]:
    """NNI's DARTS mixed layer and cell, summing in the candidates' dtype under autocast (NNI imported on first use)."""
    from nas_restore.nni_layer import nni  # noqa: F401  (our NNI import set-up first)
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell, DifferentiableMixedLayer

    class AutocastMixedLayer(DifferentiableMixedLayer):
        """A DARTS LayerChoice; under autocast the weighted sum runs in the candidates' dtype."""

        def forward(self, *args, **kwargs):
            if not args or not _autocast_on(args[0]):
                return super().forward(*args, **kwargs)
            outputs = [self[op](*args, **kwargs) for op in self.names]
            if not all(isinstance(out, torch.Tensor) for out in outputs):  # tuples: NNI's nested weighted sum
                return self._reduction(outputs, self._softmax(self._arch_alpha))
            return mix(outputs, self._softmax(self._arch_alpha))

    class AutocastMixedCell(DifferentiableMixedCell):
        """A DARTS cell; under autocast every edge's weighted sum runs in the candidates' dtype."""

        def forward(self, *inputs):
            processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
            if not processed or not _autocast_on(processed[0]):
                return super().forward(*inputs)
            states = self.preprocessor(processed)
            for i, ops in enumerate(self.ops, start=self.num_predecessors):
                edges = [mix([op(states[j]) for op in ops[j].values()],
                             self._softmax(self._arch_alpha[f"{self.label}/{i}_{j}"])) for j in range(i)]
                states.append(sum(edges))
            return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)

    return {"layer": AutocastMixedLayer, "cell": AutocastMixedCell}


class AutocastMixing:
    """Mixin for an NNI DARTS-family strategy: its mixed layers and cells are :func:`mixed_classes`'s."""

    def default_mutation_hooks(self):  # noqa: D401  (NNI's hook list, ours first: the first module returned wins)
        classes = mixed_classes()
        return [classes["cell"].mutate, classes["layer"].mutate] + super().default_mutation_hooks()


__all__ = ["mix", "mixed_classes", "AutocastMixing"]
