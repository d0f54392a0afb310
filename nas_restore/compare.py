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

Several spaces (``space: [tmics, rrgnet, rdmc]`` or ``--space tmics,rrgnet,rdmc``) are each searched by
every strategy x seed under that same protocol; the held-out clips are shared, and every model is scored
on each clip frame as the centre of its own window (one frame for an image derainer), so all are scored
on the same frames.

The out folder holds ``compare.yaml`` (the settings), ``runs/<strategy>-seed<k>/`` (one per run, or
``runs/<space>/<strategy>-seed<k>/`` with several spaces: the search folder, the retraining folder, the
evaluation, and a record per finished stage), and the report:
``results.csv``, ``summary.md`` and PNG plots. Re-running the same command resumes: finished runs are
skipped, unfinished ones continue where they stopped (a search from its checkpoint or trial ledger, a
retraining from its ``last.ckpt``), failed ones are retried; a run that fails is recorded with its error and
the others go on. A run's record counts its whole search and retraining (every call's epochs and seconds).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nas_restore import config as cfg
from nas_restore.build import load_trained
from nas_restore.datasets import DataConfig
from nas_restore.device import resolve_device
from nas_restore.evaluation import evaluate_folder
from nas_restore.losses import LossConfig
from nas_restore.plots import compare_plots
from nas_restore.precision import resolve_precision
from nas_restore.profiling import count_flops, count_parameters, input_shape
from nas_restore.report_common import fmt_count, markdown_table, mean_std
from nas_restore.retraining import RetrainRunConfig, run_retrain
from nas_restore.run_records import ANYTIME
from nas_restore.search import SearchConfig, run_search
from nas_restore.seeding import seed_everything
from nas_restore.sources import load_genotype
from nas_restore.study import HeldOutConfig, changed_fields
from nas_restore.study import held_out_test as write_held_out
from nas_restore.study import (check_single_process, machine_info, machine_section, protocol_section, read_json,
                               refuse_changed_settings, regenerate_section, retrain_totals, run_unit, write_json)
from nas_restore.training import RetrainConfig
from search_spaces import find_space
from strategies import find_strategy

log = logging.getLogger(__name__)

BUDGET_UNITS = ("epochs", "seconds")
REFERENCE_STRATEGY = "random"
RESULT_COLUMNS = ("strategy", "family", "seed", "status", "genotype_id", "params", "flops", "search_seconds",
                  "search_cost_epochs", "decided", "decision_margin", "retrain_seconds", "retrain_epochs",
                  "retrain_val_psnr", "psnr", "ssim",
                  "psnr_input", "ssim_input", "budget", "budget_unit", "genotype", "error")
# settings that may change between calls on one out folder without invalidating finished runs
_EXTENSIBLE = ("strategies", "seeds", "first_seed", "progress")
# ... and, when the folder already holds a several-space comparison, these (checked space by space)
_PER_SPACE = ("space", "preset", "space_settings")


@dataclass
class SearchRecipe:
    """Search settings every strategy shares (the budget and the strategy are set per run)."""

    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(patch_size=32, train_items=64, val_items=32))
    num_workers: int = 0


def _default_retrain() -> RetrainRunConfig:
    return RetrainRunConfig(
        train=RetrainConfig(epochs=4, batch_size=8, lr=2e-3, min_lr=1e-5, progress=False),
        data=DataConfig(patch_size=32, train_items=128, val_items=32))


