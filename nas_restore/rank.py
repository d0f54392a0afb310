"""`nas-restore rank`: several genotypes retrained alike, scored on an evaluation split nobody tuned on.

A searched genotype means something only beside the alternatives trained the same way: random
genotypes of the same space (is the search better than chance?), the released TMICS networks, a
hand-designed baseline, and the rainy input itself. Every entry here gets the same
:class:`~nas_restore.retraining.RetrainRunConfig` (data, recipe, budget, seed), then PSNR/SSIM on
the evaluation data only, plus parameters, FLOPs and frames per second at one stated size.

Entries: a genotype file (``genotype.json``, a search run folder, a DARTS text file, ``FILE:NAME``),
a reference name (``tmics-heavy``, ``tmics-light``), ``random:N`` (N architectures drawn uniformly
from the space of the ``like`` genotype at its space config, kept only when their parameters and MACs
are within ``match_tolerance`` of the like genotype's: a random row of another size would measure size,
not architecture), or ``space:NAME[:PRESET]`` (the architecture of a space without choices, such as a
hand-designed baseline space).

Seeds and chance: every entry is retrained with ``seeds`` retraining seeds (``retrain.train.seed``, +1,
...), each (entry, seed) a unit of its own; the summary gives each entry's mean ± std over its seeds and
its paired difference to the mean of the random rows with a bootstrap interval over test images and
seeds (:mod:`nas_restore.statistics`), and says in words which differences are separable from chance.

Guards: it refuses to train on a split named ``holdout`` (or on a whole folder that defines one), and
evaluation data that overlap the training data (same folder and split, or a split sharing ids).
The out folder resumes like `compare`: ``entries/<label>-<id>/seed-<S>/`` with a record per finished
(entry, seed); a folder of the one-seed layout (``entries/<label>-<id>/done.json``) is reused for the first
seed, so raising ``seeds`` on an old ranking trains only the new seeds.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from nas_restore import config as cfg
from nas_restore.build import build_model, load_trained
from nas_restore.data.folders import DataError, read_splits
from nas_restore.datasets import DataConfig, check_training_split
from nas_restore.device import resolve_device
from nas_restore.evaluation import evaluate_folder
from nas_restore.genotype import Genotype
from nas_restore.metrics import MAX_PSNR
from nas_restore.precision import resolve_precision
from nas_restore.profiling import count_flops, count_parameters, input_shape, measure_latency
from nas_restore.report_common import fmt, fmt_count, markdown_table, mean_std
from nas_restore.retraining import RetrainRunConfig, run_retrain
from nas_restore.run_records import GENOTYPE
from nas_restore.seeding import seed_everything
from nas_restore.sources import (is_like_macs, load_genotype, macs_matched_genotype, random_count, random_genotypes,
                                 random_genotypes_where, source_label, space_genotype, with_frames)
from nas_restore.statistics import (DifferenceCI, paired_difference_ci, score_matrices, seed_summary,
                                    separation_sentence)
from nas_restore.study import (DONE, HeldOutConfig, changed_fields, check_single_process, held_out_test,
                               machine_info, machine_section, protocol_section, read_json, refuse_changed_settings,
                               regenerate_section, retrain_totals, run_unit, write_json)
from nas_restore.training import RetrainConfig
from search_spaces import space_of
from search_spaces.reference import reference_genotype, reference_names

log = logging.getLogger(__name__)

REFERENCE_SIZES = ("released", "like")
# the settings of a TMICS reference replaced by the like genotype's under reference_size "like"
_SIZE_KEYS = ("channels", "frames", "cells_per_branch", "rain_kernels", "fusion_mode")
# the settings every row depends on: a ranking folder refuses a re-run that changes one (entries may change)
_RECIPE_KEYS = ("retrain", "eval_data", "eval_split", "test", "profile_size", "device")
RESULT_COLUMNS = ("rank", "entry", "kind", "seed", "status", "genotype_id", "params", "macs", "flops", "fps",
                  "latency_ms", "retrain_seconds", "retrain_epochs", "retrain_val_psnr", "psnr", "ssim", "source",
                  "error")
PER_IMAGE = "per_image.csv"      # one line per (entry, seed, test image): what the statistics are computed from
STATISTICS = "statistics.csv"    # one line per entry: mean ± std over seeds, difference to random with its interval


def _default_recipe() -> RetrainRunConfig:
    return RetrainRunConfig(train=RetrainConfig(epochs=10, batch_size=8, lr=2e-3, min_lr=1e-5, progress=False),
                            data=DataConfig(patch_size=48, train_items=256, val_items=32))


@dataclass
class RankConfig:
    """A ranking; ``nas-restore rank --config FILE`` reads these keys (flags override)."""

    retrain: RetrainRunConfig = field(default_factory=_default_recipe)   # retrain.data = the training data
    eval_data: str | None = None          # folder scored; None: synthetic held-out clips (``test``)
    eval_split: str | None = None
    test: HeldOutConfig = field(default_factory=HeldOutConfig)
    like: str | None = None               # genotype whose space config random:N and reference_size=like use
    reference_size: str = "released"      # TMICS references at their released size, or at the like genotype's
    random_seed: int = 0                  # random:N tries draw seeds random_seed, random_seed+1, ...
    match_tolerance: float | None = 0.15  # random draws kept within this fraction of like's params and MACs; None: all
    match_tries: int = 50                 # random:N tries at most match_tries * N draws to find N matched ones
    seeds: int = 1                        # retraining seeds per entry: retrain.train.seed, +1, ..., +seeds-1
    bootstrap_resamples: int = 2000       # resamples of the paired interval to the random rows' mean
    bootstrap_seed: int = 0               # the numpy Generator seed of those resamples (same seed, same interval)
    profile_size: list[int] = field(default_factory=lambda: [480, 640])   # [H, W] for FLOPs and frames/s
    latency_repeats: int = 3
    device: str = "auto"
    precision: str = "fp32"               # fp32, bf16, fp16 or auto: retraining, scoring and frames/s alike
    progress: bool = False

    def __post_init__(self) -> None:
        self.retrain.train.precision = self.precision  # one setting for every stage
        check_single_process(self.retrain.train, "rank")
        if self.reference_size not in REFERENCE_SIZES:
            raise ValueError(f"reference_size must be one of {', '.join(REFERENCE_SIZES)}, got {self.reference_size!r}")
        if len(self.profile_size) != 2 or min(self.profile_size) < 8:
            raise ValueError(f"profile_size must be [height, width] >= 8, got {self.profile_size}")
        if self.latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {self.latency_repeats}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.match_tolerance is not None and not self.match_tolerance > 0:
            raise ValueError(f"match_tolerance must be > 0 (e.g. 0.15 for within 15 %) or null to draw without "
                             f"matching, got {self.match_tolerance}")
        if self.match_tries < 1:
            raise ValueError(f"match_tries must be >= 1, got {self.match_tries}")
        if self.bootstrap_resamples < 2000:
            raise ValueError(f"bootstrap_resamples must be >= 2000 (fewer make the 95 % interval's ends noisy), "
                             f"got {self.bootstrap_resamples}")

    @property
    def seed_list(self) -> list[int]:
        """The retraining seeds every entry is trained with."""
        return [self.retrain.train.seed + k for k in range(self.seeds)]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "rank") -> "RankConfig":
        """Settings given in ``data`` over the defaults of this class, nested ones included
        (``match_tolerance: null`` turns matching off: an explicit null is kept, not read as 'not given')."""
        data = data or {}
        merged = cfg.merge(cfg.to_dict(cls()), data)
        if "match_tolerance" in data and data["match_tolerance"] is None:
            merged["match_tolerance"] = None
        return cfg.from_dict(cls, merged, where)


# --------------------------------------------------------------------------------------------------
# the data guards


def check_data(config: RankConfig) -> None:
    """Refuse training on a holdout split and evaluation data that overlap the training data."""
    data = config.retrain.data
    try:
        check_training_split(data)
    except DataError as err:  # in rank's own flag names
        raise DataError(str(err).replace("--split", "--train-split")) from None
    if config.eval_data is None:
        return  # the synthetic held-out clips come from a seed no training item is drawn from
    if data.folder is None or Path(config.eval_data).resolve() != Path(data.folder).resolve():
        return
    same = f"--eval-data {config.eval_data} is the training folder"
    if config.eval_split is None or data.split is None:
        raise DataError(f"{same}, and {'--eval-split' if config.eval_split is None else '--train-split'} is not "
                        "given, so evaluation would score items trained on: give disjoint splits (e.g. "
                        "--train-split fit --eval-split holdout)")
    if config.eval_split == data.split:
        raise DataError(f"{same} with the same split {data.split!r}: evaluation must use data not trained on "
                        f"(e.g. --eval-split holdout)")
    splits = read_splits(Path(data.folder))
    shared = sorted(set(splits.get(data.split, [])) & set(splits.get(config.eval_split, [])))
    if shared:
        raise DataError(f"the splits {data.split!r} and {config.eval_split!r} of {data.folder} share the ids "
                        f"{shared[:10]}{' ...' if len(shared) > 10 else ''}: evaluation must use data not trained on")


# --------------------------------------------------------------------------------------------------
# entries


@dataclass
class Entry:
    label: str
    kind: str          # file, reference, random, space
    source: str
    genotype: Genotype
    match: dict[str, Any] | None = None   # random rows drawn matched: their params, MACs and ratios to like's

    @property
    def folder_name(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.@-]+', '_', self.label)}-{self.genotype.genotype_id()}"


def resize_like(genotype: Genotype, like: Genotype) -> Genotype:
    """The reference ``genotype`` rebuilt at ``like``'s size (channels, frames, cells, rain kernels).

    Only references of ``like``'s space are resized (``resolve_entries`` leaves the others, such as the
    ``rescnn`` baseline, at their own size)."""
    if genotype.space != like.space:
        raise ValueError(f"reference_size 'like' needs a like genotype of the reference's space ({genotype.space}); "
                         f"the like genotype is of space {like.space!r}: pass --like with a {genotype.space} genotype "
                         "or --reference-size released")
    resized = genotype.copy()
    resized.space_config = {**genotype.space_config,
                            **{k: like.space_config[k] for k in _SIZE_KEYS if k in like.space_config}}
    if int(resized.space_config.get("frames", 1)) == 1 and "alignment" in resized.macro:
        resized.macro = {**resized.macro, "alignment": "none"}  # a single frame has nothing to align
    if "fusion_mode" in resized.space_config and resized.fusion:
        resized.fusion = {**resized.fusion, "mode": resized.space_config["fusion_mode"]}
    name = (genotype.metadata or {}).get("name", "reference")
    resized.metadata = {**(genotype.metadata or {}), "name": f"{name}@like",
                        "note": f"{name} rebuilt at the like genotype's size: " +
                                ", ".join(f"{k}={resized.space_config[k]}" for k in _SIZE_KEYS
                                          if k in resized.space_config)}
    return space_of(resized).validate_genotype(resized)


def _frames_like(genotype: Genotype, like: Genotype) -> Genotype:
    """A baseline of another space (e.g. rescnn) taking as many input frames as ``like`` does, so that
    every row reads the same data; only spaces without architecture choices are rebuilt."""
    frames = like.space_config.get("frames")
    if frames is None or genotype.cells or "frames" not in genotype.space_config:
        return genotype
    changed = with_frames(genotype, int(frames))
    if changed is not genotype:
        changed.metadata = {**(changed.metadata or {}), "note": f"input frames set to {frames}, as the like genotype's"}
    return changed


def network_size(genotype: Genotype, profile_size: list[int]) -> tuple[int, int]:
    """Parameters and MACs (FLOPs / 2, one forward pass at ``profile_size`` [H, W]) of the genotype's network:
    the figures of rank's own columns, so that matched random rows are matched on what the table shows."""
    model = build_model(genotype)
    h, w = profile_size
    frames = int(genotype.space_config.get("frames", 1))
    return count_parameters(model), count_flops(model, input_shape(frames, h, w)) // 2


