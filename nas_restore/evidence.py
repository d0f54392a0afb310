"""`nas-restore study`: one config file regenerates a whole evidence report (searches, trust, rank, profile).

The question a NAS toolkit has to answer with evidence is "does searching find a better network than
chance or a hand design?". Each piece of that answer is a command of its own (``search``, the weight-sharing
trust check, ``rank``, ``profile``); a study chains them under one config, so that the report folder says
exactly how every figure was made and one command makes it again:

1. **searches**: named search specs (any :class:`~nas_restore.search.SearchConfig` field, plus ``seeds``), all
   on the study's training data (``data``; a holdout split is refused as everywhere), each (spec, seed) a
   search run folder ``searches/<name>-seed<k>/``;
2. **trust** (optional): for every one-shot search, the weight-sharing trust check (:mod:`nas_restore.trust`):
   how well the supernet's ranking of architectures agrees with short standalone training;
3. **rank**: every searched genotype (kind ``searched``), plus the config's ``entries`` (``random:N`` matched to
   the ``like`` search's genotype, references such as ``rescnn``, ``prn``, ``tmics-light``), retrained alike
   with ``rank.seeds`` seeds and scored on the evaluation data only, by :func:`nas_restore.rank.run_rank`
   (its folder ``rank/`` is a complete ranking of its own);
4. **profile**: parameters, MACs and frames/s of every entry at one stated size in each listed precision
   (:func:`nas_restore.profiling.profile_network`), ``profile/<entry>/``;
5. **outputs**: ``results.csv`` (one row per (entry, seed), with the kinds searched, random, reference and
   input) and ``summary.md`` (what was run, did each search decide, trust, the rank table with each row's paired
   interval against random, the profile table, and findings computed from those figures only).

Every stage is made of resumable units (:func:`nas_restore.study.run_unit`): a re-run skips finished units,
continues unfinished ones (a search from its checkpoint, a retraining from its ``last.ckpt``) and retries
failed ones. The settings are kept in ``study.yaml``; a re-run that changes one that finished units depend on
is refused, naming the field (searches may be added, seeds and entries added).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from nas_restore import config as cfg
from nas_restore.build import build_model
from nas_restore.config import ConfigError
from nas_restore.data.video_synth import SynthConfig, synth
from nas_restore.datasets import DataConfig, check_training_split, train_val_datasets
from nas_restore.device import resolve_device
from nas_restore.errors import UserError
from nas_restore.genotype import Genotype
from nas_restore.metrics import MAX_PSNR
from nas_restore.precision import PRECISIONS
from nas_restore.profiling import input_shape, profile_network, resolve_precisions
from nas_restore.rank import PER_IMAGE, RankConfig, chance_section, chance_statistics, entry_lines, run_rank
from nas_restore.report_common import fmt, fmt_count, markdown_table, mean_std, write_report
from nas_restore.run_records import GENOTYPE
from nas_restore.search import SearchConfig, run_search
from nas_restore.sources import is_like_macs, load_genotype, random_count, source_label
from nas_restore.statistics import DifferenceCI, paired_difference_ci, score_matrices, seed_summary, separable
from nas_restore.study import (DONE, HELD, machine_info, machine_section, protocol_section, read_json,
                               regenerate_section, run_unit, unit_held)
from search_spaces import find_space
from search_spaces.reference import reference_names
from strategies import find_strategy

log = logging.getLogger(__name__)

SETTINGS = "study.yaml"
RESULTS = "results.csv"
SUMMARY = "summary.md"
KINDS = ("searched", "random", "reference", "input")
# rank's kinds -> the study's: a genotype file among the entries that no study search made is a reference row
_KIND_OF_RANK = {"random": "random", "reference": "reference", "space": "reference", "file": "reference",
                 "like-macs": "reference", "input": "input"}
# set by the study for every search: a search spec that sets them would make its searches differ from the others'
_STUDY_SEARCH_KEYS = ("data", "seed", "device", "precision", "progress")
# settings that may change between calls on one study folder without making its finished units incomparable
_MAY_CHANGE = ("progress", "entries", "like", "target_psnr", "rank.seeds", "rank.progress",
               "rank.retrain.train.progress")
POOLED = "searched (mean)"   # the pseudo-row of the searched rows' mean in the findings' interval
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")   # a search's name: a folder name and a dotted settings key


# --------------------------------------------------------------------------------------------------
# settings


@dataclass
class ProfileSettings:
    """Where and how the profile stage measures: one size, each listed precision."""

    size: list[int] = field(default_factory=lambda: [320, 480])       # [H, W]
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    repeats: int = 3                                                  # timed passes (median)
    warmup: int = 1

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"profile.size must be [height, width] >= 8, got {self.size}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if not self.precisions or unknown:
            raise ValueError(f"profile.precisions must list some of {', '.join(PRECISIONS)}, got {self.precisions}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"profile.repeats must be >= 1 and profile.warmup >= 0, got {self.repeats} and "
                             f"{self.warmup}")


def _default_searches() -> list[dict[str, Any]]:
    return [{"name": "darts", "space": "tmics", "preset": "cpu", "strategy": "darts", "epochs": 4, "seeds": [0, 1]},
            {"name": "evolution", "space": "tmics", "preset": "cpu", "strategy": "evolution", "max_trials": 8,
             "seeds": [0, 1]}]


@dataclass
class StudyConfig:
    """A whole study; ``nas-restore study --config FILE`` reads these keys (``nas-restore config study``).

    ``data`` is where every search trains, and the retraining too: ``rank.retrain.data`` takes its folder and
    split (its other settings, such as ``patch_size`` and ``items_per_epoch``, are the retraining's own).
    ``device``, ``precision`` and ``progress`` are the study's for every stage; ``rank.profile_size`` is
    ``profile.size``, so that the rank table and the profile table state the same MACs.
    """

    data: DataConfig = field(default_factory=DataConfig)
    synth: dict[str, Any] | None = None       # make data.folder first: {inputs: [videos], + `synth` settings}
    searches: list[dict[str, Any]] = field(default_factory=_default_searches)
    trust: dict[str, Any] | None = None       # TrustConfig settings for every one-shot search; null: no trust check
    entries: list[str] = field(default_factory=lambda: ["random:5", "rescnn", "prn"])   # rank rows besides searched
    like: str | None = None                   # search NAME or NAME-seed<k> random:N is matched to (default: first)
    rank: RankConfig = field(default_factory=lambda: RankConfig(seeds=3, reference_size="like"))
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    target_psnr: float | None = None          # the findings say whether the best searched row reaches it
    device: str = "auto"
    precision: str = "fp32"                   # searches, retraining and scoring (profile.precisions: profiling)
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.searches:
            raise ValueError("searches must name at least one search (name, strategy, ..., seeds)")
        names = [self._check_search(i, spec) for i, spec in enumerate(self.searches)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"searches: the names {duplicates} are used twice: give each search its own name")
        if self.like is not None and self.like not in names and not any(
                self.like == f"{n}-seed{s}" for n, spec in zip(names, self.searches) for s in spec["seeds"]):
            raise ValueError(f"like: {self.like!r} names no search; give a search name ({', '.join(names)}) or "
                             "NAME-seed<k>")
        for entry in self.entries:
            random_count(entry)  # a bad random:N is an error now
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.synth is not None:
            synth_settings(self)  # a bad synth section is an error now, before any stage runs
        if self.trust is not None and not isinstance(self.trust, dict):
            raise ValueError(f"trust must be a mapping of trust-check settings ({{}} for its defaults) or null, "
                             f"got {self.trust!r}")
        self._share_settings()

    def _check_search(self, index: int, spec: Any) -> str:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not _NAME.match(spec["name"]):
            raise ValueError(f"searches[{index}] needs a name of letters, digits, '_' or '-' (e.g. name: darts), "
                             f"got {spec!r}")
        name = spec["name"]
        seeds = spec.setdefault("seeds", [0])
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise ValueError(f"searches[{name}].seeds must be a list of distinct whole numbers >= 0 (e.g. [0, 1]), "
                             f"got {seeds!r}")
        fixed = [k for k in _STUDY_SEARCH_KEYS if k in spec]
        if fixed:
            raise ValueError(f"searches[{name}] sets {', '.join(fixed)}: the study sets these for every search "
                             "(data at the top, seeds in the search's seeds list, device, precision and progress "
                             "at the top)")
        search_config(self, spec, seeds[0])  # any other SearchConfig field, checked (typos named) now
        return name

    def _share_settings(self) -> None:
        """One device, precision and profile size for every stage; the retraining reads the study's data."""
        if self.rank.like is not None:
            raise ValueError("rank.like is set by the study from `like` (a search name): set `like` at the top and "
                             "leave rank.like out")
        retrain_data = self.rank.retrain.data
        if retrain_data.folder is None:
            retrain_data.folder, retrain_data.split = self.data.folder, self.data.split
        same_folder = (retrain_data.folder is None if self.data.folder is None else
                       retrain_data.folder is not None and
                       Path(retrain_data.folder).resolve() == Path(self.data.folder).resolve())
        if not same_folder or retrain_data.split != self.data.split:
            raise ValueError(f"rank.retrain.data trains on {retrain_data.folder} (split {retrain_data.split}), the "
                             f"searches on {self.data.folder or 'synthetic data'} (split {self.data.split}): a study "
                             "retrains on its searches' data; leave rank.retrain.data.folder and split out")
        self.rank.device = self.rank.retrain.train.device = self.device
        self.rank.precision = self.rank.retrain.train.precision = self.precision
        self.rank.progress = self.rank.retrain.train.progress = self.progress
        self.rank.profile_size = list(self.profile.size)

    @property
    def search_units(self) -> list[tuple[dict[str, Any], int]]:
        """Every (search spec, seed), in the config's order."""
        return [(spec, seed) for spec in self.searches for seed in spec["seeds"]]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "study") -> "StudyConfig":
        """Settings in ``data`` over this class's defaults, nested ones included; an explicit ``null`` is kept
        (``trust: null``, ``rank: {match_tolerance: null}``), and a list replaces the default list."""
        return cfg.from_dict(cls, _overlay(cfg.to_dict(cls()), data or {}), where)


