"""`nas-restore compare`: every strategy x seed under one budget, one retraining recipe, one test set.

Many NAS methods do no better than random search, so a comparison is only worth its protocol:

* **same budget** for every strategy, in epoch-equivalents by default (a pass over the search's
  train split by one network; wall-clock seconds are unfair on a shared machine, but can be chosen).
  One-shot strategies get ``epochs = B`` supernet epochs; multi-trial strategies get
  ``max_trials = B // trial_epochs`` trials of ``trial_epochs`` each. Caveat: a supernet epoch runs
  every candidate op and, for the DARTS family, an architecture step on the validation split too, so
  it costs more compute than a single-network epoch; the measured search seconds are reported beside
  the epochs so that this shows.
* **same retraining** (:class:`~nas_restore.retraining.RetrainRunConfig`) for every found genotype;
  search and retraining of seed ``s`` read the same synthetic train/val items (seeds ``10000 s + 1/2``),
  so the strategies of one seed are paired.
* **one held-out test set**: synthetic clips written once from their own seed through the folder
  writer (salted), never searched or trained on; the rainy input is scored on it too.

The out folder holds ``compare.yaml`` (the settings), ``runs/<strategy>-seed<k>/`` (one per run: the
search folder, the retraining folder, the evaluation, and a record per finished stage), and the report:
``results.csv``, ``summary.md`` and PNG plots. Re-running the same command resumes: finished runs are
skipped, unfinished ones continue from their last finished stage (retraining from its last checkpoint),
failed ones are retried; a run that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nas_restore import config as cfg
from nas_restore.datasets import DataConfig
from nas_restore.losses import LossConfig
from nas_restore.report_common import (fmt_count, machine_info, machine_line, markdown_table,
                                       mean_std, read_json, write_json)
from nas_restore.retraining import RetrainRunConfig, run_retrain
from nas_restore.search import SearchConfig, run_search
from nas_restore.training import RetrainConfig

log = logging.getLogger(__name__)

BUDGET_UNITS = ("epochs", "seconds")
REFERENCE_STRATEGY = "random"
RESULT_COLUMNS = ("strategy", "family", "seed", "status", "genotype_id", "params", "flops", "search_seconds",
                  "search_cost_epochs", "retrain_seconds", "retrain_epochs", "retrain_val_psnr", "psnr", "ssim",
                  "psnr_input", "ssim_input", "budget", "budget_unit", "genotype", "error")
# settings that may change between calls on one out folder without invalidating finished runs
_EXTENSIBLE = ("strategies", "seeds", "first_seed", "progress")


@dataclass
class SearchRecipe:
    """Search settings every strategy shares (the budget and the strategy are set per run)."""

    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(patch_size=32, train_items=64, val_items=32))
    num_workers: int = 0


@dataclass
class HeldOutConfig:
    """The synthetic test clips: written once, from a seed no search or retraining draws from."""

    clips: int = 4
    frames_per_clip: int = 5
    size: int = 64
    seed: int = 7_777
    rain_types: list[str] = field(default_factory=lambda: ["light", "heavy", "slanted", "accumulation"])

    def __post_init__(self) -> None:
        if self.clips < 1 or self.frames_per_clip < 1 or self.size < 16:
            raise ValueError("test.clips and test.frames_per_clip must be >= 1 and test.size >= 16")


def _default_retrain() -> RetrainRunConfig:
    return RetrainRunConfig(
        train=RetrainConfig(epochs=4, batch_size=8, lr=2e-3, min_lr=1e-5, progress=False),
        data=DataConfig(patch_size=32, train_items=128, val_items=32))


@dataclass
class CompareConfig:
    """A whole comparison; ``nas-restore compare --config FILE`` reads these keys (flags override)."""

    space: str = "tmics"
    preset: str | None = "demo"
    space_settings: dict[str, Any] = field(default_factory=dict)
    strategies: list[str] = field(default_factory=lambda: ["darts", "random"])
    seeds: int = 3
    first_seed: int = 0
    budget: float = 3.0
    budget_unit: str = "epochs"
    trial_epochs: int = 1                 # multi-trial: epochs each sampled network trains
    seconds_max_epochs: int = 1000        # budget_unit seconds: the epoch / trial cap (the clock stops first)
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)   # per strategy name
    search: SearchRecipe = field(default_factory=SearchRecipe)
    retrain: RetrainRunConfig = field(default_factory=_default_retrain)
    test: HeldOutConfig = field(default_factory=HeldOutConfig)
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            self.strategies = [s.strip() for s in self.strategies.split(",") if s.strip()]
        if not self.strategies:
            raise ValueError("strategies is empty: name at least one (e.g. darts,random)")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies lists a name twice: {self.strategies}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1 (the number of seeds per strategy), got {self.seeds}")
        if self.budget_unit not in BUDGET_UNITS:
            raise ValueError(f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {self.budget_unit!r}")
        if not self.budget > 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")
        if self.trial_epochs < 1 or self.seconds_max_epochs < 1:
            raise ValueError("trial_epochs and seconds_max_epochs must be >= 1")
        if self.budget_unit == "epochs" and self.budget < 1:
            raise ValueError(f"an epoch budget must be >= 1 epoch, got {self.budget}")
        unknown = sorted(set(self.strategy_options) - set(self.strategies))
        if unknown:
            raise ValueError(f"strategy_options names strategies not compared: {unknown} (compared: "
                             f"{', '.join(self.strategies)})")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "compare") -> "CompareConfig":
        """Settings given in ``data`` over the defaults of this class, nested ones included (a YAML file
        with ``retrain: {train: {epochs: 2}}`` keeps the comparison's other retraining defaults)."""
        return cfg.from_dict(cls, cfg.merge(cfg.to_dict(cls()), data or {}), where)


# --------------------------------------------------------------------------------------------------
# the budget


def budget_settings(config: CompareConfig, one_shot: bool) -> dict[str, Any]:
    """The SearchConfig fields that give one strategy family the comparison's budget.

    epochs: one-shot ``epochs = floor(B)``; multi-trial ``max_trials = floor(B / trial_epochs)``, each
    trial ``trial_epochs`` epochs (so both spend B network-epochs over the same train split).
    seconds: ``budget_seconds = B`` for all, with epochs / trials capped at ``seconds_max_epochs`` (the
    clock stops the run first; one-shot learning-rate schedules are then laid out over the cap).
    """
    if config.budget_unit == "seconds":
        return {"budget_seconds": float(config.budget), "epochs": config.seconds_max_epochs,
                "max_trials": config.seconds_max_epochs, "trial_epochs": config.trial_epochs}
    if one_shot:
        return {"epochs": max(1, int(math.floor(config.budget + 1e-9)))}
    trials = int(math.floor(config.budget / config.trial_epochs + 1e-9))
    if trials < 1:
        raise ValueError(f"budget {config.budget} epochs buys no trial of trial_epochs={config.trial_epochs}: "
                         "raise the budget or lower trial_epochs")
    return {"max_trials": trials, "trial_epochs": config.trial_epochs}


def search_config(config: CompareConfig, strategy: str, seed: int) -> SearchConfig:
    from strategies import find_strategy

    spec = find_strategy(strategy)
    recipe = config.search
    return SearchConfig(
        space=config.space, preset=config.preset, space_settings=dict(config.space_settings), strategy=strategy,
        strategy_options=dict(config.strategy_options.get(strategy, {})), batch_size=recipe.batch_size,
        lr=recipe.lr, weight_decay=recipe.weight_decay, loss=recipe.loss, data=recipe.data, seed=seed,
        device=config.device, num_workers=recipe.num_workers, progress=config.progress,
        **budget_settings(config, spec.one_shot))


def retrain_config(config: CompareConfig, seed: int) -> RetrainRunConfig:
    data = cfg.from_dict(RetrainRunConfig, cfg.to_dict(config.retrain), "retrain")
    data.train.seed = seed
    data.train.device = config.device
    data.train.progress = config.progress
    return data


# --------------------------------------------------------------------------------------------------
# the held-out test set


def held_out_test(config: CompareConfig, out: Path) -> tuple[Path, dict[str, Any]]:
    """Write the test clips once (``data/test``) and score the rainy input on them; reused on resume."""
    from nas_restore.data.synthetic import write_synthetic_folder
    from nas_restore.evaluation import evaluate_folder

    folder = out / "data" / "test"
    record_path = out / "data" / "test.json"
    wanted = cfg.to_dict(config.test)
    record = read_json(record_path)
    if record is not None and record.get("config") == wanted and folder.is_dir():
        return folder, record
    write_synthetic_folder(folder, kind="video", count=config.test.clips, frames_per_clip=config.test.frames_per_clip,
                           size=config.test.size, rain_types=list(config.test.rain_types), seed=config.test.seed)
    scores = evaluate_folder(folder, None, progress=False).summary
    record = {"config": wanted, "psnr_input": scores["psnr"], "ssim_input": scores["ssim"],
              "count": scores["count"], "protocol": scores["protocol"]}
    write_json(record_path, record)
    return folder, record


# --------------------------------------------------------------------------------------------------
# one run


def run_name(strategy: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', strategy)}-seed{seed}"


def seed_everything(seed: int) -> None:
    """Seed every RNG before a network is built for retraining.

    ``run_retrain`` builds the network before the trainer seeds itself, so without this its initial
    weights would depend on whatever ran earlier in the process (a search consumes random numbers
    differently per strategy), and two strategies that found the same genotype would be retrained
    from different starting points.
    """
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def _retrain_seconds(metrics_csv: Path, fallback: float) -> float:
    """Training seconds summed over epochs (so a resumed run counts its earlier part too)."""
    try:
        frame = pd.read_csv(metrics_csv)
        if "seconds" in frame and frame["seconds"].notna().any():
            return float(frame["seconds"].fillna(0).sum())
    except (OSError, pd.errors.EmptyDataError):
        pass
    return float(fallback)


def _search_cost_epochs(genotype: Any, run_dir: Path) -> float:
    cost = (genotype.metadata or {}).get("search_cost_epochs")
    if cost is not None:
        return float(cost)
    try:
        anytime = pd.read_csv(run_dir / "anytime.csv")
        return float(anytime["cost_epochs"].iloc[-1])
    except (OSError, KeyError, IndexError, pd.errors.EmptyDataError):
        return math.nan


def run_one(config: CompareConfig, strategy: str, seed: int, run_dir: Path, test_dir: Path,
            test_record: dict[str, Any]) -> dict[str, Any]:
    """Search, retrain, evaluate one (strategy, seed), skipping the stages already recorded."""
    from nas_restore.build import load_trained
    from nas_restore.evaluation import evaluate_folder
    from nas_restore.genotype import load_genotype
    from nas_restore.profiling import count_flops, count_parameters, input_shape
    from strategies import find_strategy

    spec = find_strategy(strategy)
    search_dir = run_dir / "search"
    search = read_json(run_dir / "search.json")
    if search is None:
        if search_dir.exists():  # an unfinished search cannot be continued: start it again
            log.info("%s: removing the unfinished search in %s", run_dir.name, search_dir)
            shutil.rmtree(search_dir)
        sconf = search_config(config, strategy, seed)
        result = run_search(sconf, search_dir)
        meta = result.genotype.metadata or {}
        search = {"genotype": str(Path(result.genotype_path).resolve().relative_to(run_dir.resolve())),
                  "genotype_id": result.genotype.genotype_id(),
                  "search_seconds": float(meta.get("search_seconds", result.seconds)),
                  "search_cost_epochs": _search_cost_epochs(result.genotype, search_dir),
                  "settings": {k: getattr(sconf, k) for k in ("epochs", "max_trials", "trial_epochs",
                                                               "budget_seconds")}}
        write_json(run_dir / "search.json", search)
    genotype = load_genotype(run_dir / search["genotype"])

    retrained = read_json(run_dir / "retrain.json")
    if retrained is None:
        seed_everything(seed)  # the network's initial weights: a function of (genotype, seed) alone
        result = run_retrain(genotype, retrain_config(config, seed), run_dir / "retrain")
        retrained = {"model": "retrain/model.pt", "best_val_psnr": result.best_val_psnr,
                     "epochs": result.epochs_run,
                     "seconds": _retrain_seconds(result.metrics_csv, result.seconds)}
        write_json(run_dir / "retrain.json", retrained)

    model, _ = load_trained(run_dir / retrained["model"])
    frames = int(genotype.space_config.get("frames", 1))
    evaluation = evaluate_folder(test_dir, model, frames=frames, device=config.device, progress=False)
    evaluation.save(run_dir / "evaluation")
    model.cpu()
    size = config.test.size
    return {
        "strategy": strategy, "family": spec.family, "seed": seed, "status": "done",
        "genotype_id": search["genotype_id"], "params": count_parameters(model),
        "flops": count_flops(model, input_shape(frames, size, size)),
        "search_seconds": search["search_seconds"], "search_cost_epochs": search["search_cost_epochs"],
        "retrain_seconds": round(retrained["seconds"], 2), "retrain_epochs": retrained["epochs"],
        "retrain_val_psnr": retrained["best_val_psnr"],
        "psnr": evaluation.summary["psnr"], "ssim": evaluation.summary["ssim"],
        "psnr_input": test_record["psnr_input"], "ssim_input": test_record["ssim_input"],
        "budget": config.budget, "budget_unit": config.budget_unit,
        "genotype": str(Path("runs") / run_dir.name / search["genotype"]), "error": "",
    }


# --------------------------------------------------------------------------------------------------
# the whole comparison


@dataclass
class CompareResult:
    out: Path
    results: pd.DataFrame
    summary_path: Path
    plots: list[Path]
    ran: list[str]          # run folders worked on in this call (the others were already finished)


def _check_same_settings(out: Path, config: CompareConfig) -> None:
    previous_path = out / "compare.yaml"
    if not previous_path.exists():
        return
    previous = cfg.load_yaml(previous_path)
    current = cfg.to_dict(config)
    changed = sorted(k for k in set(previous) | set(current)
                     if k not in _EXTENSIBLE and previous.get(k) != current.get(k))
    if changed:
        raise ValueError(f"{out} holds a comparison made with other settings ({', '.join(changed)}: not as in "
                         f"{previous_path}): its finished runs would not be comparable. Give another --out, or "
                         f"the same settings (only strategies and seeds may change)")


def run_compare(config: CompareConfig, out_dir: str | Path, command: str | None = None,
                say: Callable[[str], None] = log.info) -> CompareResult:
    """Run (or resume) the comparison into ``out_dir``; write results.csv, summary.md and the plots."""
    from strategies import find_strategy

    for name in config.strategies:
        find_strategy(name)  # an unknown name fails now, not after an hour of other runs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_settings(out, config)
    cfg.save_yaml(config, out / "compare.yaml")
    test_dir, test_record = held_out_test(config, out)

    rows: list[dict[str, Any]] = []
    ran: list[str] = []
    total = len(config.strategies) * config.seeds
    for k, (strategy, seed) in enumerate(((s, d) for s in config.strategies for d in config.seed_list), 1):
        run_dir = out / "runs" / run_name(strategy, seed)
        done = read_json(run_dir / "done.json")
        if done is not None:
            say(f"[{k}/{total}] {run_dir.name}: finished earlier, skipped")
            rows.append(done)
            continue
        ran.append(run_dir.name)
        say(f"[{k}/{total}] {run_dir.name}: search, retrain, evaluate")
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            row = run_one(config, strategy, seed, run_dir, test_dir, test_record)
        except Exception as err:  # noqa: BLE001  (one failed run must not stop the comparison)
            message = f"{type(err).__name__}: {err}"
            (run_dir / "error.log").write_text(traceback.format_exc())
            row = {"strategy": strategy, "family": find_strategy(strategy).family, "seed": seed,
                   "status": "failed", "error": message, "budget": config.budget, "budget_unit": config.budget_unit}
            write_json(run_dir / "failed.json", row)
            say(f"      failed ({message}); details in {run_dir / 'error.log'}; the other runs go on")
        else:
            write_json(run_dir / "done.json", row)
            (run_dir / "failed.json").unlink(missing_ok=True)
            say(f"      PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, genotype {row['genotype_id']} "
                f"({time.perf_counter() - started:.0f} s)")
        rows.append(row)
        write_results(rows, out / "results.csv")

    results = write_results(rows, out / "results.csv")
    from nas_restore.plots import compare_plots

    plots = compare_plots(results, out, anytime_curves(results, out),
                          cost_column="cost_seconds" if config.budget_unit == "seconds" else "cost_epochs",
                          psnr_input=test_record["psnr_input"])
    summary_path = write_summary(config, results, test_record, out, plots, command)
    return CompareResult(out=out, results=results, summary_path=summary_path, plots=plots, ran=ran)


def anytime_curves(results: pd.DataFrame, out: Path) -> dict[str, list[pd.DataFrame]]:
    """Each finished run's anytime.csv, by strategy."""
    curves: dict[str, list[pd.DataFrame]] = {}
    for row in results[results["status"] == "done"].itertuples():
        path = out / "runs" / run_name(row.strategy, int(row.seed)) / "search" / "anytime.csv"
        try:
            curves.setdefault(row.strategy, []).append(pd.read_csv(path))
        except (OSError, pd.errors.EmptyDataError):
            log.warning("no anytime curve for %s seed %s (%s)", row.strategy, row.seed, path)
    return curves


def write_results(rows: list[dict[str, Any]], path: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[list(RESULT_COLUMNS)]
    frame.to_csv(path, index=False)
    return frame


# --------------------------------------------------------------------------------------------------
# the report


def _paired_difference(results: pd.DataFrame, strategy: str, reference: str) -> list[float]:
    """PSNR(strategy, seed) - PSNR(reference, seed) over the seeds where both finished."""
    done = results[results["status"] == "done"]
    a = done[done["strategy"] == strategy].set_index("seed")["psnr"]
    b = done[done["strategy"] == reference].set_index("seed")["psnr"]
    common = a.index.intersection(b.index)
    return [float(a[s]) - float(b[s]) for s in common]


def strategy_table(results: pd.DataFrame, strategies: list[str], reference: str | None,
                   test_record: dict[str, Any] | None = None) -> str:
    header = ["strategy", "runs", "PSNR (dB)", "SSIM", f"Δ PSNR vs {reference or '–'} (paired)", "params",
              "FLOPs", "search s", "search epochs", "retrain s"]
    order = ([reference] if reference else []) + [s for s in strategies if s != reference]
    rows = []
    if test_record is not None:
        rows.append(["rainy input", "–", f"{test_record['psnr_input']:.2f}", f"{test_record['ssim_input']:.4f}",
                     "–", "–", "–", "–", "–", "–"])
    for strategy in order:
        sub = results[results["strategy"] == strategy]
        done = sub[sub["status"] == "done"]
        if reference is None:
            delta = "–"
        elif strategy == reference:
            delta = "reference"
        else:
            delta = mean_std(_paired_difference(results, strategy, reference))
            delta = delta if delta == "–" or delta.startswith("-") else "+" + delta
        rows.append([f"**{strategy}**" if strategy == reference else strategy, f"{len(done)}/{len(sub)}",
                     mean_std(done["psnr"]), mean_std(done["ssim"], 4), delta,
                     fmt_count(done["params"].astype(float).mean()) if len(done) else "–",
                     fmt_count(done["flops"].astype(float).mean()) if len(done) else "–",
                     mean_std(done["search_seconds"], 0), mean_std(done["search_cost_epochs"], 1),
                     mean_std(done["retrain_seconds"], 0)])
    return markdown_table(header, rows)


def write_summary(config: CompareConfig, results: pd.DataFrame, test_record: dict[str, Any], out: Path,
                  plots: list[Path], command: str | None) -> Path:
    from strategies import find_strategy

    reference = REFERENCE_STRATEGY if REFERENCE_STRATEGY in config.strategies else None
    families = {s: find_strategy(s) for s in config.strategies}
    one_shot = [s for s, spec in families.items() if spec.one_shot]
    multi = [s for s, spec in families.items() if not spec.one_shot]
    if config.budget_unit == "epochs":
        oneshot_budget = budget_settings(config, True)
        budget_text = (f"{config.budget:g} epoch-equivalents per search (one epoch = one pass over the search's "
                       f"train split by one network). One-shot ({', '.join(one_shot) or 'none here'}): "
                       f"{oneshot_budget['epochs']} supernet epoch(s). ")
        if multi:
            m = budget_settings(config, False)
            budget_text += (f"Multi-trial ({', '.join(multi)}): {m['max_trials']} trial(s) x {m['trial_epochs']} "
                            "epoch(s). ")
        budget_text += ("Caveat: a supernet epoch runs every candidate operation, and the DARTS family adds an "
                        "architecture step on the validation split, so one supernet epoch costs more compute than "
                        "one single-network epoch: compare the search seconds too.")
    else:
        budget_text = (f"{config.budget:g} wall-clock seconds per search for every strategy (epochs and trials "
                       f"capped at {config.seconds_max_epochs}; the clock stops first). Wall-clock budgets depend "
                       "on the machine's load: read them with the load average below.")
    space_cfg = f"preset {config.preset}" + (f" with {config.space_settings}" if config.space_settings else "")
    sdata, rdata, rt = config.search.data, config.retrain.data, config.retrain.train
    seeds = config.seed_list
    mach = machine_info(_resolved_device(config.device))
    regenerate = command or "(run from Python: see compare.yaml)"
    failed = results[results["status"] != "done"]

    lines = [
        f"# Strategy comparison on the `{config.space}` space",
        "",
        "What this shows: which strategy found the better derainer of this space under one search budget, one "
        "retraining recipe and one held-out test set, over several seeds, with random search as the reference "
        "(a NAS method is worth its cost only if it beats it). What it does not show: budgets are CPU-sized "
        "(a few epochs on small patches), and the rain is synthetic (the same generator and the same five "
        "scikit-image photographs, at other crops, in search, training and test data), so the ranking need not "
        "carry over to real rain or to paper-sized budgets.",
        "",
        "## Result",
        "",
        f"Rainy input on the test set: PSNR {test_record['psnr_input']:.2f} dB, SSIM "
        f"{test_record['ssim_input']:.4f} ({test_record['count']} frames).",
        "",
        strategy_table(results, config.strategies, reference, test_record),
        "",
        "Mean ± sample standard deviation over seeds of finished runs; Δ is the per-seed difference to "
        f"{reference} (the same seed's data), then its mean ± std." if reference else
        "Mean ± sample standard deviation over seeds. No random-search reference in this comparison: add "
        "`random` to --strategies for the baseline every NAS result should be read against.",
        "",
    ]
    if len(failed):
        lines += ["Failed runs (re-run the command to retry them):", ""]
        lines += [f"- {r.strategy} seed {r.seed}: {r.error}" for r in failed.itertuples()]
        lines.append("")
    for path in plots:
        lines += [f"![{path.stem}]({path.name})", ""]
    lines += [
        "## Protocol",
        "",
        f"- space: `{config.space}`, {space_cfg}",
        f"- strategies: {', '.join(f'{s} ({spec.family})' for s, spec in families.items())}; options: "
        f"{config.strategy_options or 'defaults (nas-restore strategies --json)'}",
        f"- seeds: {', '.join(map(str, seeds))}; seed s searches and retrains on synthetic items of seeds "
        "10000·s+1 (train) and 10000·s+2 (validation), the same for every strategy",
        f"- budget: {budget_text}",
        f"- search: batch {config.search.batch_size}, lr {config.search.lr:g}, {sdata.train_items} train / "
        f"{sdata.val_items} validation patches of {sdata.patch_size} px",
        f"- retraining (every genotype alike, from scratch): {rt.epochs} epoch(s), batch {rt.batch_size}, Adam lr "
        f"{rt.lr:g} cosine to {rt.min_lr:g}, loss L1 {rt.loss.l1_weight:g} + SSIM {rt.loss.ssim_weight:g}, "
        f"{rdata.train_items} train / {rdata.val_items} validation patches of {rdata.patch_size} px; the model "
        "kept is the best epoch by validation PSNR",
        f"- test: {config.test.clips} synthetic clips x {config.test.frames_per_clip} frames of "
        f"{config.test.size} px (rain {', '.join(config.test.rain_types)}), written by the folder writer from seed "
        f"{config.test.seed} (salted apart from the training items), never searched or trained on; full frames",
        f"- metrics: {test_record['protocol']}; FLOPs of one forward pass at {config.test.size}x{config.test.size} "
        "(2 per multiply-add); search seconds include the search's own validation",
        "- anytime curves: best validation PSNR found so far against search cost; one-shot runs score the "
        "supernet, multi-trial runs each trained trial, so the levels of the two families are not comparable, "
        "only their shapes",
        "",
        "## Machine",
        "",
        machine_line(mach),
        "",
        "## Regenerate",
        "",
        f"    {regenerate}",
        "",
        f"or, with every setting from this folder: `nas-restore compare --config {out / 'compare.yaml'} "
        f"--out {out}`. Re-running resumes: finished runs (runs/*/done.json) are skipped. Per run: "
        "`runs/<strategy>-seed<k>/` (search folder, retraining, evaluation/per_item.csv). Per-run rows: "
        "results.csv.",
        "",
    ]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _resolved_device(device: str) -> str:
    from nas_restore.device import resolve_device

    return str(resolve_device(device))


__all__ = ["CompareConfig", "SearchRecipe", "HeldOutConfig", "CompareResult", "budget_settings", "search_config",
           "run_compare", "run_one", "write_results", "seed_everything", "RESULT_COLUMNS"]
