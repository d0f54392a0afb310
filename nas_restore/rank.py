"""`nas-restore rank`: several genotypes retrained alike, scored on an evaluation split nobody tuned on.

A searched genotype means something only beside the alternatives trained the same way: random
genotypes of the same space (is the search better than chance?), the released TMICS networks, a
hand-designed baseline, and the rainy input itself. Every entry here gets the same
:class:`~nas_restore.retraining.RetrainRunConfig` (data, recipe, budget, seed), then PSNR/SSIM on
the evaluation data only, plus parameters, FLOPs and frames per second at one stated size.

Entries: a genotype file (``genotype.json``, a search run folder, a DARTS text file, ``FILE:NAME``),
a reference name (``tmics-heavy``, ``tmics-light``), ``random:N`` (N architectures drawn uniformly
from the space of the ``like`` genotype at its space config), or ``space:NAME[:PRESET]`` (the
architecture of a space without choices, such as a hand-designed baseline space).

Guards: it refuses to train on a split named ``holdout`` (or on a whole folder that defines one), and
evaluation data that overlap the training data (same folder and split, or a split sharing ids).
The out folder resumes like `compare`: ``entries/<label>-<id>/`` with a record per finished stage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nas_restore import config as cfg
from nas_restore.build import load_trained
from nas_restore.data.folders import SPLITS_FILE, DataError, read_splits
from nas_restore.datasets import DataConfig
from nas_restore.device import resolve_device
from nas_restore.evaluation import evaluate_folder
from nas_restore.genotype import Genotype
from nas_restore.precision import resolve_precision
from nas_restore.profiling import count_flops, count_parameters, input_shape, measure_latency
from nas_restore.report_common import fmt, fmt_count, markdown_table
from nas_restore.retraining import RetrainRunConfig, run_retrain
from nas_restore.run_records import GENOTYPE
from nas_restore.seeding import seed_everything
from nas_restore.sources import (load_genotype, random_count, random_genotypes, source_label, space_genotype,
                                 with_frames)
from nas_restore.study import (HeldOutConfig, changed_fields, held_out_test, machine_info, machine_section,
                               protocol_section, read_json, refuse_changed_settings, regenerate_section, run_unit,
                               write_json)
from nas_restore.training import RetrainConfig
from search_spaces import find_space
from search_spaces.reference import reference_genotype, reference_names

log = logging.getLogger(__name__)

FORBIDDEN_TRAIN_SPLITS = ("holdout",)
REFERENCE_SIZES = ("released", "like")
# the settings of a TMICS reference replaced by the like genotype's under reference_size "like"
_SIZE_KEYS = ("channels", "frames", "cells_per_branch", "rain_kernels", "fusion_mode")
# the settings every row depends on: a ranking folder refuses a re-run that changes one (entries may change)
_RECIPE_KEYS = ("retrain", "eval_data", "eval_split", "test", "profile_size", "device")
RESULT_COLUMNS = ("rank", "entry", "kind", "status", "genotype_id", "params", "flops", "fps", "latency_ms",
                  "retrain_seconds", "retrain_epochs", "retrain_val_psnr", "psnr", "ssim", "source", "error")


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
    random_seed: int = 0                  # random:N draws seeds random_seed .. random_seed+N-1
    profile_size: list[int] = field(default_factory=lambda: [480, 640])   # [H, W] for FLOPs and frames/s
    latency_repeats: int = 3
    device: str = "auto"
    precision: str = "fp32"               # fp32, bf16, fp16 or auto: retraining, scoring and frames/s alike
    progress: bool = False

    def __post_init__(self) -> None:
        self.retrain.train.precision = self.precision  # one setting for every stage
        if self.reference_size not in REFERENCE_SIZES:
            raise ValueError(f"reference_size must be one of {', '.join(REFERENCE_SIZES)}, got {self.reference_size!r}")
        if len(self.profile_size) != 2 or min(self.profile_size) < 8:
            raise ValueError(f"profile_size must be [height, width] >= 8, got {self.profile_size}")
        if self.latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {self.latency_repeats}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "rank") -> "RankConfig":
        """Settings given in ``data`` over the defaults of this class, nested ones included."""
        return cfg.from_dict(cls, cfg.merge(cfg.to_dict(cls()), data or {}), where)


# --------------------------------------------------------------------------------------------------
# the data guards


def check_data(config: RankConfig) -> None:
    """Refuse training on a holdout split and evaluation data that overlap the training data."""
    data = config.retrain.data
    if data.split is not None and data.split.lower() in FORBIDDEN_TRAIN_SPLITS:
        raise DataError(f"refusing to train on the split {data.split!r}: a holdout split is for the final "
                        "evaluation only. Train on another split (e.g. --train-split fit) and evaluate on it with "
                        f"--eval-split {data.split}")
    if data.folder is not None and data.split is None and (Path(data.folder) / SPLITS_FILE).is_file():
        held = [s for s in read_splits(Path(data.folder)) if s.lower() in FORBIDDEN_TRAIN_SPLITS]
        if held:
            raise DataError(f"{data.folder} defines the split(s) {held}; training on the whole folder would train "
                            "on them: pass --train-split (e.g. fit)")
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
    return find_space(resized.space).validate_genotype(resized)


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


def resolve_entries(items: list[str], config: RankConfig) -> list[Entry]:
    """Turn the command's entries into genotypes, in order (``random:N`` expands to N entries)."""
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
        elif item in reference_names() and not Path(item).exists():
            parsed.append(("reference", item, reference_genotype(item)))
        else:
            genotype = load_genotype(item)
            files.append((item, genotype))
            parsed.append(("file", item, genotype))
    like: Genotype | None = None
    if config.like is not None:
        like = load_genotype(config.like)
    elif files:
        like = files[0][1]
    entries: list[Entry] = []
    for kind, item, value in parsed:
        if kind == "random":
            if like is None:
                raise ValueError(f"{item} needs a genotype whose space config to draw from: list a genotype file "
                                 "among the entries (the first one is used) or pass --like GENOTYPE")
            for genotype in random_genotypes(like, value, config.random_seed):
                entries.append(Entry(genotype.metadata["name"], "random", f"{item} of {like.space} "
                                     f"(like {like.genotype_id()})", genotype))
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
             eval_split: str | None) -> dict[str, Any]:
    retrained = read_json(folder / "retrain.json")
    if retrained is None:
        seed_everything(config.retrain.train.seed)  # same seed, same start for every entry (see compare)
        result = run_retrain(entry.genotype, config.retrain, folder / "retrain")
        seconds = result.seconds
        try:
            seconds = float(pd.read_csv(result.metrics_csv)["seconds"].fillna(0).sum()) or seconds
        except (OSError, KeyError, pd.errors.EmptyDataError):
            pass
        retrained = {"best_val_psnr": result.best_val_psnr, "epochs": result.epochs_run, "seconds": seconds}
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
    return {"entry": entry.label, "kind": entry.kind, "status": "done", "genotype_id": genotype.genotype_id(),
            "params": count_parameters(model), "flops": flops, "fps": 1.0 / latency.median_s,
            "latency_ms": 1000.0 * latency.median_s, "latency_threads": latency.threads,
            "latency_device": latency.device, "retrain_seconds": round(retrained["seconds"], 2),
            "retrain_epochs": retrained["epochs"], "retrain_val_psnr": retrained["best_val_psnr"],
            "psnr": evaluation.summary["psnr"], "ssim": evaluation.summary["ssim"], "source": entry.source,
            "error": ""}


