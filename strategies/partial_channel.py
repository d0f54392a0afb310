"""``pcdarts``: partial channel connections with edge normalisation (PC-DARTS, Xu et al. 2020), on NNI's DARTS.

On every mixed edge only ``1/K`` of the input channels go through the candidate operations; the
other channels bypass the edge, and a channel shuffle interleaves the two parts so that the next
edge sees other channels on its partial path (the paper's code: the first ``C/K`` channels, then
``channel_shuffle``). The candidates are built at ``C/K`` channels: NNI's mixed modules hold
candidates already built at ``C``, so the mutation hooks here rebuild each edge's candidates from the
operation registry by name (our op factories and ``LayerChoice`` candidates are keyed by op name).
``C`` is read off the built candidates (the first ``Conv2d``'s input channels) and checked by
rebuilding every candidate at ``C`` and comparing the parameter shapes.

Edge normalisation: each DAG-cell node gets a vector beta over its inputs; the node is the
softmax(beta)-weighted sum of its edges, and the derived cell ranks the (input, op) pairs by
``softmax(alpha_edge)[op] * softmax(beta_node)[input]``. The exported dict has darts's keys and
values. ``LayerChoice`` edges whose candidates are registered ops (chain cells, rrgnet's ``op``
choices) get partial channels without betas (a single input); other choices (the OFM/TGM
alignment, rrgnet's width/depth/grouping) stay ordinary DARTS mixed layers.
"""

from __future__ import annotations

import collections
import functools
import logging
from typing import Mapping

import torch
from torch import nn

from nas_restore.ops import OPS, build_op
from strategies import StrategySpec, register_strategy
from strategies.mixing import mix

log = logging.getLogger(__name__)