def _within(value: float, target: float, tolerance: float) -> bool:
    return target > 0 and abs(value / target - 1.0) <= tolerance


def matched_random_entries(item: str, count: int, like: Genotype, like_label: str, config: RankConfig,
                           draws: list[dict[str, Any]] | None = None) -> list[Entry]:
    """``random:N``'s entries: N uniform draws of ``like``'s space, or with ``config.match_tolerance`` the first
    N draws (of at most ``match_tries`` x N tries) whose parameters and MACs are within that fraction of ``like``'s.

    Too few matches: a warning, and the rows found are used (the summary says how many of how many);
    what was drawn is appended to ``draws`` (one record per ``random:N``)."""
    tolerance = config.match_tolerance
    source = f"{item} of {like.space} (like {like.genotype_id()})"
    record: dict[str, Any] = {"item": item, "wanted": count, "tolerance": tolerance, "like": like_label,
                              "like_id": like.genotype_id(), "first_seed": config.random_seed,
                              "profile_size": list(config.profile_size)}
    if tolerance is None:
        genotypes = random_genotypes(like, count, config.random_seed)
        record.update(found=len(genotypes), tried=len(genotypes))
        entries = [Entry(g.metadata["name"], "random", source, g) for g in genotypes]
    else:
        like_params, like_macs = network_size(like, config.profile_size)
        sizes: dict[str, tuple[int, int]] = {}

        def keep(genotype: Genotype) -> bool:
            sizes[genotype.genotype_id()] = size = network_size(genotype, config.profile_size)
            return _within(size[0], like_params, tolerance) and _within(size[1], like_macs, tolerance)

        genotypes, tried = random_genotypes_where(like, count, keep, config.random_seed,
                                                   max_tries=config.match_tries * count)
        record.update(found=len(genotypes), tried=tried, like_params=like_params, like_macs=like_macs)
        entries = []
        for g in genotypes:
            params, macs = sizes[g.genotype_id()]
            match = {"params": params, "macs": macs, "params_ratio": params / like_params,
                     "macs_ratio": macs / like_macs, "tolerance": tolerance}
            entries.append(Entry(g.metadata["name"], "random", f"{source}, matched on parameters and MACs within "
                                 f"{tolerance:.0%}", g, match=match))
        if len(genotypes) < count:
            log.warning("%s: only %d of %d random draws of the %s space are within %.0f%% of the like genotype's "
                        "parameters (%d) and MACs (%d) after %d tries; ranking with the %d found (widen "
                        "match_tolerance / --match-size, or turn matching off with --match-size off)", item,
                        len(genotypes), count, like.space, 100 * tolerance, like_params, like_macs, tried,
                        len(genotypes))
    if draws is not None:
        draws.append(record)
    return entries