def _overlay(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` over ``base``: mappings merged key by key, every other value (null and lists too) replacing."""
    out = dict(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def search_config(config: StudyConfig, spec: dict[str, Any], seed: int) -> SearchConfig:
    """The :class:`SearchConfig` of one (search spec, seed): the spec's settings on the study's data, device,
    precision and progress."""
    settings = {k: v for k, v in spec.items() if k not in ("name", "seeds")}
    settings.update(data=cfg.to_dict(config.data), seed=seed, device=config.device, precision=config.precision,
                    progress=config.progress)
    return cfg.from_dict(SearchConfig, settings, f"searches[{spec['name']}]")


def unit_name(spec: dict[str, Any], seed: int) -> str:
    return f"{spec['name']}-seed{seed}"


# --------------------------------------------------------------------------------------------------
# the settings a study folder was made with


def flatten_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``study.yaml`` as dotted field names (``rank.retrain.train.epochs``); searches keyed by name
    (``searches.darts.epochs``), so that the message of a refused re-run names the very field."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    for key, value in settings.items():
        if key == "searches" and isinstance(value, list):
            for spec in value:
                walk(f"searches.{spec.get('name')}", spec)
        else:
            walk(key, value)
    return out


def changed_settings(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields whose change would make finished units incomparable (a search added or dropped, seeds or
    entries added, the trust check turned on or off, the wording settings: allowed)."""
    before, now = flatten_settings(previous), flatten_settings(current)
    searches_before = {s.get("name") for s in previous.get("searches") or []}
    searches_now = {s.get("name") for s in current.get("searches") or []}
    trust_toggled = previous.get("trust") is None or current.get("trust") is None
    changed = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key) or key in _MAY_CHANGE:
            continue
        parts = key.split(".")
        if parts[0] == "searches" and (parts[1] not in searches_before & searches_now or parts[-1] == "seeds"):
            continue
        if parts[0] == "trust" and trust_toggled:
            continue
        changed.append(key)
    return changed


def check_same_settings(out: Path, config: StudyConfig) -> None:
    """Refuse a re-run into ``out`` whose settings differ in a field that finished units depend on."""
    path = out / SETTINGS
    if not path.is_file():
        return
    changed = changed_settings(cfg.load_yaml(path, "study"), cfg.to_dict(config))
    cfg.refuse_changed_settings(out, "a study", changed, "its finished units would not be comparable",
                                "searches may be added and seeds, entries and rank.seeds added", recorded_in=path,
                                error=ConfigError)


def check_names(config: StudyConfig) -> None:
    """Unknown spaces, strategies, presets, space settings and entries fail before any unit runs."""
    for spec in config.searches:
        sconf = search_config(config, spec, spec["seeds"][0])
        find_strategy(sconf.strategy)
        find_space(sconf.space).config(sconf.preset, **sconf.space_settings)
    check_training_split(config.data)
    for entry in config.entries:
        if is_like_macs(entry):  # sized by rank once the like genotype exists; its space must be known now
            find_space(entry.split(":")[1])
        elif random_count(entry) is None and not entry.startswith("space:") and not Path(entry).exists() \
                and entry not in reference_names():
            load_genotype(entry)  # the resolver's own error names the known references
    resolve_precisions(config.profile.precisions, resolve_device(config.device))


# --------------------------------------------------------------------------------------------------
# the stages


def synth_settings(config: StudyConfig) -> tuple[list[str], SynthConfig]:
    """The ``synth`` section: the clean videos (``inputs``) and the :class:`SynthConfig` that adds the rain."""
    section = dict(config.synth or {})
    inputs = section.pop("inputs", None)
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise ValueError("synth.inputs must list the clean videos (files or frame folders) to add rain to, e.g. "
                         "inputs: [../shared/data/video_clean/vtest.avi]")
    if config.data.folder is None:
        raise ValueError("synth writes the study's data: set data.folder to where the clips go (e.g. "
                         "reports/video_study/data) and data.split to fit")
    return list(inputs), cfg.from_dict(SynthConfig, section, "synth")


def run_synth(config: StudyConfig, out: Path, say: Callable[[str], None]) -> list[str]:
    """Stage 0 (with a ``synth`` section): the rainy/clean clips of ``data.folder``, made once from the inputs."""
    if config.synth is None:
        return []
    inputs, synth_config = synth_settings(config)
    folder = out / "synth"

    def work() -> dict[str, Any]:
        result = synth(inputs, config.data.folder, synth_config)
        return {"status": "done", "folder": str(config.data.folder), "clips": len(result.clips), "error": ""}

    row, worked = run_unit(folder, "[synth] data", f"[synth] rain added to {', '.join(inputs)} -> {config.data.folder}",
                           work, {"status": "failed"}, lambda r: f"{r['clips']} clips", say)
    if row.get("status") != "done":
        raise UserError(f"synth could not make the study's data ({row.get('error')}); see {folder}: every later "
                        "stage trains on it")
    return ["synth"] if worked else []


def _search_unit(config: StudyConfig, spec: dict[str, Any], seed: int, folder: Path) -> dict[str, Any]:
    sconf = search_config(config, spec, seed)
    result = run_search(sconf, folder)  # resumes from the run folder's checkpoint (one-shot) or ledger (trials)
    meta = result.genotype.metadata or {}
    decision = meta.get("decision") or {}
    return {"search": unit_name(spec, seed), "name": spec["name"], "seed": seed, "status": "done",
            "strategy": sconf.strategy, "one_shot": find_strategy(sconf.strategy).one_shot, "space": sconf.space,
            "genotype": GENOTYPE, "genotype_id": result.genotype.genotype_id(),
            "search_seconds": meta.get("search_seconds", round(result.seconds, 2)),
            "decided": decision.get("decided"), "median_margin": decision.get("median_margin"),
            "median_entropy": decision.get("median_entropy"), "error": ""}


def run_searches(config: StudyConfig, out: Path, say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[str]]:
    """Stage 1: every (search, seed) into ``searches/<name>-seed<k>/``; its rows and the units run this call."""
    rows, ran = [], []
    units = config.search_units
    for k, (spec, seed) in enumerate(units, 1):
        label = unit_name(spec, seed)
        folder = out / "searches" / label
        heading = f"[search {k}/{len(units)}] {label}"
        failed = {"search": label, "name": spec["name"], "seed": seed, "status": "failed",
                  "strategy": spec.get("strategy", SearchConfig.strategy)}
        row, worked = run_unit(folder, heading, f"{heading}: {failed['strategy']}",
                               lambda: _search_unit(config, spec, seed, folder), failed,
                               lambda r: f"genotype {r['genotype_id']}" + (
                                   "" if r["decided"] is None else f", decided: {'yes' if r['decided'] else 'no'}"),
                               say, failed_note="; the other searches go on")
        rows.append(row)
        if worked:
            ran.append(f"searches/{label}")
    return rows, ran


def _interval(value: Any) -> tuple[float, float]:
    """(lo, hi) of an interval given as a pair or as an object with ``lo`` and ``hi``."""
    if hasattr(value, "lo") and hasattr(value, "hi"):
        return float(value.lo), float(value.hi)
    lo, hi = value
    return float(lo), float(hi)


def _trust_unit(config: StudyConfig, search_dir: Path, folder: Path, label: str,
                say: Callable[[str], None]) -> dict[str, Any]:
    from nas_restore.trust import TrustConfig, run_trust  # the trust check's module: only when one is asked for

    settings = dict(config.trust or {})
    known = {f.name for f in dataclasses.fields(TrustConfig)}
    for key, value in (("device", config.device), ("precision", config.precision), ("progress", config.progress)):
        if key in known and key not in settings:
            settings[key] = value
    result = run_trust(search_dir, cfg.from_dict(TrustConfig, settings, "trust"), folder, say=say)
    tau_lo, tau_hi = _interval(result.tau_ci)
    rho_lo, rho_hi = _interval(result.rho_ci)
    return {"search": label, "status": "done", "kendall_tau": float(result.kendall_tau), "tau_lo": tau_lo,
            "tau_hi": tau_hi, "spearman_rho": float(result.spearman_rho), "rho_lo": rho_lo, "rho_hi": rho_hi,
            "sentence": str(result.sentence), "error": ""}


def run_trust_checks(config: StudyConfig, out: Path, searches: list[dict[str, Any]],
                     say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[str]]:
    """Stage 2 (with ``trust`` set): the trust check of every finished one-shot search, ``trust/<name>-seed<k>/``."""
    if config.trust is None:
        return [], []
    targets = [s for s in searches if s.get("status") == "done" and s.get("one_shot")]
    rows, ran = [], []
    for k, search in enumerate(targets, 1):
        label = search["search"]
        folder = out / "trust" / label
        heading = f"[trust {k}/{len(targets)}] {label}"
        row, worked = run_unit(folder, heading, f"{heading}: supernet ranking against standalone training",
                               lambda: _trust_unit(config, out / "searches" / label, folder, label, say),
                               {"search": label, "status": "failed"},
                               lambda r: f"Kendall tau {r['kendall_tau']:.2f} [{r['tau_lo']:.2f}, {r['tau_hi']:.2f}]",
                               say, failed_note="; the study goes on")
        rows.append(row)
        if worked:
            ran.append(f"trust/{label}")
    return rows, ran


def like_genotype(config: StudyConfig, out: Path, searches: list[dict[str, Any]]) -> Path | None:
    """The genotype that ``random:N`` is matched to and references are sized like: the ``like`` search's
    (its first finished seed, or the named seed); None when no search finished and no random row needs one."""
    done = [s for s in searches if s.get("status") == "done"]
    wanted = config.like or config.searches[0]["name"]
    match = [s for s in done if wanted in (s["name"], s["search"])]
    if match:
        return out / "searches" / match[0]["search"] / GENOTYPE
    needs = any(random_count(e) is not None for e in config.entries) or config.rank.reference_size == "like"
    if needs:
        raise UserError(f"the like search {wanted!r} has no finished run, so the random rows cannot be matched to "
                        f"it (and references not sized like it): see searches/{wanted}-seed*/error.log, fix the "
                        "cause and run the study again (finished units are kept)")
    return None


def rank_items(config: StudyConfig, out: Path, searches: list[dict[str, Any]]) -> list[str]:
    """The rank entries: every finished search's genotype (in the config's order), then ``entries``."""
    searched = [str(out / "searches" / s["search"] / GENOTYPE) for s in searches if s.get("status") == "done"]
    return searched + list(config.entries)


def _entry_folder(rank_dir: Path, unit: Any) -> Path | None:
    if not isinstance(unit, str) or not unit:
        return None
    folder = rank_dir / unit
    return folder.parent if folder.name.startswith("seed-") else folder


def _profile_unit(config: StudyConfig, entry: str, genotype: Genotype) -> dict[str, Any]:
    device = resolve_device(config.device)
    precisions = resolve_precisions(config.profile.precisions, device)
    h, w = config.profile.size
    frames = int(genotype.space_config.get("frames", 1))
    rows = profile_network(build_model(genotype), input_shape(frames, h, w), precisions, device,
                           repeats=config.profile.repeats, warmup=config.profile.warmup)
    record: dict[str, Any] = {"entry": entry, "status": "done", "genotype_id": genotype.genotype_id(),
                              "params": rows[0].params, "macs": rows[0].macs, "flops": rows[0].flops,
                              "frames": frames, "alignment": (genotype.macro or {}).get("alignment", "none"),
                              "size": [h, w], "device": str(device), "threads": rows[0].threads,
                              "repeats": rows[0].repeats, "error": ""}
    for row in rows:
        record[f"fps_{row.precision}"] = row.fps
        record[f"seconds_per_frame_{row.precision}"] = row.seconds_per_frame
        record[f"peak_memory_mib_{row.precision}"] = row.peak_memory_bytes / 2**20
    return record


def run_profiles(config: StudyConfig, out: Path, rank_results: pd.DataFrame,
                 say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[str]]:
    """Stage 4: each ranked entry's network profiled once (weights do not change its cost), ``profile/<entry>/``."""
    rank_dir = out / "rank"
    targets = []
    for entry, group in rank_results[rank_results["kind"] != "input"].groupby("entry", sort=False):
        folder = _entry_folder(rank_dir, group["unit"].iloc[0])
        if folder is not None and (folder / GENOTYPE).is_file():
            targets.append((str(entry), folder))
    rows, ran = [], []
    for k, (entry, entry_folder) in enumerate(targets, 1):
        folder = out / "profile" / entry_folder.name
        heading = f"[profile {k}/{len(targets)}] {entry}"
        genotype = load_genotype(entry_folder / GENOTYPE)
        h, w = config.profile.size
        row, worked = run_unit(folder, heading, f"{heading}: {', '.join(config.profile.precisions)} at {h}x{w}",
                               lambda: _profile_unit(config, entry, genotype), {"entry": entry, "status": "failed"},
                               lambda r: ", ".join(f"{k[4:]} {v:.2f} frames/s" for k, v in r.items()
                                                   if k.startswith("fps_")), say)
        rows.append({**row, "entry": entry})
        if worked:
            ran.append(f"profile/{entry_folder.name}")
    return rows, ran


# --------------------------------------------------------------------------------------------------
# results.csv


def searched_labels(out: Path, searches: list[dict[str, Any]]) -> dict[str, str]:
    """The rank entry label of each finished search's genotype (rank names a run folder's genotype by its folder,
    :func:`nas_restore.sources.source_label`) -> that search run's name (``darts-seed0``)."""
    labels = {}
    for s in searches:
        if s.get("status") == "done":
            path = out / "searches" / s["search"] / GENOTYPE
            labels[source_label(str(path), load_genotype(path))] = s["search"]
    return labels


def study_kinds(rank_results: pd.DataFrame, searched: dict[str, str]) -> dict[str, str]:
    """Each rank entry's study kind: ``searched`` for the study's own search genotypes (``searched``: their rank
    labels), else rank's kind mapped onto random, reference and input."""
    kinds = {}
    for entry, kind in zip(rank_results["entry"].astype(str), rank_results["kind"]):
        kinds[entry] = "searched" if entry in searched and kind == "file" else _KIND_OF_RANK.get(str(kind), str(kind))
    return kinds


def _evaluation_summary(rank_dir: Path, unit: Any) -> dict[str, Any]:
    if not isinstance(unit, str) or not unit:
        return {}
    return read_json(rank_dir / unit / "evaluation" / "summary.json") or {}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def result_columns(precisions: Sequence[str], video: bool) -> list[str]:
    columns = ["entry", "kind", "seed", "status", "search", "genotype_id", "params", "macs", "flops", "psnr", "ssim"]
    columns += [f"fps_{p}" for p in precisions]
    if video:
        columns += ["frames", "alignment", "warping_error"]
    return columns + ["retrain_seconds", "retrain_epochs", "retrain_val_psnr", "source", "unit", "error"]


def study_table(rank_results: pd.DataFrame, rank_dir: Path, searched: dict[str, str],
                profiles: list[dict[str, Any]], precisions: Sequence[str]) -> pd.DataFrame:
    """results.csv: rank's rows (one per (entry, seed), and the input's) with the study's kinds, the search each
    searched row came from, the profile's frames/s per precision and, when the evaluation data are video clips,
    each row's frames, macro alignment and warping error."""
    kinds = study_kinds(rank_results, searched)
    by_entry = {p["entry"]: p for p in profiles if p.get("status") == "done"}
    summaries = [_evaluation_summary(rank_dir, r.get("unit")) for _, r in rank_results.iterrows()]
    video = any("warp_error" in s for s in summaries)
    input_warp = next((s["warp_error_input"] for s in summaries if "warp_error_input" in s), None)
    rows = []
    for (_, r), evaluation in zip(rank_results.iterrows(), summaries):
        entry = str(r["entry"])
        row = {**{k: r.get(k) for k in rank_results.columns}, "kind": kinds[entry],
               "search": searched.get(entry, "") if kinds[entry] == "searched" else ""}
        profile = by_entry.get(entry, {})
        for precision in precisions:
            row[f"fps_{precision}"] = profile.get(f"fps_{precision}")
        if video:
            if kinds[entry] == "input":
                row.update(frames=None, alignment=None, warping_error=_number(input_warp))
            else:
                row.update(frames=profile.get("frames"), alignment=profile.get("alignment"),
                           warping_error=_number(evaluation.get("warp_error")))
        rows.append(row)
    frame = pd.DataFrame(rows)
    columns = result_columns(precisions, video)
    for column in columns:
        if column not in frame:
            frame[column] = None
    # random rows drawn matched on size keep their ratios; rank's own timing columns stay in rank/results.csv
    return frame[columns + [c for c in ("match_params_ratio", "match_macs_ratio") if c in frame]]


# --------------------------------------------------------------------------------------------------
# findings: computed from the figures, never written without them


def _capped(per_image: pd.DataFrame) -> pd.DataFrame:
    return per_image.assign(seed=per_image["seed"].fillna(0),
                            psnr=np.minimum(per_image["psnr"].astype(float), MAX_PSNR))


def searched_vs_random(per_image: pd.DataFrame, kinds: dict[str, str], resamples: int = 2000,
                       seed: int = 0) -> DifferenceCI | None:
    """The searched rows' mean minus the random rows' mean, per test image, with a paired bootstrap interval.

    The searched side is one pseudo-row: per (retraining seed, image), the mean over the searched entries (on the
    seeds every searched entry has), so that resampling its seeds resamples the retraining noise of all of them;
    the random side is the mean of the random rows, each resampled on its own seeds
    (:func:`nas_restore.statistics.paired_difference_ci`). None without searched or random scores."""
    if per_image.empty:
        return None
    table = _capped(per_image[per_image["entry"].astype(str).map(kinds).isin(["searched", "random"])])
    searched = [e for e in table["entry"].unique() if kinds.get(str(e)) == "searched"]
    randoms = [str(e) for e in table["entry"].unique() if kinds.get(str(e)) == "random"]
    if not searched or not randoms:
        return None
    part = table[table["entry"].isin(searched)]
    pooled = part.groupby(["seed", "name"], as_index=False).agg(psnr=("psnr", "mean"), rows=("entry", "nunique"))
    pooled = pooled[pooled["rows"] == len(searched)].drop(columns="rows").assign(entry=POOLED)
    matrices, names = score_matrices(pd.concat([pooled, table[table["entry"].isin(randoms)]], ignore_index=True),
                                     "psnr")
    if not names or POOLED not in matrices:
        return None
    return paired_difference_ci(matrices, randoms, resamples=resamples, seed=seed)[POOLED]


def difference_to(per_image: pd.DataFrame, row: str, baseline: str, resamples: int = 2000,
                  seed: int = 0) -> DifferenceCI | None:
    """``row`` minus ``baseline`` per test image, with a paired bootstrap interval (None without common images)."""
    if per_image.empty:
        return None
    table = _capped(per_image[per_image["entry"].astype(str).isin([row, baseline])])
    matrices, names = score_matrices(table, "psnr")
    if not names or row not in matrices or baseline not in matrices:
        return None
    return paired_difference_ci({row: matrices[row], baseline: matrices[baseline]}, [baseline],
                                resamples=resamples, seed=seed)[row]


def entry_figures(results: pd.DataFrame) -> pd.DataFrame:
    """Per entry of ``results.csv`` (finished rows, input left out): kind, seeds, PSNR mean and std, MACs."""
    done = results[(results["status"] == "done") & (results["kind"] != "input")]
    if done.empty:
        return pd.DataFrame(columns=["entry", "kind", "seeds", "psnr_mean", "psnr_std", "macs"])
    stats = seed_summary(done, ("psnr",)).drop(columns=["seed_list"], errors="ignore")
    first = done.groupby("entry", sort=False).first()
    stats["kind"] = stats["entry"].map(first["kind"])
    stats["macs"] = stats["entry"].map(pd.to_numeric(first["macs"], errors="coerce"))
    return stats[["entry", "kind", "seeds", "psnr_mean", "psnr_std", "macs"]]


def best_rows(figures: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """The searched and the hand-designed (reference) row of highest mean PSNR, each or None."""
    def best(kind: str) -> pd.Series | None:
        rows = figures[(figures["kind"] == kind) & figures["psnr_mean"].notna()]
        return rows.loc[rows["psnr_mean"].idxmax()] if len(rows) else None
    return best("searched"), best("reference")


def _ci_text(ci: DifferenceCI) -> str:
    return f"{ci.difference:+.2f} dB, 95 % interval [{ci.lo:+.2f}, {ci.hi:+.2f}]"


def search_diagnosis(searches: list[dict[str, Any]], trust: list[dict[str, Any]]) -> str | None:
    """The decisiveness and trust figures in one sentence: why a search may not have beaten chance."""
    parts = []
    marked = [s for s in searches if s.get("status") == "done" and s.get("decided") is not None]
    if marked:
        margins = ", ".join(f"{s['search']} {_number(s.get('median_margin')):.2f}" for s in marked)
        parts.append(f"{sum(bool(s['decided']) for s in marked)} of {len(marked)} one-shot search(es) decided "
                     f"(median margins over the runner-up, in uniform shares, decided from 0.25: {margins})")
    checked = [t for t in trust if t.get("status") == "done"]
    if checked:
        taus = ", ".join(f"{t['search']} {t['kendall_tau']:.2f} [{t['tau_lo']:.2f}, {t['tau_hi']:.2f}]"
                         for t in checked)
        agree = sum(t["tau_lo"] > 0 for t in checked)
        parts.append(f"the supernet's ranking agreed with standalone training (Kendall tau interval above 0) in "
                     f"{agree} of {len(checked)} trust check(s) ({taus})")
    return ("The search diagnostics: " + "; ".join(parts) + ".") if parts else None


def findings(figures: pd.DataFrame, vs_random: DifferenceCI | None, vs_reference: DifferenceCI | None,
             target_psnr: float | None = None, diagnosis: str | None = None) -> list[str]:
    """The findings, sentence by sentence, from the per-entry figures (:func:`entry_figures`), the searched-vs-
    random interval (:func:`searched_vs_random`) and the best searched row's interval against the best reference
    (:func:`difference_to`); ``diagnosis`` (:func:`search_diagnosis`) follows when search did not beat chance. A
    figure that is missing is said to be missing, never guessed."""
    searched = figures[(figures["kind"] == "searched") & figures["psnr_mean"].notna()]
    randoms = figures[(figures["kind"] == "random") & figures["psnr_mean"].notna()]
    out = []
    if searched.empty:
        return ["No searched genotype finished retraining and scoring, so the study has no finding on search yet."]
    s_mean = f"{searched['psnr_mean'].mean():.2f} dB over {len(searched)} searched genotype(s)"
    if randoms.empty:
        out.append(f"There are no random rows, so whether search beats chance is not measured (the searched rows "
                   f"average {s_mean}); add `random:5` to the entries.")
    elif vs_random is None:
        out.append(f"The searched rows average {s_mean}, the random rows {randoms['psnr_mean'].mean():.2f} dB over "
                   f"{len(randoms)}; no per-image scores common to both were found, so their paired interval was "
                   "not computed and no verdict is given.")
    else:
        r_mean = f"{randoms['psnr_mean'].mean():.2f} dB over {len(randoms)} random genotype(s)"
        if separable(vs_random) and vs_random.difference > 0:
            verdict = "**Search beats chance here**"
            tail = "excludes 0"
        elif separable(vs_random):
            verdict = "**Search does worse than chance here**"
            tail = "excludes 0"
        else:
            verdict = "**Search is not separable from chance here**"
            tail = "includes 0"
        out.append(f"{verdict}: the searched rows' mean ({s_mean}) minus the random rows' mean ({r_mean}) is "
                   f"{_ci_text(vs_random)}, an interval that {tail} (paired over the test images, resampling images "
                   "and retraining seeds).")
    beats_chance = vs_random is not None and separable(vs_random) and vs_random.difference > 0
    if diagnosis and not beats_chance:
        out.append(diagnosis)
    best_s, best_r = best_rows(figures)
    assert best_s is not None  # searched is not empty
    s_text = f"{best_s['entry']} ({best_s['psnr_mean']:.2f} dB, {fmt_count(best_s['macs'])} MACs)"
    if best_r is None:
        out.append(f"No hand-designed reference was retrained, so the best searched network, {s_text}, is not "
                   "compared with one.")
    else:
        r_text = f"{best_r['entry']} ({best_r['psnr_mean']:.2f} dB, {fmt_count(best_r['macs'])} MACs)"
        macs_known = not (pd.isna(best_s["macs"]) or pd.isna(best_r["macs"]))
        cheaper = macs_known and float(best_s["macs"]) <= float(best_r["macs"])
        if vs_reference is None:
            comparison = (f"differs from the best hand-designed reference, {r_text}, by "
                          f"{best_s['psnr_mean'] - best_r['psnr_mean']:+.2f} dB in mean PSNR (no paired interval: "
                          "no common per-image scores)")
            holds = None
        elif vs_reference.lo > 0:
            comparison, holds = f"beats the best hand-designed reference, {r_text}: {_ci_text(vs_reference)}", True
        elif vs_reference.hi >= 0:
            comparison = (f"matches the best hand-designed reference, {r_text} (not separable: "
                          f"{_ci_text(vs_reference)})")
            holds = True
        else:
            comparison = (f"falls short of the best hand-designed reference, {r_text}: {_ci_text(vs_reference)}, "
                          "an interval below 0")
            holds = False
        if not macs_known:
            cost = "; the MACs of one of them were not measured, so the cost condition cannot be judged"
            met = "cannot be judged"
        else:
            ratio = float(best_s["macs"]) / float(best_r["macs"]) if float(best_r["macs"]) > 0 else math.inf
            cost = (f", at equal or lower MACs ({ratio:.2f}x the reference's)" if cheaper
                    else f", but at higher MACs ({ratio:.2f}x the reference's)")
            met = ("is met" if holds and cheaper else "is not met" if holds is not None else
                   "cannot be judged without a paired interval")
        out.append(f"The best searched network, {s_text}, {comparison}{cost}: the target \"matches or beats the best "
                   f"hand-designed reference at equal or lower MACs\" {met}.")
    std = "" if pd.isna(best_s["psnr_std"]) else f" ± {best_s['psnr_std']:.2f}"
    reach = (f"The best searched PSNR is {best_s['psnr_mean']:.2f}{std} dB ({best_s['entry']}, over "
             f"{int(best_s['seeds'])} seed(s))")
    if target_psnr is not None:
        reach += (f", {'at or above' if best_s['psnr_mean'] >= target_psnr else 'below'} the target of "
                  f"{target_psnr:g} dB")
    out.append(reach + ".")
    return out


# --------------------------------------------------------------------------------------------------
# the whole study


@dataclass
class StudyResult:
    out: Path
    results: pd.DataFrame          # results.csv: one row per (entry, seed), and the input's
    summary_path: Path | None      # None while other processes still hold units (``waiting``)
    searches: list[dict[str, Any]]
    trust: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    findings: list[str]
    ran: list[str]                 # the units run in this call (searches/..., trust/..., rank/..., profile/...)
    waiting: list[str] = field(default_factory=list)   # units in progress in other processes: this call stopped


def _held(rows: Any) -> list[str]:
    """The units of ``rows`` (records, or a results table) that a stage skipped: another process had them."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    return [str(r.get("unit") or r.get("search") or r.get("entry")) for r in records if r.get("status") == HELD]


def _still_held(stage_folder: Path, rows: Any) -> list[str]:
    """Of the units a stage skipped, those another process is still working on (the rest finished meanwhile)."""
    return [unit for unit in _held(rows) if unit_held(stage_folder / unit)]


def _stop_for_others(out: Path, waiting: list[str], ran: list[str], say: Callable[[str], None],
                     searches: list[dict[str, Any]], trust: list[dict[str, Any]] | None = None,
                     results: pd.DataFrame | None = None) -> StudyResult:
    """The next stage needs units that other processes hold: stop here (their runs, or a re-run after them,
    go on from there); profiles are never timed while another worker trains."""
    say(f"{len(waiting)} unit(s) in progress in other processes ({', '.join(waiting[:4])}"
        f"{', ...' if len(waiting) > 4 else ''}): the next stage waits for them. This call stops; the process "
        "that finishes last goes on, or run the command again when they are done.")
    return StudyResult(out=out, results=results if results is not None else pd.DataFrame(columns=["entry", "kind",
                       "status"]), summary_path=None, searches=searches, trust=trust or [], profiles=[], findings=[],
                       ran=ran, waiting=waiting)


def prepare(config: StudyConfig, out_dir: str | Path) -> Path:
    """Check names and data, refuse changed settings, then record the settings in ``out/study.yaml``."""
    out = Path(out_dir)
    check_names(config)
    check_same_settings(out, config)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_yaml(config, out / SETTINGS)
    return out


def run_study(config: StudyConfig, out_dir: str | Path, command: str | None = None,
              say: Callable[[str], None] = log.info) -> StudyResult:
    """Run (or resume) every stage into ``out_dir``; write results.csv and summary.md."""
    out = prepare(config, out_dir)
    load_at_start = _load()
    made = run_synth(config, out, say)
    searches, ran = run_searches(config, out, say)
    ran = made + ran
    # a stage whose units other workers had is gone on from only once they all finished (then run again: it
    # skips every unit and gathers their records)
    if _held(searches):
        if waiting := _still_held(out / "searches", searches):
            return _stop_for_others(out, waiting, ran, say, searches)
        searches, _ = run_searches(config, out, say)
    trust, ran_trust = run_trust_checks(config, out, searches, say)
    if _held(trust):
        if waiting := _still_held(out / "trust", trust):
            return _stop_for_others(out, waiting, ran + ran_trust, say, searches, trust)
        trust, _ = run_trust_checks(config, out, searches, say)
    like = like_genotype(config, out, searches)
    rank_config = dataclasses.replace(config.rank, like=str(like) if like is not None else None)
    items = rank_items(config, out, searches)
    ranked = run_rank(items, rank_config, out / "rank", command=command, say=say)
    ran_rank = [f"rank/{u}" for u in ranked.ran]
    if _held(ranked.results):
        if waiting := _still_held(out / "rank", ranked.results):
            return _stop_for_others(out, waiting, ran + ran_trust + ran_rank, say, searches, trust, ranked.results)
        ranked = run_rank(items, rank_config, out / "rank", command=command, say=say)
    profiles, ran_profile = run_profiles(config, out, ranked.results, say)
    precisions = [p.name for p in resolve_precisions(config.profile.precisions, resolve_device(config.device))]
    results = study_table(ranked.results, out / "rank", searched_labels(out, searches), profiles, precisions)
    results.to_csv(out / RESULTS, index=False)
    kinds = dict(zip(results["entry"].astype(str), results["kind"]))
    per_image = _read_per_image(out / "rank" / PER_IMAGE)
    figures = entry_figures(results)
    best_s, best_r = best_rows(figures)
    vs_random = searched_vs_random(per_image, kinds, config.rank.bootstrap_resamples, config.rank.bootstrap_seed)
    vs_reference = (difference_to(per_image, str(best_s["entry"]), str(best_r["entry"]),
                                  config.rank.bootstrap_resamples, config.rank.bootstrap_seed)
                    if best_s is not None and best_r is not None else None)
    found = findings(figures, vs_random, vs_reference, config.target_psnr, search_diagnosis(searches, trust))
    summary = write_summary(config, out, results, searches, trust, profiles, found, ranked, rank_config, per_image,
                            command, load_at_start, precisions)
    ran += ran_trust + ran_rank + ran_profile
    return StudyResult(out=out, results=results, summary_path=summary, searches=searches, trust=trust,
                       profiles=profiles, findings=found, ran=ran)


def _read_per_image(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"name": str, "entry": str})
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["entry", "kind", "seed", "name", "psnr", "ssim"])


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover  (not on Windows)
        return []


# --------------------------------------------------------------------------------------------------
# the plan (--dry-run)


@dataclass
class PlannedUnit:
    stage: str          # synth, search, trust, rank, profile
    label: str
    done: bool          # finished in an earlier call: a run skips it
    cost: str           # what it will cost, in words (optimiser steps, samples, timed passes)
    steps: int | None = None


def training_items(data: DataConfig) -> int:
    """Items per training epoch of ``data`` (the training split, or ``items_per_epoch``)."""
    return len(train_val_datasets(data, 1, 0)[0])


def _planned_trust(config: StudyConfig, sconf: SearchConfig, label: str, items: int, out: Path) -> PlannedUnit:
    """The trust check of one one-shot search: N standalone trainings on the search's data."""
    from nas_restore.trust import TrustConfig  # the trust check's module: only when one is asked for

    trust = cfg.from_dict(TrustConfig, dict(config.trust or {}), "trust")
    batch = trust.batch_size or sconf.batch_size
    per_epoch = math.ceil(items / batch)
    if trust.standalone_steps_per_epoch is not None:
        per_epoch = min(per_epoch, trust.standalone_steps_per_epoch)
    steps = trust.samples * trust.standalone_epochs * per_epoch
    return PlannedUnit("trust", f"trust/{label}", (out / "trust" / label / DONE).is_file(),
                       f"{trust.samples} architectures scored by the supernet and trained alone for "
                       f"{trust.standalone_epochs} epoch(s) x {per_epoch} batches = {steps} steps", steps)


def plan(config: StudyConfig, out_dir: str | Path) -> list[PlannedUnit]:
    """The units a run would do, each marked done when a finished record exists, with its cost in optimiser steps
    (one-shot: epochs x batches; multi-trial: trials x trial epochs x batches; retraining: epochs x batches)."""
    out = Path(out_dir)
    check_names(config)
    check_same_settings(out, config)
    units: list[PlannedUnit] = []
    if config.synth is not None:
        inputs, synth_config = synth_settings(config)
        made = (out / "synth" / DONE).is_file()
        units.append(PlannedUnit("synth", f"synth -> {config.data.folder}", made,
                                 f"rain ({', '.join(synth_config.rain)}) added to {len(inputs)} video(s)"))
        if not made:  # no clips yet: the costs below cannot be counted
            return units
    search_items = training_items(config.data)
    for spec, seed in config.search_units:
        sconf = search_config(config, spec, seed)
        label = unit_name(spec, seed)
        batches = search_items // sconf.batch_size
        if find_strategy(sconf.strategy).one_shot:
            steps = sconf.epochs * batches
            cost = f"{sconf.strategy}: {sconf.epochs} supernet epoch(s) x {batches} batches = {steps} steps"
        else:
            steps = sconf.max_trials * sconf.trial_epochs * batches
            cost = (f"{sconf.strategy}: {sconf.max_trials} trial(s) x {sconf.trial_epochs} epoch(s) x {batches} "
                    f"batches = {steps} steps")
        if sconf.budget_seconds is not None:
            cost += f" (or {sconf.budget_seconds:g} s, whichever comes first)"
        units.append(PlannedUnit("search", f"searches/{label}", (out / "searches" / label / DONE).is_file(), cost,
                                 steps))
        if config.trust is not None and find_strategy(sconf.strategy).one_shot:
            units.append(_planned_trust(config, sconf, label, search_items, out))
    train = config.rank.retrain.train
    per_epoch = math.ceil(training_items(config.rank.retrain.data) / train.batch_size)
    steps = train.epochs * per_epoch
    rows = len(config.search_units) + sum(random_count(e) or 1 for e in config.entries)
    finished = len(list((out / "rank" / "entries").glob(f"*/seed-*/{DONE}")))
    total = rows * config.rank.seeds
    units.append(PlannedUnit("rank", f"rank/ ({rows} entries x {config.rank.seeds} seeds)", finished >= total,
                             f"{total} retrainings of {train.epochs} epoch(s) x {per_epoch} batches = {steps} steps "
                             f"each ({total * steps} steps; {finished} unit(s) finished earlier), each scored on "
                             f"{config.rank.eval_data or 'the synthetic held-out clips'}"
                             + (f" split {config.rank.eval_split}" if config.rank.eval_split else ""),
                             total * steps))
    h, w = config.profile.size
    units.append(PlannedUnit("profile", f"profile/ ({rows} entries)", False,
                             f"{config.profile.warmup + config.profile.repeats} forward passes at {h}x{w} per entry "
                             f"and precision ({', '.join(config.profile.precisions)})"))
    return units


# --------------------------------------------------------------------------------------------------
# summary.md


def _data_text(data: DataConfig) -> str:
    where = "built-in synthetic rain" if data.folder is None else f"{data.folder}" + (
        f", split {data.split}" if data.split else "")
    epoch = (f"; an epoch is {data.items_per_epoch} random {data.patch_size}-px crops of the training items"
             if data.items_per_epoch else f"; an epoch is one pass over the training items ({data.patch_size}-px "
                                          "crops)")
    return f"{where} (validation: {data.val_fraction:.0%} of it){epoch}"


def _synth_text(config: StudyConfig) -> str:
    inputs, synth_config = synth_settings(config)
    split = (f"the last {synth_config.holdout:.0%} of each video's frames held out (after a gap of "
             f"{synth_config.holdout_gap or synth_config.frames} frames no clip uses)" if synth_config.holdout
             else "no holdout split")
    return (f"data: `nas-restore synth` rain ({', '.join(synth_config.rain)}) added to {', '.join(inputs)}, clips of "
            f"{synth_config.frames} frames every {synth_config.stride or synth_config.frames} frames"
            + (f" at {synth_config.size[0]}x{synth_config.size[1]}" if synth_config.size else "")
            + f", seed {synth_config.seed}; {split} (`{config.data.folder}/synth.json` lists each clip's source frames)")


def _yes_no(value: Any) -> str:
    return "–" if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else (
        "yes" if value else "no")


def searches_section(config: StudyConfig, searches: list[dict[str, Any]], trust: list[dict[str, Any]]) -> list[str]:
    """``## Searches``: per run, its genotype and "did it decide" figures, and the trust check's tau."""
    by_search = {t["search"]: t for t in trust}
    header = ["search", "strategy", "space", "status", "genotype", "search s", "decided", "median margin",
              "median entropy", "trust: Kendall tau [95 % CI]"]
    body = []
    for s in searches:
        t = by_search.get(s["search"], {})
        tau = (f"{t['kendall_tau']:.2f} [{t['tau_lo']:.2f}, {t['tau_hi']:.2f}]" if t.get("status") == "done"
               else ("failed" if t.get("status") == "failed" else "–"))
        status = s["status"] if s["status"] == "done" else f"{s['status']}: {s.get('error', '')}"
        body.append([s["search"], s.get("strategy", "–"), s.get("space", "–"), status,
                     f"`{s['genotype_id']}`" if s.get("genotype_id") else "–", fmt(s.get("search_seconds"), 0),
                     _yes_no(s.get("decided")), fmt(s.get("median_margin")), fmt(s.get("median_entropy"), 3), tau])
    lines = ["## Searches", "", markdown_table(header, body), ""]
    one_shot = [s for s in searches if s.get("status") == "done" and s.get("one_shot")]
    marked = [s for s in one_shot if s.get("decided") is not None]
    if marked:
        lines.append(f"{sum(bool(s['decided']) for s in marked)} of {len(marked)} one-shot search(es) decided: "
                     "a run decided when the median margin of the kept candidate over the runner-up is at least 0.25 "
                     "uniform shares and the median entropy of the architecture weights at most 0.95 of uniform "
                     "(`nas_restore/decision.py`). Multi-trial searches, and one-shot ones without architecture "
                     "weights (spos), have no such figures (–).")
        lines.append("")
    if config.trust is None:
        lines += ["The weight-sharing trust check was not run (`trust: null`).", ""]
    for t in trust:
        lines.append(f"- trust check of {t['search']} (`trust/{t['search']}/trust.md`): " + (
            f"{t['sentence'].rstrip('.')}. Spearman rho {t['spearman_rho']:.2f} [{t['rho_lo']:.2f}, "
            f"{t['rho_hi']:.2f}]."
            if t.get("status") == "done" else f"failed ({t.get('error', '')})"))
    return lines + ([""] if trust else [])


def profile_section(config: StudyConfig, results: pd.DataFrame, profiles: list[dict[str, Any]],
                    precisions: Sequence[str]) -> list[str]:
    """``## Profile``: per entry its parameters, MACs and frames/s in each precision at the stated size."""
    h, w = config.profile.size
    kinds = dict(zip(results["entry"], results["kind"]))
    header = ["entry", "kind", "params", f"MACs @{h}x{w}", *[f"frames/s {p}" for p in precisions]]
    body = []
    for p in profiles:
        if p.get("status") != "done":
            body.append([p["entry"], kinds.get(p["entry"], "–"), "–", "–", *[f"failed: {p.get('error', '')}"] +
                         ["–"] * (len(precisions) - 1)])
            continue
        body.append([p["entry"], kinds.get(p["entry"], "–"), fmt_count(p["params"]), fmt_count(p["macs"]),
                     *[fmt(p.get(f"fps_{q}"), 3 if (p.get(f"fps_{q}") or 0) < 1 else 1) for q in precisions]])
    done = [p for p in profiles if p.get("status") == "done"]
    where = (f"on {done[0]['device']} with {done[0]['threads']} thread(s)" if done else "")
    return ["## Profile", "", markdown_table(header, body), "",
            f"One forward pass of each entry's network (random weights: the cost does not depend on them) on a "
            f"{h}x{w} frame, batch 1, {where}: frames/s = 1 / median of {config.profile.repeats} timed passes after "
            f"{config.profile.warmup} warm-up; MACs = FLOPs / 2 (`nas_restore/profiling.py`). Timings depend on the "
            "machine and its load (below).", ""]


def video_section(results: pd.DataFrame) -> list[str]:
    """``## Temporal consistency`` (video clips only): frames, alignment and warping error per entry."""
    if "warping_error" not in results:
        return []
    body = []
    for entry, group in results.groupby("entry", sort=False):
        done = group[group["status"] == "done"]
        first = group.iloc[0]
        body.append([entry, first["kind"], fmt(first.get("frames")), first.get("alignment") or "–",
                     mean_std(pd.to_numeric(done["warping_error"], errors="coerce"), 5)])
    return ["## Temporal consistency", "",
            markdown_table(["entry", "kind", "frames", "alignment", "warping error, mean ± std"], body), "",
            "Warping error (Lai et al., ECCV 2018): mean squared difference between each output frame and the previous "
            "one warped onto it, over non-occluded pixels, flow from the clean frames (`nas_restore/evaluation.py`); "
            "lower is steadier.", ""]


def write_summary(config: StudyConfig, out: Path, results: pd.DataFrame, searches: list[dict[str, Any]],
                  trust: list[dict[str, Any]], profiles: list[dict[str, Any]], found: list[str], ranked: Any,
                  rank_config: RankConfig, per_image: pd.DataFrame, command: str | None, load_at_start: list[float],
                  precisions: Sequence[str]) -> Path:
    device = str(resolve_device(config.device))
    mach = machine_info(device)
    rank_results = ranked.results
    kinds = dict(zip(results["entry"].astype(str), results["kind"]))
    _, intervals, images = chance_statistics(rank_results, per_image, rank_config)
    lines_by_entry = [{**line, "kind": kinds.get(str(line["entry"]), line["kind"])}
                      for line in entry_lines(rank_results)]
    train = config.rank.retrain.train
    per_epoch = math.ceil(training_items(config.rank.retrain.data) / train.batch_size)
    eval_text = (f"{config.rank.eval_data}" + (f", split {config.rank.eval_split}" if config.rank.eval_split else "")
                 if config.rank.eval_data else "synthetic held-out clips written from their own seed")
    done_searches = [s for s in searches if s.get("status") == "done"]
    lines = [
        "# Study: searched architectures against chance and hand designs",
        "",
        f"{len(done_searches)} of {len(searches)} search run(s) finished ({', '.join(s['search'] for s in searches)}), "
        f"all on {_data_text(config.data)}. Every searched genotype and every other entry was retrained with one "
        f"recipe and {config.rank.seeds} seed(s), scored on {eval_text} only, and profiled at "
        f"{config.profile.size[0]}x{config.profile.size[1]}. Every figure below was measured by this run; "
        f"`{RESULTS}` has one row per entry and seed.",
        "",
        "## Findings",
        "",
        *found,
        "",
    ]
    lines += searches_section(config, searches, trust)
    lines += chance_section(rank_config, lines_by_entry, intervals, images, ranked.draws)
    lines += profile_section(config, results, profiles, precisions)
    lines += video_section(results)
    lines += protocol_section([
        *([_synth_text(config)] if config.synth is not None else []),
        f"search data: {_data_text(config.data)}; searches and seeds: " + "; ".join(
            f"{spec['name']} ({spec.get('strategy', SearchConfig.strategy)}, seeds {spec['seeds']})"
            for spec in config.searches),
        f"retraining: {_data_text(config.rank.retrain.data)}; {train.epochs} epoch(s) x {per_epoch} batches of "
        f"{train.batch_size} = {train.epochs * per_epoch} optimiser steps per network, Adam lr {train.lr:g} cosine to "
        f"{train.min_lr:g}, seeds {config.rank.seed_list}; the model kept is the best epoch by validation PSNR",
        f"evaluation: {eval_text}, full frames, never searched or trained on (the holdout guard refuses training "
        "on a split named holdout)",
        f"random rows: drawn from the space of {Path(rank_config.like).parent.name if rank_config.like else '–'}'s "
        "genotype" + (f", kept within ±{rank_config.match_tolerance:.0%} of its parameters and MACs"
                      if rank_config.match_tolerance is not None else ", not matched on size")
        + f"; references {'rebuilt at its size' if rank_config.reference_size == 'like' else 'at their released size'}",
        f"precision of searches, retraining and scoring: {config.precision}; profile: "
        f"{', '.join(config.profile.precisions)}",
        f"the ranking alone, with its own summary: `rank/summary.md`; per image: `rank/{PER_IMAGE}`",
    ])
    lines += machine_section(mach)
    if load_at_start:
        lines += [f"Load average when this call started: {', '.join(f'{x:g}' for x in load_at_start)} (1/5/15 min).",
                  ""]
    lines += regenerate_section(
        command, "(run from Python: see study.yaml)",
        "Re-running resumes: finished units (searches/*, trust/*, rank/entries/*/seed-*, profile/*, each with a "
        "done.json) are skipped, unfinished ones continue (a search from its checkpoint, a retraining from its last "
        "epoch) and failed ones are retried. The settings are in study.yaml; a re-run that changes one that "
        "finished units depend on is refused, naming the field.")
    return write_report(out / SUMMARY, lines)


__all__ = ["StudyConfig", "ProfileSettings", "StudyResult", "PlannedUnit", "run_study", "plan", "prepare",
           "search_config", "changed_settings", "check_same_settings", "flatten_settings", "study_table",
           "study_kinds", "searched_vs_random", "difference_to", "entry_figures", "best_rows", "findings",
           "search_diagnosis", "searched_labels",
           "result_columns", "KINDS"]