@dataclass
class CompareConfig:
    """A whole comparison; ``nas-restore compare --config FILE`` reads these keys (flags override)."""

    space: str | list[str] = "tmics"      # one space, or several ([tmics, rdmc] or "tmics,rdmc"), each searched alike
    preset: str | dict[str, str] | None = "demo"       # one name for every space, or {space: preset}
    space_settings: dict[str, Any] = field(default_factory=dict)   # flat (one space) or {space: {key: value}}
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
    precision: str = "fp32"               # fp32, bf16, fp16 or auto: searches, retrainings and scoring alike
    progress: bool = False

    def __post_init__(self) -> None:
        self.retrain.train.precision = self.precision  # one setting for every stage
        check_single_process(self.retrain.train, "compare")
        names = self.space.split(",") if isinstance(self.space, str) else list(self.space or [])
        names = [str(n).strip() for n in names if str(n).strip()]
        if not names:
            raise ValueError("space is empty: name at least one search space (e.g. tmics, or tmics,rrgnet,rdmc)")
        if len(set(names)) != len(names):
            raise ValueError(f"space lists a name twice: {names}")
        # one space stays a string, so that a single-space compare.yaml reads exactly as before
        self.space = names[0] if len(names) == 1 else names
        if isinstance(self.preset, dict):
            missing = [s for s in names if s not in self.preset]
            extra = sorted(set(self.preset) - set(names))
            if missing or extra:
                raise ValueError(f"preset keyed by space must name exactly the spaces compared ({', '.join(names)}); "
                                 f"missing {missing}, not compared {extra}. Or give one preset name for all")
        if self.space_settings and not _keyed(self.space_settings, names) and len(names) > 1:
            raise ValueError(f"with several spaces, key space_settings by space name ({{{names[0]}: {{...}}, ...}}): "
                             f"its keys {sorted(self.space_settings)} are not all spaces compared "
                             f"({', '.join(names)})")
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

    @property
    def spaces(self) -> list[str]:
        return [self.space] if isinstance(self.space, str) else list(self.space)

    @property
    def multi_space(self) -> bool:
        return len(self.spaces) > 1

    def preset_for(self, space: str) -> str | None:
        return _preset_for(self.preset, space)

    def settings_for(self, space: str) -> dict[str, Any]:
        return _settings_for(self.space_settings, self.spaces, space)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "compare") -> "CompareConfig":
        """Settings given in ``data`` over the defaults of this class, nested ones included (a YAML file
        with ``retrain: {train: {epochs: 2}}`` keeps the comparison's other retraining defaults)."""
        return cfg.from_dict(cls, cfg.merge(cfg.to_dict(cls()), data or {}), where)


def _keyed(settings: dict[str, Any], spaces: list[str]) -> bool:
    """Whether ``space_settings`` is keyed by space name (rather than one space's flat settings)."""
    return bool(settings) and all(k in spaces and isinstance(v, dict) for k, v in settings.items())


def _preset_for(preset: Any, space: str) -> str | None:
    return preset.get(space) if isinstance(preset, dict) else preset


def _settings_for(settings: dict[str, Any] | None, spaces: list[str], space: str) -> dict[str, Any]:
    settings = settings or {}
    if _keyed(settings, spaces):
        return dict(settings.get(space) or {})
    return dict(settings)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def check_spaces(config: CompareConfig) -> dict[str, int]:
    """Resolve every space's config now (an unknown space, preset or setting fails before any run) and
    check the test clips are long enough for its input window; returns the frames each space takes."""
    frames: dict[str, int] = {}
    for space in config.spaces:
        space_config = find_space(space).config(config.preset_for(space), **config.settings_for(space))
        frames[space] = int(getattr(space_config, "frames", 1))
        if frames[space] > config.test.frames_per_clip:
            raise ValueError(f"space {space!r} takes {frames[space]} input frames but the test clips have "
                             f"test.frames_per_clip={config.test.frames_per_clip}: raise test.frames_per_clip to "
                             f"at least {frames[space]}")
    safe = [_safe(s) for s in config.spaces]
    if len(set(safe)) != len(safe):
        raise ValueError(f"spaces {config.spaces} give the same run folder name ({safe}): rename one")
    return frames


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


def search_config(config: CompareConfig, strategy: str, seed: int, space: str | None = None) -> SearchConfig:
    """The search of one run; ``space`` is one of ``config.spaces`` (default: the first)."""
    spec = find_strategy(strategy)
    recipe = config.search
    space = space or config.spaces[0]
    return SearchConfig(
        space=space, preset=config.preset_for(space), space_settings=config.settings_for(space), strategy=strategy,
        strategy_options=dict(config.strategy_options.get(strategy, {})), batch_size=recipe.batch_size,
        lr=recipe.lr, weight_decay=recipe.weight_decay, loss=recipe.loss, data=recipe.data, seed=seed,
        device=config.device, precision=config.precision, num_workers=recipe.num_workers,
        progress=config.progress, **budget_settings(config, spec.one_shot))


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
    return write_held_out(config.test, out)