def resolve_entries(items: list[str], config: RankConfig, draws: list[dict[str, Any]] | None = None) -> list[Entry]:
    """Turn the command's entries into genotypes, in order (``random:N`` expands to N entries, matched in size to
    the like genotype unless ``config.match_tolerance`` is None; each ``random:N``'s draws are recorded in
    ``draws`` when given)."""
    if not items:
        raise ValueError("rank needs at least one entry: a genotype file, a reference name "
                         f"({', '.join(reference_names())}), random:N or space:NAME")
    files: list[tuple[str, Genotype]] = []
    parsed: list[tuple[str, str, Any]] = []
    for item in items:
        count = random_count(item)
        if count is not None:
            parsed.append(("random", item, count))
        elif item.startswith("space:") and not Path(item).exists():
            parsed.append(("space", item, space_genotype(item)))
        elif is_like_macs(item):  # sized once the like genotype is known (below)
            parsed.append(("like-macs", item, None))
        elif item in reference_names() and not Path(item).exists():
            parsed.append(("reference", item, reference_genotype(item)))
        else:
            genotype = load_genotype(item)
            files.append((item, genotype))
            parsed.append(("file", item, genotype))
    like: Genotype | None = None
    like_label = ""
    if config.like is not None:
        like, like_label = load_genotype(config.like), config.like
    elif files:
        like, like_label = files[0][1], files[0][0]
    entries: list[Entry] = []
    for kind, item, value in parsed:
        if kind == "random":
            if like is None:
                raise ValueError(f"{item} needs a genotype whose space config to draw from: list a genotype file "
                                 "among the entries (the first one is used) or pass --like GENOTYPE")
            entries += matched_random_entries(item, value, like, like_label, config, draws)
        elif kind == "reference":
            genotype = value
            if config.reference_size == "like" and (like is None or like.space == genotype.space):
                if like is None:
                    raise ValueError("--reference-size like needs a like genotype: list a genotype file among the "
                                     "entries or pass --like GENOTYPE")
                genotype = resize_like(genotype, like)
            elif config.reference_size == "like" and like is not None:
                genotype = _frames_like(genotype, like)
            entries.append(Entry(genotype.metadata.get("name", item), "reference", item, genotype))
        elif kind == "space":
            entries.append(Entry(value.metadata["name"], "space", item, value))
        elif kind == "like-macs":
            if like is None:
                raise ValueError(f"{item} needs a genotype whose MACs to match: list a genotype file among the "
                                 "entries (the first one is used) or pass --like GENOTYPE")
            genotype, match = macs_matched_genotype(item, like, config.profile_size)
            entries.append(Entry(genotype.metadata["name"], "like-macs", f"{item} (like {like_label})", genotype,
                                 match=match))
        else:
            entries.append(Entry(source_label(item, value), "file", item, value))
    seen: dict[str, int] = {}
    for entry in entries:  # labels name rows and folders: keep them unique
        seen[entry.label] = seen.get(entry.label, 0) + 1
        if seen[entry.label] > 1:
            entry.label = f"{entry.label}#{seen[entry.label]}"
    return entries


