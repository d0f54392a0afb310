"""Multi-trial strategies: each trial trains one sampled network from scratch (no weight sharing).

They run through :func:`nas_restore.multitrial.run_multitrial`, which gives NNI a space of plain
categorical choices (input choices included, so TPE accepts them) and trains each trial's network
with a fresh Lightning trainer. ``seed: null`` means the search's own ``seed``.

The defaults are sized for CPU budgets of a few to a few dozen trials, far below the papers' hundreds:
a population of 8 with tournaments of 3 (Real et al. used 100 and 25), and TPE starting its model
after 4 random trials (NNI's default, 20, would leave a small budget purely random).
"""

from __future__ import annotations

from typing import Any

from strategies import StrategySpec, register_strategy


def _evolution(population_size: int, sample_size: int, mutation_prob: float, crossover: bool, dedup: bool,
               seed: int | None) -> Any:
    from nas_restore.nni_layer import nni  # noqa: F401  (applies our NNI import set-up first)
    from nni.nas.strategy import RegularizedEvolution

    if not 1 <= sample_size <= population_size:
        raise ValueError(f"evolution: sample_size ({sample_size}) must be between 1 and population_size "
                         f"({population_size})")
    if not 0.0 <= mutation_prob <= 1.0:
        raise ValueError(f"evolution: mutation_prob must be in [0, 1], got {mutation_prob}")
    return RegularizedEvolution(population_size=population_size, sample_size=sample_size,
                                mutation_prob=mutation_prob, crossover=crossover, dedup=dedup, seed=seed)


def _random(dedup: bool, seed: int | None) -> Any:
    from nas_restore.nni_layer import nni  # noqa: F401
    from nni.nas.strategy import Random

    return Random(dedup=dedup, seed=seed)


def _tpe(n_startup_jobs: int, constant_liar_type: str | None, seed: int | None) -> Any:
    if n_startup_jobs < 1:
        raise ValueError(f"tpe: n_startup_jobs must be >= 1, got {n_startup_jobs}")
    if constant_liar_type not in (None, "best", "worst", "mean"):
        raise ValueError(f"tpe: constant_liar_type must be best, worst, mean or null, got {constant_liar_type!r}")
    # NNI's TPE tuner minimises unless told otherwise, while trials report PSNR (higher is better)
    return _tpe_class()(optimize_mode="maximize", seed=seed,
                        tpe_args={"n_startup_jobs": n_startup_jobs, "constant_liar_type": constant_liar_type})


def _tpe_class() -> type:
    from nas_restore.nni_layer import nni
    from nni.nas.strategy import TPE

    class PromptTPE(TPE):
        """NNI's TPE without its fixed one-second pause after every submitted trial.

        NNI's loop sleeps 1 s after each submission even when a worker is free (always, in the
        sequential engine); with CPU-sized trials of a second or two that pause would count against
        TPE in a wall-clock budget. Here it waits only while no worker is free (NNI's
        ``wait_for_resource``) and otherwise asks the tuner for the next architecture at once.
        """

        def _run(self) -> None:
            space = {label: mutable.as_legacy_dict() for label, mutable in self.model_space.simplify().items()}
            with self._thread_lock:
                self.tuner.update_search_space(space)
            while self.wait_for_resource():
                with self._thread_lock:
                    try:
                        params = self.tuner.generate_parameters(self._model_count)
                    except nni.NoMoreTrialError:
                        break
                    model = self.model_space.freeze(params)
                    self._model_to_id[model] = self._model_count
                    self._model_count += 1
                self.engine.submit_models(model)

    return PromptTPE


register_strategy(StrategySpec(
    name="evolution",
    family="multi-trial",
    description="regularized evolution (Real et al. 2019), NNI's RegularizedEvolution: random initial "
                "population, then tournament selection, mutation of the winner, oldest member retired",
    make=_evolution,
    defaults={"population_size": 8, "sample_size": 3, "mutation_prob": 0.1, "crossover": False,
              "dedup": True, "seed": None},
))

register_strategy(StrategySpec(
    name="random",
    family="multi-trial",
    description="random search, NNI's Random: every trial an architecture drawn uniformly; the baseline "
                "every other strategy must beat",
    make=_random,
    defaults={"dedup": True, "seed": None},
))

register_strategy(StrategySpec(
    name="tpe",
    family="multi-trial",
    description="Tree-structured Parzen Estimator (Bergstra et al. 2011), NNI's TPE, maximising validation "
                "PSNR; input choices are given to it as categoricals over the allowed input sets",
    make=_tpe,
    defaults={"n_startup_jobs": 4, "constant_liar_type": "best", "seed": None},
))
