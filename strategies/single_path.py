"""Single-path strategies: GDAS's hard Gumbel edges and ``spos`` (single-path one-shot + evolution).

**GDAS, hard** (Dong & Yang 2019): NNI's GumbelDARTS mixes every candidate even with ``hard=True``.
The mixed modules here draw one Gumbel sample per label per step (:meth:`resample`, shared by the
modules of one label, as GDAS shares one sample per cell type), run **only** the sampled candidate,
and return ``h_k * op_k(x) + sum_{j != k} h_j`` where ``h`` is the straight-through one-hot
(``one_hot - soft.detach() + soft``): forward values are the chosen op's, and the gradient reaches
every alpha through the softmax, as in GDAS's code. In eval mode the edge runs the argmax of alpha.

**SPOS** (Guo et al. 2020): NNI's RandomOneShot trains the supernet with one uniformly sampled path
per step; at export, an evolutionary search (:func:`evolve`) scores architectures with the inherited
supernet weights on a few validation batches and returns the best.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
from typing import Any, Callable, Mapping

import numpy as np
import torch

from nas_restore.metrics import MAX_PSNR, psnr_torch
from strategies import StrategySpec, register_strategy

log = logging.getLogger(__name__)

GUMBEL = "/__gumbel__"  # memo key suffix: one Gumbel sample per label per step


# --------------------------------------------------------------------------------------------------
# GDAS: hard Gumbel, only the sampled candidate runs


def gumbel_like(alpha: torch.Tensor) -> torch.Tensor:
    return -torch.empty_like(alpha).exponential_().log()


def hard_sample(alpha: torch.Tensor, noise: torch.Tensor | None, tau: float) -> tuple[torch.Tensor, int]:
    """(straight-through one-hot h, chosen index) of softmax((alpha + g) / tau)."""
    if noise is None or noise.shape != alpha.shape:
        noise = gumbel_like(alpha.detach())
    soft = torch.softmax((alpha + noise) / tau, -1)
    index = int(soft.detach().argmax())
    hard = torch.zeros_like(soft)
    hard[index] = 1.0
    return hard - soft.detach() + soft, index


def straight_through(out: torch.Tensor, h: torch.Tensor, index: int) -> torch.Tensor:
    """GDAS's edge value: h[index] * out plus the other (zero-valued) h entries, for their gradients."""
    mask = torch.ones_like(h)
    mask[index] = 0.0
    # in the output's dtype: an fp32 h would make the edge, and every op reading it, fp32 under autocast
    return h[index].to(out.dtype) * out + (h * mask).sum().to(out.dtype)


@functools.cache
def hard_gumbel_classes() -> dict[str, type]:
    from nas_restore.nni_layer import nni  # noqa: F401  (our NNI import set-up first)
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell, DifferentiableMixedLayer

    class HardGumbelMixedLayer(DifferentiableMixedLayer):
        """A LayerChoice that runs only its Gumbel-sampled candidate (straight-through weight)."""

        _noise: torch.Tensor | None = None

        def resample(self, memo):
            key = self.label + GUMBEL
            if key in memo:
                self._noise = memo[key]
                return {}
            self._noise = gumbel_like(self._arch_alpha.detach())
            return {key: self._noise}

        def chosen(self) -> tuple[torch.Tensor | None, int]:
            if not self.training:
                return None, int(self._arch_alpha.detach().argmax())
            return hard_sample(self._arch_alpha, self._noise, float(self._softmax.tau))

        def forward(self, *args, **kwargs):
            h, index = self.chosen()
            out = self[self.names[index]](*args, **kwargs)
            return out if h is None else straight_through(out, h, index)

    class HardGumbelMixedCell(DifferentiableMixedCell):
        """A DARTS cell whose every edge runs only its Gumbel-sampled op (or nothing for ``none``)."""

        def resample(self, memo):
            self._noise = {}
            new = {}
            for label, alpha in self._arch_alpha.items():
                key = label + GUMBEL
                if key not in memo:
                    new[key] = memo[key] = gumbel_like(alpha.detach())
                self._noise[label] = memo[key]
            return new

        def chosen(self, label: str) -> tuple[torch.Tensor | None, int]:
            alpha = self._arch_alpha[label]
            if not self.training:
                return None, int(alpha.detach().argmax())
            return hard_sample(alpha, getattr(self, "_noise", {}).get(label), float(self._softmax.tau))

        def forward(self, *inputs):
            processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
            states = self.preprocessor(processed)
            for i, ops in enumerate(self.ops, start=self.num_predecessors):
                edges = []
                for j in range(i):
                    h, index = self.chosen(f"{self.label}/{i}_{j}")
                    names = list(ops[j].keys())
                    out = ops[j][names[index]](states[j]) if index < len(names) else torch.zeros_like(states[j])
                    edges.append(out if h is None else straight_through(out, h, index))
                states.append(sum(edges))
            return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)

    return {"layer": HardGumbelMixedLayer, "cell": HardGumbelMixedCell}