# --------------------------------------------------------------------------------------------------
# running


def _eval_data(config: RankConfig, out: Path) -> tuple[Path, str | None, dict[str, Any]]:
    """The evaluation data (folder, split) and the rainy input's scores on it (``psnr``, ``ssim``, ``count``,
    ``protocol``): the given folder, or the synthetic held-out clips written once into ``out``."""
    if config.eval_data is not None:
        root = Path(config.eval_data)
        return root, config.eval_split, evaluate_folder(root, None, split=config.eval_split, progress=False).summary
    folder, record = held_out_test(config.test, out)
    return folder, None, {"psnr": record["psnr_input"], "ssim": record["ssim_input"], "count": record["count"],
                          "protocol": record["protocol"]}


def rank_one(entry: Entry, config: RankConfig, folder: Path, eval_root: Path,
             eval_split: str | None, seed: int | None = None) -> dict[str, Any]:
    """One (entry, seed) unit: retrain with retraining seed ``seed`` (default ``retrain.train.seed``) into
    ``folder/retrain``, score on the evaluation data (``folder/evaluation/per_item.csv``), profile."""
    seed = config.retrain.train.seed if seed is None else seed
    recipe = dataclasses.replace(config.retrain, train=dataclasses.replace(config.retrain.train, seed=seed))
    retrained = read_json(folder / "retrain.json")
    if retrained is None:
        seed_everything(seed)  # same seed, same start for every entry (see compare)
        # an earlier call killed mid-retraining left retrain/checkpoints/last.ckpt: run_retrain continues from it
        result = run_retrain(entry.genotype, recipe, folder / "retrain")
        retrained = {"best_val_psnr": result.best_val_psnr,
                     **retrain_totals(result.metrics_csv, result.epochs_run, result.seconds)}  # every call's epochs
        write_json(folder / "retrain.json", retrained)
    model, genotype = load_trained(folder / "retrain" / "model.pt")
    frames = int(genotype.space_config.get("frames", 1))
    device = resolve_device(config.device)
    scored = resolve_precision(config.precision, device).wrap(model)
    evaluation = evaluate_folder(eval_root, scored, frames=frames, device=device, split=eval_split,
                                 progress=config.progress)
    evaluation.save(folder / "evaluation")
    h, w = config.profile_size
    model.cpu()
    flops = count_flops(model, input_shape(frames, h, w))
    latency = measure_latency(scored, input_shape(frames, h, w), device=device, repeats=config.latency_repeats)
    model.cpu()
    return {"entry": entry.label, "kind": entry.kind, "seed": seed, "status": "done",
            "genotype_id": genotype.genotype_id(), "params": count_parameters(model), "macs": flops // 2,
            "flops": flops, "fps": 1.0 / latency.median_s,
            "latency_ms": 1000.0 * latency.median_s, "latency_threads": latency.threads,
            "latency_device": latency.device, "retrain_seconds": round(retrained["seconds"], 2),
            "retrain_epochs": retrained["epochs"], "retrain_val_psnr": retrained["best_val_psnr"],
            "psnr": evaluation.summary["psnr"], "ssim": evaluation.summary["ssim"], "source": entry.source,
            "error": ""}