# --------------------------------------------------------------------------------------------------
# one run


def run_name(strategy: str, seed: int) -> str:
    return f"{_safe(strategy)}-seed{seed}"


def run_path(config: CompareConfig, space: str, strategy: str, seed: int) -> Path:
    """A run's folder relative to the out folder: ``runs/<strategy>-seed<k>`` (one space) or
    ``runs/<space>/<strategy>-seed<k>`` (several)."""
    base = Path("runs") / _safe(space) if config.multi_space else Path("runs")
    return base / run_name(strategy, seed)


def run_label(config: CompareConfig, space: str, strategy: str, seed: int) -> str:
    return str(run_path(config, space, strategy, seed).relative_to("runs"))


def _search_cost_epochs(genotype: Any, run_dir: Path) -> float:
    cost = (genotype.metadata or {}).get("search_cost_epochs")
    if cost is not None:
        return float(cost)
    try:
        anytime = pd.read_csv(run_dir / ANYTIME)
        return float(anytime["cost_epochs"].iloc[-1])
    except (OSError, KeyError, IndexError, pd.errors.EmptyDataError):
        return math.nan


def run_one(config: CompareConfig, strategy: str, seed: int, run_dir: Path, test_dir: Path,
            test_record: dict[str, Any], space: str | None = None) -> dict[str, Any]:
    """Search, retrain, evaluate one (space, strategy, seed), skipping the stages already recorded."""
    spec = find_strategy(strategy)
    space = space or config.spaces[0]
    search_dir = run_dir / "search"
    search = read_json(run_dir / "search.json")
    if search is None:
        # an unfinished search continues from its checkpoint (one-shot) or ledger (multi-trial): run_search resumes
        if search_dir.exists():
            log.info("%s: continuing the unfinished search in %s", run_dir.name, search_dir)
        sconf = search_config(config, strategy, seed, space)
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
        # an earlier call killed mid-retraining left retrain/checkpoints/last.ckpt: run_retrain continues from it
        result = run_retrain(genotype, retrain_config(config, seed), run_dir / "retrain")
        retrained = {"model": "retrain/model.pt", "best_val_psnr": result.best_val_psnr,
                     **retrain_totals(result.metrics_csv, result.epochs_run, result.seconds)}  # every call's epochs
        write_json(run_dir / "retrain.json", retrained)

    model, _ = load_trained(run_dir / retrained["model"])
    frames = int(genotype.space_config.get("frames", 1))  # the window centred on every test frame
    scored = resolve_precision(config.precision, resolve_device(config.device)).wrap(model)
    evaluation = evaluate_folder(test_dir, scored, frames=frames, device=config.device, progress=False)
    evaluation.save(run_dir / "evaluation")
    model.cpu()
    size = config.test.size
    row = {
        "strategy": strategy, "family": spec.family, "seed": seed, "status": "done",
        "genotype_id": search["genotype_id"], "params": count_parameters(model),
        "flops": count_flops(model, input_shape(frames, size, size)),
        "search_seconds": search["search_seconds"], "search_cost_epochs": search["search_cost_epochs"],
        **_decision_columns(genotype),
        "retrain_seconds": round(retrained["seconds"], 2), "retrain_epochs": retrained["epochs"],
        "retrain_val_psnr": retrained["best_val_psnr"],
        "psnr": evaluation.summary["psnr"], "ssim": evaluation.summary["ssim"],
        "psnr_input": test_record["psnr_input"], "ssim_input": test_record["ssim_input"],
        "budget": config.budget, "budget_unit": config.budget_unit,
        "genotype": str(run_path(config, space, strategy, seed) / search["genotype"]), "error": "",
    }
    return {"space": space, **row} if config.multi_space else row


# --------------------------------------------------------------------------------------------------
# the whole comparison


@dataclass
class CompareResult:
    out: Path
    results: pd.DataFrame
    summary_path: Path
    plots: list[Path]
    ran: list[str]          # run folders worked on in this call (the others were already finished)


def _space_record(config: CompareConfig, space: str) -> dict[str, Any]:
    """A space's preset and settings as they read back from JSON/YAML (tuples as lists), for comparing."""
    record = {"space": space, "preset": config.preset_for(space), "space_settings": config.settings_for(space)}
    return json.loads(json.dumps(record, default=str))


