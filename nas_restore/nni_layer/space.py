"""The NNI primitives a search space is written with, and what the toolkit reads off a space.

A space (ours or a user's) derives from :class:`ModelSpace` and puts its choices on ``LayerChoice``,
``InputChoice``, ``Cell`` or ``nni.choice``. The helpers here check and freeze architectures, draw random
ones, turn a space into the DARTS supernet or into the plain categoricals that multi-trial strategies
explore (:class:`ChoiceSpace`). Nothing here trains: the runners are in :mod:`nas_restore.nni_layer.runner`.
"""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import ExitStack
from itertools import combinations
from typing import Any

import numpy as np
import torch

from nas_restore.nni_layer.setup import nni  # first: NNI's warning filters and log routing

from nni.mutable import label_scope  # noqa: E402  (hierarchical labels "<scope>/<label>"; no "/" in one)
from nni.mutable import Categorical, CategoricalMultiple, MutableAnnotation, ensure_frozen  # noqa: E402
from nni.nas.nn.pytorch import Cell, InputChoice, LayerChoice, ModelSpace  # noqa: E402
from nni.nas.space import model_context  # noqa: E402
from nni.nas.strategy import DARTS  # noqa: E402


def is_model_space_class(obj: Any) -> bool:
    """Whether ``obj`` is a subclass of NNI's ``ModelSpace`` (what a user's space file must define)."""
    return isinstance(obj, type) and issubclass(obj, ModelSpace) and obj is not ModelSpace


def space_init_signature(space_class: type) -> Any:
    """The signature of a space's own ``__init__`` (NNI wraps it to record the arguments)."""
    return inspect.signature(getattr(space_class, "_init_wrapped", None) or space_class.__init__)


def check_architecture(space: ModelSpace, arch: dict[str, Any]) -> str | None:
    """Why ``arch`` is not an architecture of ``space`` (a missing or unknown label, a bad value), or None."""
    unknown = sorted(set(arch) - set(space.simplify()))
    if unknown:
        return f"labels {unknown} are not choices of the space"
    error = space.check_contains(arch)
    return None if error is None else str(error)


def frozen_model(space_class: type, arch: dict[str, Any], settings: dict[str, Any]) -> torch.nn.Module:
    """A space's network for one architecture, built directly (no supernet): NNI's ``model_context``."""
    with model_context(arch):
        return space_class(**settings)


def random_architecture(space: ModelSpace, seed: int = 0) -> dict[str, Any]:
    """One architecture drawn at random from ``space`` (NNI wants a numpy RandomState)."""
    arch: dict[str, Any] = {}
    space.random(memo=arch, random_state=np.random.RandomState(seed))
    return json.loads(json.dumps(arch))


def darts_supernet(space: ModelSpace, **options: Any) -> ModelSpace:
    """The supernet NNI's DARTS trains, made in place from ``space`` (mixed ops, one alpha per label).

    Its alphas are read with :func:`labelled_alphas`; the weights are every other parameter.
    """
    return DARTS(**options).mutate_model(space)