@dataclass
class RankResult:
    out: Path
    results: pd.DataFrame          # one row per (entry, seed), plus the rainy input's
    summary_path: Path
    ran: list[str]                 # the units run this time (entries/<label>-<id>/seed-<S>)
    statistics: pd.DataFrame | None = None   # one row per entry: mean ± std over seeds, difference to random
    draws: list[dict[str, Any]] = field(default_factory=list)   # per random:N, how many draws were matched


def unit_folder(entry_folder: Path, seed: int, first_seed: int) -> Path:
    """The folder of one (entry, seed) unit: ``seed-<S>/`` inside the entry's folder; for the first seed, the
    entry folder itself when it holds a finished unit of the one-seed layout (a ranking made before seeds)."""
    folder = entry_folder / f"seed-{seed}"
    if seed == first_seed and (entry_folder / DONE).is_file() and not (folder / DONE).is_file():
        return entry_folder
    return folder


def run_rank(items: list[str], config: RankConfig, out_dir: str | Path, command: str | None = None,
             say: Callable[[str], None] = log.info) -> RankResult:
    """Retrain, evaluate and profile every entry with every seed into ``out_dir`` (resumable); write
    results.csv (one row per entry and seed), per_image.csv, statistics.csv and summary.md."""
    check_data(config)
    draws: list[dict[str, Any]] = []
    entries = resolve_entries(items, config, draws)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_recipe(out, config)
    cfg.save_yaml(config, out / "rank.yaml")
    eval_root, eval_split, scores = _eval_data(config, out)
    rows: list[dict[str, Any]] = [{"entry": "rainy input", "kind": "input", "status": "done", "psnr": scores["psnr"],
                                   "ssim": scores["ssim"], "source": str(eval_root), "error": ""}]
    seeds = config.seed_list
    units = [(entry, seed) for entry in entries for seed in seeds]
    ran = []
    for k, (entry, seed) in enumerate(units, 1):
        entry_folder = out / "entries" / entry.folder_name
        folder = unit_folder(entry_folder, seed, seeds[0])
        heading = f"[{k}/{len(units)}] {entry.label}" + (f" seed {seed}" if len(seeds) > 1 else "")
        failed_row = {"entry": entry.label, "kind": entry.kind, "seed": seed, "status": "failed",
                      "genotype_id": entry.genotype.genotype_id(), "source": entry.source}
        row, worked = run_unit(
            folder, heading, f"{heading} ({entry.genotype.genotype_id()}): retrain, evaluate, profile",
            lambda: rank_one(entry, config, folder, eval_root, eval_split, seed), failed_row,
            lambda r: f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, {r['params']} parameters", say,
            start=lambda: entry.genotype.save(entry_folder / GENOTYPE))
        row = {**row, "entry": entry.label, "seed": seed, "unit": folder.relative_to(out).as_posix()}
        if row.get("macs") is None and row.get("flops") is not None:  # a unit recorded before the macs column
            row["macs"] = int(row["flops"]) // 2
        if entry.match is not None:
            row["match_params_ratio"] = round(entry.match["params_ratio"], 4)
            row["match_macs_ratio"] = round(entry.match["macs_ratio"], 4)
        rows.append(row)
        if worked:
            ran.append(folder.relative_to(out).as_posix())
    results = _table(rows)
    results.to_csv(out / "results.csv", index=False)
    per_image = collect_per_image(results, out)
    per_image.to_csv(out / PER_IMAGE, index=False)
    stats, intervals, images = chance_statistics(results, per_image, config)
    stats.to_csv(out / STATISTICS, index=False)
    summary = write_rank_summary(config, results, scores, eval_root, eval_split, out, command, stats=stats,
                                 intervals=intervals, images=images, draws=draws)
    return RankResult(out=out, results=results, summary_path=summary, ran=ran, statistics=stats, draws=draws)


def _check_same_recipe(out: Path, config: RankConfig) -> None:
    previous_path = out / "rank.yaml"
    if not previous_path.exists():
        return
    changed = changed_fields(cfg.load_yaml(previous_path), cfg.to_dict(config), keys=_RECIPE_KEYS)
    refuse_changed_settings(out, "a ranking", changed, "its rows would not be comparable", "entries may change",
                            recorded_in=previous_path)


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """results.csv: one row per (entry, seed); ``rank`` by the entry's mean PSNR over its finished seeds."""
    frame = pd.DataFrame(rows)
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = None
    extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
    done = frame[(frame["kind"] != "input") & (frame["status"] == "done")]
    if len(done):
        means = done.assign(psnr=done["psnr"].astype(float)).groupby("entry", sort=False)["psnr"].mean()
        order = means.rank(ascending=False, method="min").astype(int)
        frame["rank"] = frame["rank"].astype(object)
        frame.loc[done.index, "rank"] = done["entry"].map(order).astype(int).tolist()
    return frame[list(RESULT_COLUMNS) + extra]