def _check_same_settings(out: Path, config: CompareConfig) -> None:
    previous_path = out / "compare.yaml"
    if previous_path.exists():
        _check_same_yaml(out, previous_path, config)
    if config.multi_space:
        # a space left out of an earlier call and named again keeps its finished runs: only if alike
        for space in config.spaces:
            record_path = out / "runs" / _safe(space) / "space.json"
            record = read_json(record_path)
            if record is not None and record != _space_record(config, space):
                raise ValueError(f"{record_path.parent} holds runs of space {space!r} made with other settings "
                                 f"(preset {record.get('preset')}, space_settings {record.get('space_settings')}): "
                                 "give another --out, or those settings")


def _check_same_yaml(out: Path, previous_path: Path, config: CompareConfig) -> None:
    previous = cfg.load_yaml(previous_path)
    current = cfg.to_dict(config)
    extensible = set(_EXTENSIBLE)
    if isinstance(previous.get("space"), list) and config.multi_space:
        # several spaces before and now (the same run layout): spaces may be added or left out like
        # strategies, but a space in both must keep its preset and settings
        extensible |= set(_PER_SPACE)
        before = [str(s) for s in previous["space"]]
        kept = [s for s in config.spaces if s in before]
        changed_spaces = [s for s in kept
                          if {"space": s, "preset": _preset_for(previous.get("preset"), s),
                              "space_settings": _settings_for(previous.get("space_settings"), before, s)}
                          != _space_record(config, s)]
    else:
        changed_spaces = []
    changed = changed_fields(previous, current, ignore=extensible)
    changed += [f"preset/space_settings of {s}" for s in changed_spaces]
    refuse_changed_settings(out, "a comparison", changed, "its finished runs would not be comparable",
                            "only strategies and seeds may change, and spaces be added to a comparison of several "
                            "spaces", recorded_in=previous_path)


def run_compare(config: CompareConfig, out_dir: str | Path, command: str | None = None,
                say: Callable[[str], None] = log.info) -> CompareResult:
    """Run (or resume) the comparison into ``out_dir``; write results.csv, summary.md and the plots."""
    for name in config.strategies:
        find_strategy(name)  # an unknown name fails now, not after an hour of other runs
    frames = check_spaces(config)  # so does an unknown space, preset or setting
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_settings(out, config)
    cfg.save_yaml(config, out / "compare.yaml")
    if config.multi_space:
        for space in config.spaces:
            write_json(out / "runs" / _safe(space) / "space.json", _space_record(config, space))
    test_dir, test_record = held_out_test(config, out)
    columns = result_columns(config)

    rows: list[dict[str, Any]] = []
    ran: list[str] = []
    runs = [(sp, s, d) for sp in config.spaces for s in config.strategies for d in config.seed_list]
    for k, (space, strategy, seed) in enumerate(runs, 1):
        run_dir = out / run_path(config, space, strategy, seed)
        label = run_label(config, space, strategy, seed)
        failed_row = {"strategy": strategy, "family": find_strategy(strategy).family, "seed": seed,
                      "status": "failed", "budget": config.budget, "budget_unit": config.budget_unit}
        if config.multi_space:
            failed_row = {"space": space, **failed_row}
        row, worked = run_unit(
            run_dir, f"[{k}/{len(runs)}] {label}", f"[{k}/{len(runs)}] {label}: search, retrain, evaluate",
            lambda: run_one(config, strategy, seed, run_dir, test_dir, test_record, space), failed_row,
            lambda r: f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, genotype {r['genotype_id']}", say,
            failed_note="; the other runs go on")
        rows.append(row)
        if worked:
            ran.append(label)
            write_results(rows, out / "results.csv", columns)

    results = write_results(rows, out / "results.csv", columns)
    # with several spaces every figure tells them apart by labelling each series space/strategy
    plotted = results.assign(strategy=_labels(config, results)) if config.multi_space else results
    plots = compare_plots(plotted, out, anytime_curves(results, out, config),
                          cost_column="cost_seconds" if config.budget_unit == "seconds" else "cost_epochs",
                          psnr_input=test_record["psnr_input"])
    summary_path = write_summary(config, results, test_record, out, plots, command, frames)
    return CompareResult(out=out, results=results, summary_path=summary_path, plots=plots, ran=ran)