@dataclass
class RankResult:
    out: Path
    results: pd.DataFrame
    summary_path: Path
    ran: list[str]


def run_rank(items: list[str], config: RankConfig, out_dir: str | Path, command: str | None = None,
             say: Callable[[str], None] = log.info) -> RankResult:
    """Retrain, evaluate and profile every entry into ``out_dir`` (resumable); write results.csv, summary.md."""
    check_data(config)
    entries = resolve_entries(items, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_recipe(out, config)
    cfg.save_yaml(config, out / "rank.yaml")
    eval_root, eval_split, scores = _eval_data(config, out)
    rows: list[dict[str, Any]] = [{"entry": "rainy input", "kind": "input", "status": "done", "psnr": scores["psnr"],
                                   "ssim": scores["ssim"], "source": str(eval_root), "error": ""}]
    ran = []
    for k, entry in enumerate(entries, 1):
        folder = out / "entries" / entry.folder_name
        failed_row = {"entry": entry.label, "kind": entry.kind, "status": "failed",
                      "genotype_id": entry.genotype.genotype_id(), "source": entry.source}
        row, worked = run_unit(
            folder, f"[{k}/{len(entries)}] {entry.label}",
            f"[{k}/{len(entries)}] {entry.label} ({entry.genotype.genotype_id()}): retrain, evaluate, profile",
            lambda: rank_one(entry, config, folder, eval_root, eval_split), failed_row,
            lambda r: f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, {r['params']} parameters", say,
            start=lambda: entry.genotype.save(folder / GENOTYPE))
        rows.append(row)
        if worked:
            ran.append(entry.folder_name)
    results = _table(rows)
    results.to_csv(out / "results.csv", index=False)
    summary = write_rank_summary(config, results, scores, eval_root, eval_split, out, command)
    return RankResult(out=out, results=results, summary_path=summary, ran=ran)


def _check_same_recipe(out: Path, config: RankConfig) -> None:
    previous_path = out / "rank.yaml"
    if not previous_path.exists():
        return
    changed = changed_fields(cfg.load_yaml(previous_path), cfg.to_dict(config), keys=_RECIPE_KEYS)
    refuse_changed_settings(out, "a ranking", changed, "its rows would not be comparable", "entries may change",
                            recorded_in=previous_path)


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = None
    extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
    done = frame[(frame["kind"] != "input") & (frame["status"] == "done")]
    order = done["psnr"].astype(float).rank(ascending=False, method="min")
    frame.loc[order.index, "rank"] = order.astype(int)
    return frame[list(RESULT_COLUMNS) + extra]


def write_rank_summary(config: RankConfig, results: pd.DataFrame, input_scores: dict[str, Any], eval_root: Path,
                       eval_split: str | None, out: Path, command: str | None) -> Path:
    h, w = config.profile_size
    device = str(resolve_device(config.device))
    mach = machine_info(device)
    data, t = config.retrain.data, config.retrain.train
    train_text = ("built-in synthetic rain" if data.folder is None else
                  f"{data.folder}" + (f", split {data.split}" if data.split else ""))
    eval_text = (f"{eval_root}" + (f", split {eval_split}" if eval_split else "")) if config.eval_data else \
        (f"synthetic held-out clips ({config.test.clips} x {config.test.frames_per_clip} frames of {config.test.size} "
         f"px, seed {config.test.seed}, never trained on)")
    header = ["rank", "entry", "kind", "genotype", "params", f"FLOPs @{w}x{h}", f"frames/s @{w}x{h}",
              "PSNR (dB)", "SSIM", "retrain s", "status"]
    body = []
    input_row = results[results["kind"] == "input"]
    others = results[results["kind"] != "input"].copy()
    others["_order"] = others["rank"].fillna(10**9)
    for frame in (input_row, others.sort_values("_order", kind="stable")):
        for r in frame.itertuples():
            body.append([fmt(r.rank) if r.rank == r.rank and r.rank is not None else "–", r.entry, r.kind,
                         f"`{r.genotype_id}`" if isinstance(r.genotype_id, str) else "–", fmt_count(r.params),
                         fmt_count(r.flops), fmt(r.fps, 3 if (r.fps or 0) < 1 else 1) if r.fps == r.fps else "–",
                         fmt(r.psnr), fmt(r.ssim, 4), fmt(r.retrain_seconds, 0),
                         r.status if r.status == "done" else f"{r.status}: {r.error}"])
    lines = [
        "# Genotypes retrained alike and ranked on data nobody tuned on",
        "",
        markdown_table(header, body),
        "",
        "Every entry was retrained from scratch with the same recipe, data, budget and seed, then scored on the "
        "evaluation data only; the input row scores the rainy input itself. Entries: "
        + "; ".join(f"{r.entry} ({r.source})" for r in others.itertuples()) + ".",
        "",
    ]
    lines += protocol_section([
        f"training data: {train_text} (validation: {data.val_fraction:.0%} of it for folders, a separate seed "
        f"for synthetic data; patches of {data.patch_size} px)",
        f"evaluation data: {eval_text}; full frames; {input_scores['count']} items",
        f"recipe: {t.epochs} epoch(s), batch {t.batch_size}, Adam lr {t.lr:g} cosine to {t.min_lr:g}, loss L1 "
        f"{t.loss.l1_weight:g} + SSIM {t.loss.ssim_weight:g}, gradient clip {t.grad_clip}, seed {t.seed}; the model "
        "kept is the best epoch by validation PSNR",
        f"metrics: {input_scores['protocol']}",
        f"cost: FLOPs of one forward pass (one output frame) at {w}x{h} (2 per multiply-add); frames/s = 1 / median "
        f"of {config.latency_repeats} timed forward passes at {w}x{h}, batch 1, after one warm-up, on {device} with "
        f"{mach['torch_threads']} thread(s)",
        "references of the searched space: " + ("at their released size" if config.reference_size == "released"
                                                 else "rebuilt at the like genotype's size (channels, frames, cells "
                                                 "per branch, rain kernels)")
        + (f"; random entries drawn from the space config of {config.like or 'the first genotype file'}"
           if (results["kind"] == "random").any() else ""),
    ])
    lines += machine_section(mach)
    lines += regenerate_section(
        command, "(run from Python: see rank.yaml)",
        "Re-running resumes: finished entries (entries/*/done.json) are skipped. Per entry: "
        "`entries/<label>-<id>/` (genotype.json, retrain/, evaluation/per_item.csv). All columns: results.csv.")
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["RankConfig", "Entry", "check_data", "resolve_entries", "resize_like", "run_rank", "rank_one", "RankResult"]