def hard_gumbel_hooks() -> list[Callable]:
    """Mutation hooks to put before GumbelDARTS's own: LayerChoices and factory cells run one candidate."""
    classes = hard_gumbel_classes()
    return [classes["cell"].mutate, classes["layer"].mutate]


# --------------------------------------------------------------------------------------------------
# SPOS: the evolutionary search over a trained single-path supernet


def _key(arch: Mapping[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True, default=str)


def evolve(choices: Mapping[str, Any], score: Callable[[dict[str, Any]], float], *, population: int,
           generations: int, parents: int, mutation_prob: float, seed: int,
           is_valid: Callable[[dict[str, Any]], bool] = lambda arch: True) -> dict[str, Any]:
    """SPOS's evolution: a random population, then per generation half mutants and half crossovers of
    the ``parents`` best so far. ``choices`` maps a label to an NNI categorical (its ``random``
    draws a value); every candidate passes ``is_valid``; each architecture is scored once.

    Returns ``{"best", "score", "evaluated", "generations": [{generation, best, mean, n}, ...]}``.
    """
    if population < 2 or generations < 1 or not 1 <= parents <= population or not 0 <= mutation_prob <= 1:
        raise ValueError(f"spos evolution needs population >= 2, generations >= 1, 1 <= parents <= population and "
                         f"0 <= mutation_prob <= 1; got {population}, {generations}, {parents}, {mutation_prob}")
    rng = random.Random(seed)
    state = np.random.RandomState(rng.randrange(2**31))
    labels = sorted(choices)
    scores: dict[str, tuple[float, dict[str, Any]]] = {}

    def draw(label: str) -> Any:
        return json.loads(json.dumps(choices[label].random(random_state=state)))

    def make(build: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        for _ in range(100):  # new and valid, or give up (a tiny space may have fewer architectures)
            arch = build()
            if _key(arch) not in scores and is_valid(arch):
                return arch
        return None

    def random_arch() -> dict[str, Any]:
        return {label: draw(label) for label in labels}

    def mutate(parent: dict[str, Any]) -> dict[str, Any]:
        return {label: draw(label) if rng.random() < mutation_prob else parent[label] for label in labels}

    def crossover(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {label: (a if rng.random() < 0.5 else b)[label] for label in labels}

    history = []
    pool = [a for a in (make(random_arch) for _ in range(population)) if a is not None]
    for generation in range(generations):
        if generation:
            top = [arch for _, arch in sorted(scores.values(), key=lambda t: -t[0])[:parents]]
            n_mut = population // 2
            pool = [make(lambda: mutate(rng.choice(top))) for _ in range(n_mut)]
            pool += [make(lambda: crossover(rng.choice(top), rng.choice(top))) for _ in range(population - n_mut)]
            pool = [a for a in pool if a is not None]
        fresh = []
        for arch in pool:
            if _key(arch) not in scores:
                scores[_key(arch)] = (float(score(arch)), arch)
                fresh.append(scores[_key(arch)][0])
        best = max(scores.values(), key=lambda t: t[0])
        row = {"generation": generation, "n": len(fresh), "best": round(best[0], 4),
               "mean": round(float(np.mean(fresh)), 4) if fresh else None}
        history.append(row)
        log.info("spos evolution generation %d: %d new architectures, mean %s dB, best so far %.3f dB",
                 generation, row["n"], row["mean"], best[0])
    best_score, best_arch = max(scores.values(), key=lambda t: t[0])
    return {"best": best_arch, "score": best_score, "evaluated": len(scores), "generations": history}


@functools.cache
def spos_classes() -> dict[str, type]:
    from nas_restore.nni_layer import nni  # noqa: F401
    from nni.mutable import Categorical, CategoricalMultiple
    from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
    from nni.nas.strategy import RandomOneShot

    class SposModule(RandomSamplingLightningModule):
        """NNI's uniform path sampling; the architecture comes from the evolution, not from ``export``."""

        evolved: dict[str, Any] | None = None
        _leaves: dict[str, Any] | None = None

        def resample(self):
            """One uniformly drawn path, from numpy's global generator: NNI's own draw uses a new, unseeded
            ``RandomState`` every step, so that neither the seed nor a resumed search's checkpoint
            (nas_restore.search_checkpoint keeps numpy's generator) would repeat the paths."""
            if self._leaves is None:
                self._leaves = dict(self.model.simplify())

            def draw():
                sample: dict[str, Any] = {}
                for mutable in self._leaves.values():
                    mutable.random(memo=sample, random_state=np.random.mtrand._rand)
                for module in self.supernet_modules():
                    module.resample(memo=sample)
                return sample

            return self._repeat_until_valid(draw)

        def export(self):
            if self.evolved is None:
                raise RuntimeError("spos derives its architecture by an evolutionary search after the supernet "
                                   "has trained (strategy.list_models)")
            return dict(self.evolved)

        @torch.no_grad()
        def score(self, arch: dict[str, Any], batches: list[Any]) -> float:
            """The mean PSNR of the supernet on ``batches`` with the path ``arch`` (inherited weights)."""
            for module in self.supernet_modules():
                module.resample(memo=dict(arch))
            was_training = self.training
            self.eval()
            try:
                values = [psnr_torch(self(frames.to(self.device)).clamp(0, 1), target.to(self.device),
                                     y_channel=False, max_db=MAX_PSNR) for frames, target in batches]
            finally:
                self.train(was_training)
            return float(torch.cat([v.reshape(-1) for v in values]).mean())

    class SPOS(RandomOneShot):
        """Single-path one-shot: uniform sampling while training, then an evolution at export."""

        def __init__(self, *, population: int = 8, generations: int = 3, parents: int = 4,
                     mutation_prob: float = 0.1, eval_batches: int | None = 2, seed: int = 0, **kwargs):
            super().__init__(**kwargs)
            if eval_batches is not None and eval_batches < 1:
                raise ValueError(f"spos eval_batches must be >= 1 or None (all), got {eval_batches}")
            self.evolution_options = dict(population=int(population), generations=int(generations),
                                          parents=int(parents), mutation_prob=float(mutation_prob), seed=int(seed))
            self.eval_batches = eval_batches
            self.evolution: dict[str, Any] | None = None

        def configure_oneshot_module(self, training_module):
            return SposModule(training_module, self.filter)

        def choices(self) -> dict[str, Any]:
            return {label: m for label, m in self.supernet.simplify().items()
                    if isinstance(m, (Categorical, CategoricalMultiple))}

        def validation_batches(self) -> list[Any]:
            loader = self._mutated_model_space.evaluator.val_dataloaders
            dataset = getattr(loader, "dataset", None)
            if dataset is not None:  # the same first batches whatever the loader's shuffling state
                loader = torch.utils.data.DataLoader(dataset, batch_size=loader.batch_size, shuffle=False)
            return list(itertools.islice(iter(loader), self.eval_batches))

        def run_evolution(self) -> dict[str, Any]:
            module = self.oneshot_module
            module.set_model(self.supernet)
            batches = self.validation_batches()
            space = self.supernet
            result = evolve(self.choices(), lambda arch: module.score(arch, batches),
                            is_valid=lambda arch: space.check_contains(arch) is None, **self.evolution_options)
            log.info("spos evolution: best %.3f dB of %d architectures scored on %d validation batch(es): %s",
                     result["score"], result["evaluated"], len(batches), result["best"])
            return result

        def list_models(self, sort: bool = True, limit: int | None = 1):
            if self.evolution is None:
                self.evolution = self.run_evolution()
            self.oneshot_module.evolved = self.evolution["best"]
            yield self.model_space.freeze(dict(self.evolution["best"]))

        def resume_state(self) -> dict[str, Any]:
            """What a resumed search keeps (nas_restore.search_checkpoint): the phase, and the evolution's result
            once it has run (a re-run then does not evolve again; killed during the evolution, a re-run evolves
            again from the trained supernet, with the same seed and batches: the same result)."""
            return {"phase": "evolution done" if self.evolution is not None else "supernet training",
                    "evolution": self.evolution}

        def load_resume_state(self, state: dict[str, Any] | None) -> None:
            self.evolution = None if state is None else state.get("evolution")

    return {"module": SposModule, "strategy": SPOS}


def _spos(population: int, generations: int, parents: int, mutation_prob: float, eval_batches: int | None,
          seed: int):
    return spos_classes()["strategy"](population=population, generations=generations, parents=parents,
                                      mutation_prob=mutation_prob, eval_batches=eval_batches, seed=seed)


register_strategy(StrategySpec(
    name="spos",
    family="differentiable",
    description="Single-path one-shot (Guo et al. 2020): the supernet trains one uniformly sampled path per step "
                "(NNI's RandomOneShot), then an evolution (population, mutation, crossover) scores architectures "
                "with the inherited weights on eval_batches validation batches and exports the best",
    make=_spos,
    defaults={"population": 8, "generations": 3, "parents": 4, "mutation_prob": 0.1, "eval_batches": 2, "seed": 0},
))