def _labels(config: CompareConfig, results: pd.DataFrame) -> list[str]:
    """Each row's series name: the strategy, or ``space/strategy`` with several spaces."""
    if not config.multi_space:
        return [str(s) for s in results["strategy"]]
    return [f"{space}/{strategy}" for space, strategy in zip(results["space"], results["strategy"])]


def anytime_curves(results: pd.DataFrame, out: Path,
                   config: CompareConfig | None = None) -> dict[str, list[pd.DataFrame]]:
    """Each finished run's anytime.csv, by strategy (by ``space/strategy`` with several spaces)."""
    config = config or CompareConfig()
    curves: dict[str, list[pd.DataFrame]] = {}
    done = results[results["status"] == "done"]
    for label, row in zip(_labels(config, done), done.itertuples()):
        space = row.space if config.multi_space else config.spaces[0]
        path = out / run_path(config, space, row.strategy, int(row.seed)) / "search" / ANYTIME
        try:
            curves.setdefault(label, []).append(pd.read_csv(path))
        except (OSError, pd.errors.EmptyDataError):
            log.warning("no anytime curve for %s seed %s (%s)", label, row.seed, path)
    return curves


def result_columns(config: CompareConfig) -> tuple[str, ...]:
    """results.csv's columns: a leading ``space`` column only when several spaces are compared."""
    return ("space",) + RESULT_COLUMNS if config.multi_space else RESULT_COLUMNS


def write_results(rows: list[dict[str, Any]], path: Path,
                  columns: tuple[str, ...] = RESULT_COLUMNS) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame:
            frame[column] = None
    frame = frame[list(columns)]
    frame.to_csv(path, index=False)
    return frame


# --------------------------------------------------------------------------------------------------
# the report


def _decision_columns(genotype: Any) -> dict[str, Any]:
    """Did the one-shot search decide (nas_restore/decision.py)? Blank for multi-trial searches."""
    decision = (genotype.metadata or {}).get("decision")
    if not decision:
        return {"decided": "", "decision_margin": None}
    return {"decided": "yes" if decision["decided"] else "no", "decision_margin": decision["median_margin"]}


def _decided_text(done: pd.DataFrame) -> str:
    """``k/n`` one-shot runs whose search decided, with their median margin; – for multi-trial."""
    if "decided" not in done or not done["decided"].isin(["yes", "no"]).any():
        return "–"
    marked = done[done["decided"].isin(["yes", "no"])]
    margin = pd.to_numeric(marked["decision_margin"], errors="coerce").median()
    return f"{int((marked['decided'] == 'yes').sum())}/{len(marked)} (margin {margin:.2f})"


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
              "FLOPs", "search s", "search epochs", "decided", "retrain s"]
    order = ([reference] if reference else []) + [s for s in strategies if s != reference]
    rows = []
    if test_record is not None:
        rows.append(["rainy input", "–", f"{test_record['psnr_input']:.2f}", f"{test_record['ssim_input']:.4f}",
                     "–", "–", "–", "–", "–", "–", "–"])
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
                     _decided_text(done), mean_std(done["retrain_seconds"], 0)])
    return markdown_table(header, rows)


def spaces_table(config: CompareConfig, results: pd.DataFrame, frames: dict[str, int],
                 test_record: dict[str, Any]) -> str:
    """One row per space: its best strategy (highest mean test PSNR over finished seeds) and that one's
    size and scores."""
    header = ["space", "preset", "input frames", "best strategy", "runs", "PSNR (dB)", "SSIM", "params", "FLOPs"]
    rows = [["rainy input", "–", "–", "–", "–", f"{test_record['psnr_input']:.2f}",
             f"{test_record['ssim_input']:.4f}", "–", "–"]]
    for space in config.spaces:
        sub = results[results["space"] == space]
        done = sub[sub["status"] == "done"]
        row = [f"`{space}`", str(config.preset_for(space)), str(frames.get(space, "?"))]
        if done.empty:
            rows.append(row + ["–", f"0/{len(sub)}", "–", "–", "–", "–"])
            continue
        best = done.groupby("strategy", sort=False)["psnr"].mean().astype(float).idxmax()
        b = done[done["strategy"] == best]
        rows.append(row + [best, f"{len(b)}/{len(sub[sub['strategy'] == best])}", mean_std(b["psnr"]),
                           mean_std(b["ssim"], 4), fmt_count(b["params"].astype(float).mean()),
                           fmt_count(b["flops"].astype(float).mean())])
    return markdown_table(header, rows)