# --------------------------------------------------------------------------------------------------
# statistics over seeds and test images


def collect_per_image(results: pd.DataFrame, out: Path) -> pd.DataFrame:
    """per_image.csv: one line per (entry, seed, test image) of every finished unit (its
    ``evaluation/per_item.csv``), and the rainy input's per-image scores (from the first unit that has them)."""
    parts: list[pd.DataFrame] = []
    input_part: pd.DataFrame | None = None
    columns = ["entry", "kind", "seed", "name", "psnr", "ssim"]
    for r in results[(results["kind"] != "input") & (results["status"] == "done")].itertuples():
        path = out / str(r.unit) / "evaluation" / "per_item.csv"
        try:
            items = pd.read_csv(path, dtype={"name": str})
        except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
            log.warning("%s: no per-image scores at %s; this unit is left out of the statistics", r.entry, path)
            continue
        if not {"name", "psnr", "ssim"} <= set(items.columns):
            log.warning("%s: %s lacks name/psnr/ssim columns; left out of the statistics", r.entry, path)
            continue
        parts.append(pd.DataFrame({"entry": r.entry, "kind": r.kind, "seed": r.seed, "name": items["name"].astype(str),
                                   "psnr": items["psnr"], "ssim": items["ssim"]}))
        if input_part is None and {"psnr_input", "ssim_input"} <= set(items.columns):
            input_part = pd.DataFrame({"entry": "rainy input", "kind": "input", "seed": None,
                                       "name": items["name"].astype(str), "psnr": items["psnr_input"],
                                       "ssim": items["ssim_input"]})
    if input_part is not None:
        parts.insert(0, input_part)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def chance_statistics(results: pd.DataFrame, per_image: pd.DataFrame,
                      config: RankConfig) -> tuple[pd.DataFrame, dict[str, DifferenceCI], int]:
    """statistics.csv (per entry: seeds, PSNR/SSIM mean and std over seeds, the paired PSNR difference to the
    random rows' mean with its bootstrap interval), the intervals, and the number of images they use."""
    done = results[results["status"] == "done"]
    stats = seed_summary(done, ("psnr", "ssim"))
    if stats.empty:
        stats = pd.DataFrame(columns=["entry", "seeds", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std"])
    kinds = dict(zip(results["entry"], results["kind"]))
    stats.insert(1, "kind", stats["entry"].map(kinds))
    stats = stats.drop(columns=["seed_list"], errors="ignore")
    intervals: dict[str, DifferenceCI] = {}
    images = 0
    if not per_image.empty:
        table = per_image.assign(seed=per_image["seed"].fillna(0),
                                 psnr=np.minimum(per_image["psnr"].astype(float), MAX_PSNR))
        matrices, names = score_matrices(table, "psnr")
        images = len(names)
        randoms = [e for e in matrices if kinds.get(e) == "random"]
        if randoms and images:
            intervals = paired_difference_ci(matrices, randoms, resamples=config.bootstrap_resamples,
                                             seed=config.bootstrap_seed)
    stats["psnr_diff_random"] = stats["entry"].map(lambda e: intervals[e].difference if e in intervals else np.nan)
    stats["psnr_diff_lo"] = stats["entry"].map(lambda e: intervals[e].lo if e in intervals else np.nan)
    stats["psnr_diff_hi"] = stats["entry"].map(lambda e: intervals[e].hi if e in intervals else np.nan)
    stats["separable"] = stats["entry"].map(lambda e: intervals[e].separable if e in intervals else None)
    return stats, intervals, images


# --------------------------------------------------------------------------------------------------
# the summary


def _entry_lines(results: pd.DataFrame) -> list[dict[str, Any]]:
    """One line per entry (input first, then by rank): its figures over its finished seeds."""
    lines = []
    for entry, group in results.groupby("entry", sort=False):
        done = group[group["status"] == "done"]
        first = (done if len(done) else group).iloc[0]
        failed = group[group["status"] != "done"]
        if failed.empty:
            status = "done"
        elif done.empty:
            status = f"{failed.iloc[0]['status']}: {failed.iloc[0]['error']}"
        else:
            status = f"{len(done)} of {len(group)} seeds done; {failed.iloc[0]['status']}: {failed.iloc[0]['error']}"
        numbers = {c: pd.to_numeric(done[c], errors="coerce") for c in ("fps", "retrain_seconds")}
        lines.append({"entry": entry, "kind": first["kind"], "rank": first["rank"] if len(done) else None,
                      "genotype_id": first["genotype_id"], "params": first["params"], "flops": first["flops"],
                      "fps": float(numbers["fps"].median()) if numbers["fps"].notna().any() else None,
                      "retrain_seconds": (float(numbers["retrain_seconds"].mean())
                                          if numbers["retrain_seconds"].notna().any() else None),
                      "seeds": len(done) if first["kind"] != "input" else None,
                      "psnr": mean_std(done["psnr"], 2), "ssim": mean_std(done["ssim"], 4), "status": status,
                      "source": first["source"]})
    inputs = [line for line in lines if line["kind"] == "input"]
    others = sorted((line for line in lines if line["kind"] != "input"),
                    key=lambda line: line["rank"] if line["rank"] is not None and line["rank"] == line["rank"]
                    else 10**9)
    return inputs + others


def entry_lines(results: pd.DataFrame) -> list[dict[str, Any]]:
    """The summary's lines per entry (``entry``, ``kind``, ``seeds``, ``psnr`` and ``ssim`` as mean ± std, ...),
    for reports that build on a ranking (``nas-restore study``) and reuse :func:`chance_section`."""
    return _entry_lines(results)


def _rank_text(value: Any) -> str:
    return "–" if value is None or value != value else str(int(value))


def _draw_lines(draws: list[dict[str, Any]], config: RankConfig) -> list[str]:
    h, w = config.profile_size
    lines = []
    for d in draws:
        first, last = d["first_seed"], d["first_seed"] + max(d["tried"], 1) - 1
        if d["tolerance"] is None:
            lines.append(f"- `{d['item']}`: {d['found']} uniform draws (seeds {first}..{last}) of the like genotype's "
                         "space, not matched on size (`--match-size off`): a gap to them may be a gap in size")
            continue
        within = (f"within ±{d['tolerance']:.0%} of the like genotype's parameters ({fmt_count(d['like_params'])}) "
                  f"and MACs ({fmt_count(d['like_macs'])} at {w}x{h}, FLOPs / 2)")
        if d["found"] >= d["wanted"]:
            lines.append(f"- `{d['item']}`: {d['found']} draws {within}, found among {d['tried']} tries (seeds "
                         f"{first}..{last})")
        else:
            lines.append(f"- **`{d['item']}`: only {d['found']} of the {d['wanted']} random rows asked for are "
                         f"{within}** after {d['tried']} tries (seeds {first}..{last}); the comparison with chance "
                         f"uses these {d['found']}. Widen `--match-size` (e.g. {min(1.0, 2 * d['tolerance']):g}) or "
                         "turn matching off (`--match-size off`)")
    return lines


def chance_section(config: RankConfig, lines_by_entry: list[dict[str, Any]], intervals: dict[str, DifferenceCI],
                   images: int, draws: list[dict[str, Any]]) -> list[str]:
    """``## Seeds and chance``: per entry mean ± std over seeds, the paired difference to the random rows'
    mean with its interval, and the verdict in words."""
    randoms = [line for line in lines_by_entry if line["kind"] == "random" and line["entry"] in intervals]
    header = ["entry", "kind", "seeds", "PSNR (dB), mean ± std", "SSIM, mean ± std",
              "Δ PSNR to random mean (dB) [95 % CI]", "in words"]
    body = []
    for line in lines_by_entry:
        ci = intervals.get(line["entry"])
        diff = f"{ci.difference:+.2f} [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci else "–"
        words = separation_sentence(ci) if ci else "–"
        body.append([line["entry"], line["kind"], fmt(line["seeds"]) if line["seeds"] is not None else "–",
                     line["psnr"], line["ssim"], diff, words])
    out = ["## Seeds and chance", "", markdown_table(header, body), ""]
    seeds = config.seed_list
    seed_text = (f"{len(seeds)} retraining seeds per entry ({seeds[0]}..{seeds[-1]}); ± is the sample std over them"
                 if len(seeds) > 1 else f"one retraining seed per entry ({seeds[0]}): no spread over seeds")
    if intervals:
        out.append(
            f"{seed_text}. Δ: per test image, the entry's PSNR averaged over its seeds minus the mean over the "
            f"{len(randoms)} random row(s) (each averaged over its seeds), averaged over the {images} images every "
            f"row was scored on (PSNR capped at {MAX_PSNR:g} dB). The interval is a 95 % percentile bootstrap: "
            f"{config.bootstrap_resamples} resamples (numpy Generator seed {config.bootstrap_seed}), each drawing the "
            "test images with replacement (the same images for every row: the comparison is paired) and, for each "
            "row, its seeds with replacement. A difference is separable from random when its interval excludes 0; "
            "a random row is compared with the mean that includes itself.")
        if len(seeds) == 1:
            out.append("")
            out.append("With one seed per entry the intervals hold the test images' noise only, not the "
                       "retraining seed's: retrain with `--seeds 3` (or more) before calling a gap separable.")
        elif len(seeds) < 3 or images < 20:
            out.append("")
            out.append(f"With {images} test image(s) and {len(seeds)} seeds per entry a bootstrap interval understates "
                       "the uncertainty (it can only resample what was seen): read these verdicts as indicative, and "
                       "use at least 3 seeds and 20 images before claiming one.")
    elif not randoms and not any(line["kind"] == "random" for line in lines_by_entry):
        out.append(f"{seed_text}. No random rows: no comparison with chance is possible. Add `random:5` to the "
                   "entries (five draws of the like genotype's space, matched on parameters and MACs) to see whether "
                   "an entry beats chance.")
    else:
        out.append(f"{seed_text}. No per-image scores common to every row were found: the differences to random "
                   "were not computed.")
    if draws:
        out += ["", "Random rows:", "", *_draw_lines(draws, config)]
    return out + [""]


def write_rank_summary(config: RankConfig, results: pd.DataFrame, input_scores: dict[str, Any], eval_root: Path,
                       eval_split: str | None, out: Path, command: str | None, stats: pd.DataFrame | None = None,
                       intervals: dict[str, DifferenceCI] | None = None, images: int = 0,
                       draws: list[dict[str, Any]] | None = None) -> Path:
    h, w = config.profile_size
    device = str(resolve_device(config.device))
    mach = machine_info(device)
    data, t = config.retrain.data, config.retrain.train
    seeds = config.seed_list
    train_text = ("built-in synthetic rain" if data.folder is None else
                  f"{data.folder}" + (f", split {data.split}" if data.split else ""))
    eval_text = (f"{eval_root}" + (f", split {eval_split}" if eval_split else "")) if config.eval_data else \
        (f"synthetic held-out clips ({config.test.clips} x {config.test.frames_per_clip} frames of {config.test.size} "
         f"px, seed {config.test.seed}, never trained on)")
    header = ["rank", "entry", "kind", "genotype", "params", f"FLOPs @{w}x{h}", f"frames/s @{w}x{h}", "seeds",
              "PSNR (dB)", "SSIM", "retrain s", "status"]
    entry_lines = _entry_lines(results)
    body = [[_rank_text(r["rank"]), r["entry"], r["kind"],
             f"`{r['genotype_id']}`" if isinstance(r["genotype_id"], str) else "–", fmt_count(r["params"]),
             fmt_count(r["flops"]), fmt(r["fps"], 3 if (r["fps"] or 0) < 1 else 1) if r["fps"] is not None else "–",
             fmt(r["seeds"]) if r["seeds"] is not None else "–", r["psnr"], r["ssim"], fmt(r["retrain_seconds"], 0),
             r["status"]] for r in entry_lines]
    others = [r for r in entry_lines if r["kind"] != "input"]
    seed_words = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]} (mean ± std over them)"
    lines = [
        "# Genotypes retrained alike and ranked on data nobody tuned on",
        "",
        markdown_table(header, body),
        "",
        f"Every entry was retrained from scratch with the same recipe, data, budget and {seed_words}, then scored "
        "on the evaluation data only; the input row scores the rainy input itself. Entries: "
        + "; ".join(f"{r['entry']} ({r['source']})" for r in others) + ".",
        "",
    ]
    lines += chance_section(config, entry_lines, intervals or {}, images, draws or [])
    lines += protocol_section([
        f"training data: {train_text} (validation: {data.val_fraction:.0%} of it for folders, a separate seed "
        f"for synthetic data; patches of {data.patch_size} px)",
        f"evaluation data: {eval_text}; full frames; {input_scores['count']} items",
        f"recipe: {t.epochs} epoch(s), batch {t.batch_size}, Adam lr {t.lr:g} cosine to {t.min_lr:g}, loss L1 "
        f"{t.loss.l1_weight:g} + SSIM {t.loss.ssim_weight:g}, gradient clip {t.grad_clip}, {seed_words}; the model "
        "kept is the best epoch by validation PSNR",
        f"metrics: {input_scores['protocol']}",
        f"cost: FLOPs of one forward pass (one output frame) at {w}x{h} (2 per multiply-add); frames/s = 1 / median "
        f"of {config.latency_repeats} timed forward passes at {w}x{h}, batch 1, after one warm-up, on {device} with "
        f"{mach['torch_threads']} thread(s)",
        "references of the searched space: " + ("at their released size" if config.reference_size == "released"
                                                 else "rebuilt at the like genotype's size (channels, frames, cells "
                                                 "per branch, rain kernels)")
        + (f"; random entries drawn from the space config of {config.like or 'the first genotype file'}"
           + (f", kept when within ±{config.match_tolerance:.0%} of its parameters and MACs"
              if config.match_tolerance is not None else ", not matched on size")
           if (results["kind"] == "random").any() or draws else ""),
    ])
    lines += machine_section(mach)
    lines += regenerate_section(
        command, "(run from Python: see rank.yaml)",
        "Re-running resumes: finished units (entries/*/seed-*/done.json) are skipped, and raising `--seeds` trains "
        "only the new seeds. Per entry: `entries/<label>-<id>/` (genotype.json; per seed `seed-<S>/` with retrain/, "
        "evaluation/per_item.csv). All columns: results.csv (one row per entry and seed); per test image: "
        f"{PER_IMAGE}; per entry (mean, std, difference to random and its interval): {STATISTICS}.")
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["RankConfig", "Entry", "check_data", "resolve_entries", "resize_like", "run_rank", "rank_one", "RankResult",
           "network_size", "matched_random_entries", "unit_folder", "collect_per_image", "chance_statistics",
           "PER_IMAGE", "STATISTICS", "entry_lines", "chance_section"]