def partial_size(channels: int, k: int) -> int:
    """Channels on the partial path of an edge: ``C // K``, at least one."""
    return max(1, channels // k)


@functools.lru_cache(maxsize=64)
def _shuffle_order(channels: int, part: int) -> tuple[int, ...]:
    # channel i of the concatenation goes to rank (i % part, i // part): the paper's channel_shuffle
    # (view as [K, C/K], transpose) when part divides channels, and an interleave otherwise
    return tuple(sorted(range(channels), key=lambda i: (i % part, i // part)))


def channel_shuffle(x: torch.Tensor, part: int) -> torch.Tensor:
    """Interleave the channels of ``x`` in groups of ``part`` (PC-DARTS's ``channel_shuffle``)."""
    channels = x.shape[1]
    if part >= channels:
        return x
    if channels % part == 0:
        groups = channels // part
        return x.view(x.shape[0], groups, part, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
    index = torch.tensor(_shuffle_order(channels, part), device=x.device)
    return x.index_select(1, index)


def partial_mix(x: torch.Tensor, ops: list[nn.Module], weights: torch.Tensor, k: int) -> torch.Tensor:
    """sum_o w_o * op_o(x[:, :C/K]) next to the bypassed x[:, C/K:], channel-shuffled.

    ``weights`` may hold one more entry than ``ops`` (DARTS's ``none``): its output is zero.
    """
    part = partial_size(x.shape[1], k)
    xp, rest = x[:, :part], x[:, part:]
    mixed = mix([op(xp) for op in ops], weights)  # in the ops' dtype (bf16 under autocast: strategies/mixing.py)
    if rest.shape[1] == 0:
        return mixed
    return channel_shuffle(torch.cat([mixed, rest], 1), part)


def infer_channels(candidates: Mapping[str, nn.Module]) -> int | None:
    """The input channels ``C`` the registered-op ``candidates`` were built at, or None.

    None when a candidate is not a registered op, when no candidate has a ``Conv2d`` or when
    rebuilding a candidate at the inferred ``C`` does not give its parameter shapes.
    """
    if not candidates or not all(OPS.find(str(name)) is not None for name in candidates):
        return None
    found = []
    for module in candidates.values():
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            found.append(int(conv.in_channels))
    if not found:
        return None
    channels = collections.Counter(found).most_common(1)[0][0]
    for name, module in candidates.items():
        rebuilt = build_op(str(name), channels)
        if [tuple(p.shape) for p in rebuilt.parameters()] != [tuple(p.shape) for p in module.parameters()]:
            return None
    return channels


def _rebuild(names: list[str], channels: int, k: int, where: str) -> dict[str, nn.Module]:
    part = partial_size(channels, k)
    try:
        return {name: build_op(name, part) for name in names}
    except Exception as err:  # an op that cannot be built this narrow
        raise ValueError(f"pcdarts: cannot build the operations of {where} at {part} channels "
                         f"({channels} channels / k={k}): {err}; lower k") from err


@functools.cache
def supermodule_classes() -> dict[str, type]:
    """The partial-channel supernet modules (NNI imported on first use)."""
    from nas_restore.nni_layer import nni  # noqa: F401  (our NNI import set-up first)
    from nni.nas.nn.pytorch import Cell, LayerChoice
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell, DifferentiableMixedLayer

    class PartialChannelMixedLayer(DifferentiableMixedLayer):
        """A DARTS mixed layer whose candidates run on ``C/K`` channels (built at ``C/K``)."""

        partial_k: int = 4
        channels: int = 0

        @classmethod
        def mutate(cls, module, name, memo, mutate_kwargs):
            if type(module) is not LayerChoice:
                return None
            channels = infer_channels(dict(zip(module.names, (module[n] for n in module.names))))
            if channels is None:
                return None  # not an op-registry choice (alignment, width, depth): a plain mixed layer
            k = int(mutate_kwargs["partial_k"])
            candidates = _rebuild([str(n) for n in module.names], channels, k, f"LayerChoice {module.label!r}")
            layer = cls(candidates, memo[module.label], mutate_kwargs.get("softmax", nn.Softmax(-1)), module.label)
            layer.partial_k, layer.channels = k, channels
            return layer

        def forward(self, x):
            weights = self._softmax(self._arch_alpha)
            return partial_mix(x, [self[n] for n in self.names], weights, self.partial_k)

    class PartialChannelMixedCell(DifferentiableMixedCell):
        """NNI's DARTS cell with partial-channel edges and, optionally, edge normalisation (betas)."""

        _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_beta"]

        def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                     concat_dim, memo, mutate_kwargs, label, *, partial_k: int = 4, channels: int = 0,
                     edge_normalization: bool = True):
            super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                             concat_dim, memo, mutate_kwargs, label)
            self.partial_k, self.channels, self.edge_normalization = partial_k, channels, edge_normalization
            self._arch_beta = nn.ParameterDict()
            if edge_normalization:
                for i in range(self.num_predecessors, self.num_nodes + self.num_predecessors):
                    label = f"{self.label}/beta_{i}"
                    memo_label = label + "/in_cell"   # shared by the cells of one label, as their alphas
                    if memo_label not in memo:
                        memo[memo_label] = nn.Parameter(torch.randn(i) * 1e-3)
                    self._arch_beta[label] = memo[memo_label]

        @classmethod
        def mutate(cls, module, name, memo, mutate_kwargs):
            if type(module) is not Cell or not isinstance(module.op_candidates_factory, dict):
                return None
            factory = module.op_candidates_factory
            probe = {op: make(module.num_predecessors, 0, 0) for op, make in factory.items()}
            channels = infer_channels(probe)
            if channels is None:
                raise ValueError(f"pcdarts: cannot tell the channels of cell {module.label!r}: its operations "
                                 f"{sorted(factory)} must be registered ops (nas-restore ops) with a Conv2d")
            k = int(mutate_kwargs["partial_k"])
            _rebuild(list(factory), channels, k, f"cell {module.label!r}")  # fails early, with the cell's name
            part = partial_size(channels, k)
            narrow = {op: (lambda node_index, op_index, input_index=None, op=op: build_op(op, part)) for op in factory}
            return cls(narrow, module.num_nodes, module.num_ops_per_node, module.num_predecessors, module.preprocessor,
                       module.postprocessor, module.concat_dim, memo, mutate_kwargs, module.label,
                       partial_k=k, channels=channels, edge_normalization=bool(mutate_kwargs["edge_normalization"]))

        def arch_parameters(self):
            for name, p in self.named_parameters():
                if name.startswith("_arch_alpha") or name.startswith("_arch_beta"):
                    yield p

        def edge_weights(self, i: int, j: int) -> torch.Tensor:
            """softmax(alpha) of edge i <- j (with the trailing ``none``)."""
            return self._softmax(self._arch_alpha[f"{self.label}/{i}_{j}"])

        def node_weights(self, i: int) -> torch.Tensor | None:
            """softmax(beta) over node i's inputs (None without edge normalisation)."""
            if not self.edge_normalization:
                return None
            return torch.softmax(self._arch_beta[f"{self.label}/beta_{i}"], -1)

        def forward(self, *inputs):
            processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
            states = self.preprocessor(processed)
            for i, ops in enumerate(self.ops, start=self.num_predecessors):
                betas = self.node_weights(i)
                edges = []
                for j in range(i):
                    edge = partial_mix(states[j], list(ops[j].values()), self.edge_weights(i, j), self.partial_k)
                    edges.append(edge if betas is None else betas[j].to(edge.dtype) * edge)
                states.append(sum(edges))
            return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)

        def export(self, memo):
            """darts's keys and values; (input, op) pairs ranked by softmax(alpha)[op] * softmax(beta)[input]."""
            exported = {}
            for i in range(self.num_predecessors, self.num_nodes + self.num_predecessors):
                if all(f"{self.label}/op_{i}_{k}" in memo and f"{self.label}/input_{i}_{k}" in memo
                       for k in range(self.num_ops_per_node)):
                    continue
                with torch.no_grad():
                    betas = self.node_weights(i)
                    ranked = []
                    for j in range(i):
                        probs = self.edge_weights(i, j)
                        scale = 1.0 if betas is None else float(betas[j])
                        ranked += [(float(probs[k]) * scale, j, name) for k, name in enumerate(self.op_names)]
                ranked.sort(reverse=True)
                # as NNI's DARTS cell: the best pair of each distinct input first (by weight), then the rest
                firsts = sorted(ranked.index(next(t for t in ranked if t[1] == j)) for j in range(i))
                ranked = [ranked[p] for p in firsts] + [t for p, t in enumerate(ranked) if p not in firsts]
                for k in range(self.num_ops_per_node):
                    _, j, op = ranked[k % len(ranked)]
                    exported[f"{self.label}/op_{i}_{k}"] = op
                    exported[f"{self.label}/input_{i}_{k}"] = [j]
            return exported

    return {"layer": PartialChannelMixedLayer, "cell": PartialChannelMixedCell}


@functools.cache
def strategy_class() -> type:
    from strategies.differentiable import darts_class

    classes = supermodule_classes()

    class PCDARTS(darts_class()):
        """NNI's DARTS with partial-channel mixed edges (C/K) and edge normalisation (PC-DARTS)."""

        def __init__(self, *, k: int = 4, edge_normalization: bool = True, **kwargs):
            super().__init__(**kwargs)
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"pcdarts needs k (1/k of the channels on the mixed path) an integer >= 1, got {k!r}")
            self.k = k
            self.edge_normalization = bool(edge_normalization)

        def default_mutation_hooks(self):
            extra = {"partial_k": self.k, "edge_normalization": self.edge_normalization}

            def hook(cls):
                return lambda module, name, memo, kwargs: cls.mutate(module, name, memo, {**kwargs, **extra})

            # first: a hook that returns a module suppresses the later ones (NNI's plain mixed modules)
            return [hook(classes["cell"]), hook(classes["layer"])] + super().default_mutation_hooks()

    return PCDARTS


def _pcdarts(arc_learning_rate: float, gradient_clip_val: float | None, warmup_epochs: int, k: int,
             edge_normalization: bool):
    return strategy_class()(k=k, edge_normalization=edge_normalization, arc_learning_rate=arc_learning_rate,
                            gradient_clip_val=gradient_clip_val, warmup_epochs=warmup_epochs,
                            log_prob_every_n_step=10**9)


register_strategy(StrategySpec(
    name="pcdarts",
    family="differentiable",
    description="PC-DARTS (Xu et al. 2020): DARTS whose mixed edges run the candidate ops on 1/k of the channels "
                "(built at C/k; the rest bypass, then a channel shuffle), with edge normalisation (a softmax beta "
                "over each node's inputs, also used to derive the cell)",
    make=_pcdarts,
    defaults={"arc_learning_rate": 3e-4, "gradient_clip_val": 5.0, "warmup_epochs": 0, "k": 4,
              "edge_normalization": True},
))