def _space_text(config: CompareConfig, space: str) -> str:
    settings = config.settings_for(space)
    return f"preset {config.preset_for(space)}" + (f" with {settings}" if settings else "")


def write_summary(config: CompareConfig, results: pd.DataFrame, test_record: dict[str, Any], out: Path,
                  plots: list[Path], command: str | None, frames: dict[str, int] | None = None) -> Path:
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
    mach = machine_info(_resolved_device(config.device))
    regenerate = command or "(run from Python: see compare.yaml)"
    failed = results[results["status"] != "done"]
    if config.multi_space:
        return _write_multi_summary(config, results, test_record, out, plots, frames or check_spaces(config),
                                    reference, families, budget_text, regenerate, mach)

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
    lines += _failed_and_plot_lines(failed, plots, lambda r: r.strategy)
    lines += _protocol_lines(config, test_record, families, budget_text, regenerate, mach, out)
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _write_multi_summary(config: CompareConfig, results: pd.DataFrame, test_record: dict[str, Any], out: Path,
                         plots: list[Path], frames: dict[str, int], reference: str | None, families: dict[str, Any],
                         budget_text: str, regenerate: str, mach: dict[str, Any]) -> Path:
    """summary.md of a several-space comparison: the spaces table, then per space its strategies."""
    names = ", ".join(f"`{s}`" for s in config.spaces)
    failed = results[results["status"] != "done"]
    window = ", ".join(f"{s} {frames[s]}" for s in config.spaces)
    lines = [
        f"# Strategy comparison across the {names} spaces",
        "",
        "What this shows: which of these search spaces, searched by each strategy under one search budget, "
        "gave the better derainer after one retraining recipe, on one held-out test set, over several seeds; "
        "within each space random search is the reference (a NAS method is worth its cost only if it beats it). "
        "What it does not show: budgets are CPU-sized (a few epochs on small patches), one epoch-equivalent "
        "costs each space a different amount of compute (compare the search and retraining seconds), and the "
        "rain is synthetic (the same generator and the same five scikit-image photographs, at other crops, in "
        "search, training and test data), so the ranking need not carry over to real rain or to paper-sized "
        "budgets.",
        "",
        "## Spaces",
        "",
        spaces_table(config, results, frames, test_record),
        "",
        "Best strategy: the highest mean test PSNR of the space's finished runs; its PSNR and SSIM are mean ± "
        "sample standard deviation over seeds, params and FLOPs the mean over seeds. The spaces take different "
        f"numbers of input frames ({window}): every model gets, for each frame of the held-out clips, the window "
        "of its own length centred on that frame (clip edges replicated; a one-frame model gets the frame alone) "
        "and is scored on that centre frame against its clean target, so every model is scored on the same "
        f"frames ({test_record['count']} frames).",
        "",
    ]
    for space in config.spaces:
        sub = results[results["space"] == space]
        lines += [f"## Space `{space}` ({_space_text(config, space)})", "",
                  strategy_table(sub, config.strategies, reference), ""]
    lines += [
        "Mean ± sample standard deviation over seeds of finished runs; Δ is the per-seed difference to "
        f"{reference} of the same space (the same seed's data), then its mean ± std." if reference else
        "Mean ± sample standard deviation over seeds. No random-search reference in this comparison: add "
        "`random` to --strategies for the baseline every NAS result should be read against.",
        "",
    ]
    lines += _failed_and_plot_lines(failed, plots, lambda r: f"{r.space}/{r.strategy}")
    lines += ["Figures: each series is `space/strategy`.", ""]
    lines += _protocol_lines(config, test_record, families, budget_text, regenerate, mach, out, frames)
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _failed_and_plot_lines(failed: pd.DataFrame, plots: list[Path], label: Callable[[Any], str]) -> list[str]:
    lines: list[str] = []
    if len(failed):
        lines += ["Failed runs (re-run the command to retry them):", ""]
        lines += [f"- {label(r)} seed {r.seed}: {r.error}" for r in failed.itertuples()]
        lines.append("")
    for path in plots:
        lines += [f"![{path.stem}]({path.name})", ""]
    return lines


