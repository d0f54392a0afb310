"""A trained one-shot supernet kept on disk, rebuilt, and run with its architecture fixed to one sample.

A one-shot search trains every architecture of the space at once; whether the weights it shares rank
the architectures as training each alone would is what ``nas-restore trust`` asks. For that the search
keeps its supernet (:func:`save_supernet`: ``RUN/supernet.pt``, plain tensors and plain settings, read
with ``torch.load(weights_only=True)``), and the check rebuilds it (:func:`rebuild_supernet`: the
space, then the strategy's own mutation into a supernet, then the weights) and scores one architecture
at a time with the inherited weights (:func:`fixed_architecture`).

Fixing a sample, per kind of NNI 3.0 supernet module:

* path-sampling modules (``spos``: NNI's ``RandomOneShot``): NNI's own ``resample(memo=sample)``, the
  call NNI's path sampling makes every step, with the sample as the memo;
* differentiable layer-level modules (``LayerChoice``, single ``InputChoice``, ``Repeat`` depth, mixed
  operations; also gdas's Gumbel softmax and hard argmax, and pcdarts's partial-channel layers): their
  architecture logits are pinned to the sample (0 on the chosen candidate, -1e4 elsewhere, so that the
  softmax is exactly one-hot and the argmax is the chosen one), then put back;
* differentiable DARTS cells (NNI's ``DifferentiableMixedCell`` and the gdas-hard subclass): NNI's own
  single-path cell forward (``PathSamplingCell``, which the DARTS cell derives from), on the cell's own
  edge operations: each chosen (input, operation) pair runs with weight 1, exactly the derived cell;
* pcdarts cells: each chosen pair runs its operation on the partial channels (``C/k``, as trained) beside
  the bypassed rest, channel-shuffled; with edge normalisation the node is the mean of its chosen pairs
  (in training it was a convex combination of its edges, softmax(beta): the same scale, while the fixed
  network depends on the sample alone, not on the trained betas), without it their sum.

A module of another kind is refused (:class:`UnsupportedSupernet`), naming it.
"""

from __future__ import annotations

import logging
import types
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from nas_restore.nni_layer.setup import nni  # noqa: F401  (first: NNI's warning filters and log routing)

from nas_restore.outputs import is_secondary_rank  # noqa: E402
from nas_restore.run_records import SUPERNET  # noqa: E402
from nas_restore.training import plain_data  # noqa: E402

from nni.mutable import Categorical, CategoricalMultiple  # noqa: E402
from nni.nas.nn.pytorch.cell import preprocess_cell_inputs  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell  # noqa: E402

log = logging.getLogger(__name__)

SUPERNET_FORMAT = "nas-restore supernet"
SUPERNET_VERSION = 1
PINNED_LOGIT = -1.0e4  # exp(-1e4) is exactly 0 in fp32: the softmax of pinned logits is exactly one-hot
ARCH_PARAMETER_NAMES = ("_arch_alpha", "_arch_beta")


class UnsupportedSupernet(TypeError):
    """A supernet module (or a sample) whose architecture this module cannot fix; the message names it."""


# --------------------------------------------------------------------------------------------------
# saving and rebuilding


def supernet_of(strategy: Any) -> nn.Module:
    """The trained supernet of a one-shot strategy after its run (the model inside its one-shot module)."""
    return strategy.oneshot_module.model