class ChoiceSpace(ModelSpace):
    """Only the choices of another space, each a plain categorical: what multi-trial strategies explore.

    Trials build the real network from the decoded architecture (:func:`decode_choices`), so the
    strategies never build the real space, and TPE, which rejects NNI's ``InputChoice`` (also the
    one inside every ``Cell``), sees each input choice as a categorical over the allowed input sets.
    Defined at module level so that NNI's training-service trials can import it.
    """

    def __init__(self, choices: dict[str, list[Any]]):
        super().__init__()
        self.choices = {label: list(values) for label, values in choices.items()}
        self.arch: dict[str, Any] = {}
        for label, values in self.choices.items():
            *scopes, name = label.split("/")  # NNI forbids "/" in a label: rebuild it from label scopes
            with ExitStack() as stack:
                for scope in scopes:
                    stack.enter_context(label_scope(scope))
                choice = self.add_mutable(nni.choice(name, values))
            self.arch[label] = ensure_frozen(choice)

    def freeze(self, sample: dict[str, Any]) -> "ChoiceSpace":
        with model_context(sample):
            return ChoiceSpace(self.choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # never run: trials build the real network
        raise RuntimeError("a ChoiceSpace holds architecture choices only; build the network from decode_choices")


def space_choices(space: ModelSpace) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """(choices, multiples) of ``space`` for a :class:`ChoiceSpace`.

    ``choices`` maps every label to its candidates. An input choice (NNI's ``CategoricalMultiple``)
    becomes one categorical over the index sets it allows: the index itself when it picks one input,
    ``"0+2"``-style strings otherwise; ``multiples`` keeps what :func:`decode_choices` needs to turn it back.
    """
    choices: dict[str, list[Any]] = {}
    multiples: dict[str, dict[str, Any]] = {}
    for label, mutable in space.simplify().items():
        if isinstance(mutable, MutableAnnotation):  # constraints: trials reject invalid networks themselves
            logging.getLogger(__name__).info("multi-trial search ignores the annotation %r", label)
            continue
        if isinstance(mutable, CategoricalMultiple):
            n = len(mutable.values)
            sizes = [mutable.n_chosen] if mutable.n_chosen is not None else range(1, n + 1)
            sets = [c for k in sizes for c in combinations(range(n), k)]
            single = all(len(s) == 1 for s in sets)
            choices[label] = [s[0] if single else "+".join(map(str, s)) for s in sets]
            multiples[label] = {"values": json.loads(json.dumps(list(mutable.values))), "single": single}
        elif isinstance(mutable, Categorical):
            choices[label] = json.loads(json.dumps(list(mutable.values)))
        else:
            raise ValueError(f"choice {label!r} of the space is a {type(mutable).__name__}; multi-trial search "
                             "supports categorical choices (LayerChoice, InputChoice, Cell, nni.choice): "
                             "make it an nni.choice over a list of values")
    return choices, multiples


def decode_choices(sample: dict[str, Any], multiples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A :class:`ChoiceSpace` sample -> the architecture dict of the real space (input choices as lists)."""
    arch = {}
    for label, value in sample.items():
        if label in multiples:
            spec = multiples[label]
            indices = [int(value)] if spec["single"] else [int(i) for i in str(value).split("+")]
            arch[label] = [spec["values"][i] for i in indices]
        else:
            arch[label] = value
    return json.loads(json.dumps(arch))


def labelled_alphas(module: Any) -> list[tuple[str, torch.Tensor, list[str]]]:
    """(label, raw alpha, choice names) for every architecture parameter of a one-shot supernet.

    DARTS cells keep one alpha per edge (``<cell>/<node>_<input>``) with a trailing "none" slot that
    NNI's ``export_probs`` drops; it is kept here. pcdarts's edge-normalisation betas come as
    ``<cell>/beta_<node>`` over the node's inputs (``input 0``, ...). Shared labels are reported once.
    """
    found: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for sub in module.modules():
        alphas = getattr(sub, "_arch_alpha", None)
        if isinstance(alphas, torch.nn.ParameterDict) and hasattr(sub, "depth_choice"):  # Repeat: depth counts
            for label, choice in sub.depth_choice.simplify().items():
                if label in alphas:
                    found.setdefault(label, (alphas[label], [str(v) for v in choice.values]))
        elif isinstance(alphas, torch.nn.ParameterDict):
            names = list(getattr(sub, "op_names", []))
            for label, alpha in alphas.items():
                found.setdefault(label, (alpha, names + ["none"] if len(names) + 1 == alpha.numel() else names))
            betas = getattr(sub, "_arch_beta", None)  # pcdarts's edge normalisation: a weight per node input
            if isinstance(betas, torch.nn.ParameterDict):
                for label, beta in betas.items():
                    found.setdefault(label, (beta, [f"input {j}" for j in range(beta.numel())]))
        elif isinstance(alphas, torch.Tensor) and hasattr(sub, "label"):
            names = [str(n) for n in getattr(sub, "names", range(alphas.numel()))]
            found.setdefault(sub.label, (alphas, names))
    out = []
    for label in sorted(found):
        alpha, names = found[label]
        if len(names) != alpha.numel():
            names = [str(i) for i in range(alpha.numel())]
        out.append((label, alpha, names))
    return out


__all__ = ["nni", "ModelSpace", "LayerChoice", "InputChoice", "Cell", "label_scope", "is_model_space_class",
           "space_init_signature", "check_architecture", "frozen_model", "random_architecture", "darts_supernet",
           "labelled_alphas", "ChoiceSpace", "space_choices", "decode_choices"]