def _protocol_lines(config: CompareConfig, test_record: dict[str, Any], families: dict[str, Any], budget_text: str,
                    regenerate: str, mach: dict[str, Any], out: Path,
                    frames: dict[str, int] | None = None) -> list[str]:
    """The Protocol, Machine and Regenerate sections of summary.md; ``frames`` (per space) for several spaces."""
    sdata, rdata, rt = config.search.data, config.retrain.data, config.retrain.train
    multi = frames is not None
    if multi:
        space_line = ("spaces: " + "; ".join(f"`{s}` ({_space_text(config, s)}, {frames[s]} input frame(s))"
                                             for s in config.spaces) + "; each searched by every strategy x seed below")
    else:
        space_line = f"space: `{config.space}`, {_space_text(config, config.spaces[0])}"
    protocol = [
        space_line,
        f"strategies: {', '.join(f'{s} ({spec.family})' for s, spec in families.items())}; options: "
        f"{config.strategy_options or 'defaults (nas-restore strategies --json)'}",
        f"seeds: {', '.join(map(str, config.seed_list))}; seed s searches and retrains on synthetic items of seeds "
        "10000·s+1 (train) and 10000·s+2 (validation), the same for every strategy" +
        (" and space (windows of each space's own length)" if multi else ""),
        f"budget: {budget_text}",
        f"search: batch {config.search.batch_size}, lr {config.search.lr:g}, {sdata.train_items} train / "
        f"{sdata.val_items} validation patches of {sdata.patch_size} px",
        f"retraining (every genotype alike, from scratch): {rt.epochs} epoch(s), batch {rt.batch_size}, Adam lr "
        f"{rt.lr:g} cosine to {rt.min_lr:g}, loss L1 {rt.loss.l1_weight:g} + SSIM {rt.loss.ssim_weight:g}, "
        f"{rdata.train_items} train / {rdata.val_items} validation patches of {rdata.patch_size} px; the model "
        "kept is the best epoch by validation PSNR",
        f"test: {config.test.clips} synthetic clips x {config.test.frames_per_clip} frames of "
        f"{config.test.size} px (rain {', '.join(config.test.rain_types)}), written by the folder writer from seed "
        f"{config.test.seed} (salted apart from the training items), never searched or trained on; full frames" +
        ("; every frame scored as the centre of each model's window" if multi else ""),
        f"metrics: {test_record['protocol']}; FLOPs of one forward pass at {config.test.size}x{config.test.size} "
        + ("with the space's own number of input frames " if multi else "") +
        "(2 per multiply-add); search seconds include the search's own validation",
        "anytime curves: best validation PSNR found so far against search cost; one-shot runs score the "
        "supernet, multi-trial runs each trained trial, so the levels of the two families are not comparable, "
        "only their shapes",
    ]
    resume = (f"or, with every setting from this folder: `nas-restore compare --config {out / 'compare.yaml'} "
              f"--out {out}`. Re-running resumes: " +
              ("finished runs (runs/*/*/done.json) are skipped, and spaces may be added. Per run: "
               "`runs/<space>/<strategy>-seed<k>/` (search folder, retraining, evaluation/per_item.csv). " if multi
               else "finished runs (runs/*/done.json) are skipped. Per run: `runs/<strategy>-seed<k>/` (search "
               "folder, retraining, evaluation/per_item.csv). ") + "Per-run rows: results.csv.")
    return protocol_section(protocol) + machine_section(mach) + regenerate_section(regenerate, "(run from Python: see compare.yaml)", resume)


def _resolved_device(device: str) -> str:
    return str(resolve_device(device))


__all__ = ["CompareConfig", "SearchRecipe", "HeldOutConfig", "CompareResult", "budget_settings", "search_config",
           "check_spaces", "run_compare", "run_one", "run_path", "write_results", "result_columns",
           "RESULT_COLUMNS"]