def save_supernet(strategy: Any, ctx: Any, path: str | Path | None = None) -> Path:
    """Write the trained supernet of a finished one-shot search to ``RUN/supernet.pt`` (or ``path``).

    ``ctx`` is the search's context (``nas_restore.search.SearchContext``): the file keeps what rebuilding
    the supernet needs besides its weights (the space, preset and resolved space config, the strategy and
    its options), all as plain data next to the supernet's ``state_dict`` (CPU tensors), so that
    ``torch.load(path, weights_only=True)`` reads it and no code from a run folder is ever unpickled.
    """
    path = Path(path) if path is not None else Path(ctx.run_dir) / SUPERNET
    if is_secondary_rank():  # a multi-process run: the first process writes the run folder's files
        return path
    config = ctx.config
    options = {**ctx.strategy_spec.defaults, **config.strategy_options}
    state = {key: value.detach().cpu().clone() for key, value in supernet_of(strategy).state_dict().items()}
    record = {
        "format": SUPERNET_FORMAT, "version": SUPERNET_VERSION,
        "space": str(config.space), "preset": config.preset, "space_config": plain_data(ctx.space_config.to_dict()),
        "strategy": str(config.strategy), "strategy_options": plain_data(options),
        "arch_parameters": sorted(k for k in state if _is_arch_key(k)),
        "state_dict": state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(record, tmp)
    tmp.replace(path)  # whole files only: a run killed while saving leaves no half-written supernet
    log.info("supernet kept in %s (%d tensors)", path, len(state))
    return path


def rebuild_supernet(space: nn.Module, strategy: Any) -> nn.Module:
    """``space`` turned, in place, into the supernet ``strategy`` trains (the strategy's own mutation)."""
    return strategy.mutate_model(space)


def load_supernet_weights(supernet: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a saved ``state_dict`` into a rebuilt supernet; a mismatch is a ``ValueError`` naming the keys."""
    expected = supernet.state_dict()
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unknown or shapes:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unknown[:3])}" if unknown else "",
            f"other shapes for {', '.join(shapes[:3])}" if shapes else "") if part)
        raise ValueError(f"the saved supernet does not fit the supernet rebuilt from its settings ({detail})")
    supernet.load_state_dict(dict(state), strict=True)


def weight_parameters(supernet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The supernet's shared network weights (every parameter but the architecture logits)."""
    return [(name, p) for name, p in supernet.named_parameters() if not _is_arch_key(name)]


def _is_arch_key(name: str) -> bool:
    return any(part.startswith(ARCH_PARAMETER_NAMES) for part in name.split("."))


# --------------------------------------------------------------------------------------------------
# fixing one architecture


def supernet_modules(supernet: nn.Module) -> list[BaseSuperNetModule]:
    return [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]


def missing_labels(supernet: nn.Module, arch: Mapping[str, Any]) -> list[str]:
    """Choices of the supernet's space that ``arch`` leaves open (NNI would draw them at random)."""
    return sorted(set(supernet.simplify()) - set(arch))


@contextmanager
def fixed_architecture(supernet: nn.Module, arch: Mapping[str, Any]) -> Iterator[nn.Module]:
    """Within the block, ``supernet`` computes the network of ``arch`` with its inherited weights.

    ``arch`` is an NNI architecture dict of the supernet's space (every label). The architecture logits
    are put back, and the cells' own forward restored, when the block ends.
    """
    arch = dict(arch)
    mutables = supernet.simplify()
    open_labels = sorted(set(mutables) - set(arch))
    if open_labels:
        raise UnsupportedSupernet(f"the architecture leaves the choices {open_labels[:5]} open: give every label")
    with ExitStack() as stack:
        pinned: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in supernet_modules(supernet):
            if isinstance(module, DifferentiableMixedCell):
                stack.enter_context(_fixed_cell(module, arch))
            elif _arch_logits(module):
                for label, alpha in _arch_logits(module).items():
                    if id(alpha) not in pinned:
                        pinned[id(alpha)] = (alpha, alpha.detach().clone())
                        _pin(alpha, label, arch, mutables)
            elif isinstance(module, PathSamplingCell) or _is_path_sampling(module):
                module.resample(memo=dict(arch))  # NNI's path sampling, with the sample as its memo
            else:
                raise UnsupportedSupernet(f"cannot fix the architecture of a {type(module).__name__} supernet "
                                          "module: only NNI's path-sampling and DARTS-family modules are supported")
        try:
            yield supernet
        finally:
            with torch.no_grad():
                for alpha, saved in pinned.values():
                    alpha.copy_(saved)


def _is_path_sampling(module: BaseSuperNetModule) -> bool:
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedOperation
    from nni.nas.oneshot.pytorch.supermodule.sampling import (MixedOpPathSamplingPolicy, PathSamplingInput,
                                                             PathSamplingLayer, PathSamplingRepeat)

    if isinstance(module, (PathSamplingLayer, PathSamplingInput, PathSamplingRepeat)):
        return True
    return isinstance(module, MixedOperation) and isinstance(getattr(module, "sampling_policy", None),
                                                             MixedOpPathSamplingPolicy)


def _arch_logits(module: nn.Module) -> dict[str, torch.Tensor]:
    """label -> architecture logits of a differentiable layer-level module (none for cells)."""
    alpha = getattr(module, "_arch_alpha", None)
    if isinstance(alpha, torch.Tensor) and hasattr(module, "label"):
        return {str(module.label): alpha}
    if isinstance(alpha, nn.ParameterDict):
        return {str(label): value for label, value in alpha.items()}
    return {}


def _pin(alpha: torch.Tensor, label: str, arch: Mapping[str, Any], mutables: Mapping[str, Any]) -> None:
    mutable = mutables.get(label)
    if label not in arch or mutable is None:
        raise UnsupportedSupernet(f"the architecture logits {label!r} belong to no choice of the space")
    value = arch[label]
    values = list(mutable.values)
    if isinstance(mutable, CategoricalMultiple):
        chosen = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(chosen) != 1:
            raise UnsupportedSupernet(f"choice {label!r} picks {len(chosen)} inputs; a differentiable supernet's "
                                      "input choice can be fixed to one input only")
        value = chosen[0]
    elif not isinstance(mutable, Categorical):
        raise UnsupportedSupernet(f"choice {label!r} is a {type(mutable).__name__}, not a categorical")
    matches = [i for i, v in enumerate(values) if v == value or str(v) == str(value)]
    if not matches:
        raise UnsupportedSupernet(f"{value!r} is not a candidate of choice {label!r} ({values})")
    if alpha.numel() != len(values):
        raise UnsupportedSupernet(f"choice {label!r}: {alpha.numel()} logits for {len(values)} candidates")
    with torch.no_grad():
        alpha.fill_(PINNED_LOGIT)
        alpha[matches[0]] = 0.0


@contextmanager
def _fixed_cell(cell: DifferentiableMixedCell, arch: Mapping[str, Any]) -> Iterator[None]:
    """The cell runs the sampled (input, op) pairs only: NNI's single-path forward (pcdarts: partial channels)."""
    saved = dict(getattr(cell, "_sampled", {}) or {})
    PathSamplingCell.resample(cell, memo=dict(arch))  # sets cell._sampled from the memo (every label is in it)
    forward = _partial_channel_forward if hasattr(cell, "partial_k") else PathSamplingCell.forward
    cell.forward = types.MethodType(forward, cell)
    try:
        yield
    finally:
        del cell.forward
        cell._sampled = saved


def _partial_channel_forward(self: Any, *inputs: torch.Tensor) -> torch.Tensor:
    """pcdarts's cell on a fixed sample (see the module docstring)."""
    from strategies.partial_channel import partial_mix

    processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
    states = self.preprocessor(processed)
    one = None
    for i, ops in enumerate(self.ops, start=self.num_predecessors):
        pairs = [(int(self._sampled[f"{self.label}/input_{i}_{k}"][0]), str(self._sampled[f"{self.label}/op_{i}_{k}"]))
                 for k in range(self.num_ops_per_node)]
        weight = 1.0 / len(pairs) if getattr(self, "edge_normalization", False) else 1.0
        node = []
        for j, op in pairs:
            one = torch.ones(1, device=states[j].device) if one is None else one
            node.append(weight * partial_mix(states[j], [ops[j][op]], one, self.partial_k))
        states.append(sum(node))
    return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)


__all__ = ["SUPERNET_FORMAT", "SUPERNET_VERSION", "UnsupportedSupernet", "supernet_of", "save_supernet",
           "rebuild_supernet", "load_supernet_weights", "weight_parameters", "supernet_modules", "missing_labels",
           "fixed_architecture"]
