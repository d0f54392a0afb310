"""What a search run folder holds: its file names, their columns, and the code that writes and reads them.

A search writes ``runs/NAME/``; ``render``, ``compare`` and ``rank`` read it back. Keeping the names
and columns here means one place to look up (or change) the layout:

=================  ==========================================================================
``config.yaml``    the resolved search config (plus ``resolved_space``)
``search.log``     the run's log
``genotype.json``  the result (:mod:`nas_restore.genotype`)
``alphas.csv``     softmaxed architecture weights every few steps (one-shot), :data:`ALPHA_COLUMNS`
``derived.jsonl``  the architecture derived after each epoch (one-shot)
``metrics.csv``    the supernet's per-epoch train loss and validation PSNR (one-shot)
``guard.json``     what the skip-connection guard did (one-shot)
``supernet.pt``    the trained supernet's weights and settings, for ``nas-restore trust`` (one-shot)
``search.ckpt``    the one-shot search's checkpoint: what a re-run resumes from (:mod:`nas_restore.search_checkpoint`)
``anytime.csv``    best validation PSNR so far against cost, :data:`ANYTIME_COLUMNS`
``trials.csv``     one row per trial (multi-trial), :data:`TRIAL_COLUMNS`
``pareto.csv``     the PSNR/cost Pareto front (multi-objective), :data:`PARETO_COLUMNS`
``trials/``        per-trial records written by the trial processes
``ledger.jsonl``   the finished trials, appended as they end: what a re-run resumes from (multi-trial)
``processes.json`` while a multi-trial search runs: NNI's manager and trial processes, for clean-up
``nni/``           NNI's own experiment folder
=================  ==========================================================================

While a search runs trial processes, :data:`JOB_FILE` holds their job as plain JSON (never a pickle).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from nas_restore.errors import UserError


class RunRecordError(UserError, ValueError):
    """A run folder's record (alphas.csv, ...) that cannot be read; the message names the file and the fix."""


CONFIG = "config.yaml"
LOG = "search.log"
GENOTYPE = "genotype.json"
ALPHAS = "alphas.csv"
DERIVED = "derived.jsonl"
METRICS = "metrics.csv"
GUARD = "guard.json"
SEARCH_CHECKPOINT = "search.ckpt"  # one-shot: supernet, optimisers, generators, records (nas_restore.search_checkpoint)
SUPERNET = "supernet.pt"  # one-shot: the trained supernet, plain tensors + settings (nni_layer.supernet; trust)
ANYTIME = "anytime.csv"
TRIALS = "trials.csv"
PARETO = "pareto.csv"
TRIALS_DIR = "trials"
TRIAL_CHECKPOINTS_DIR = "trial_checkpoints"  # multi-trial: last.ckpt of each trial in training, gone once it ends
JOB_FILE = "multitrial_job.json"  # plain data for the trial processes (never a pickle), gone when the search ends
NNI_DIR = "nni"
LEDGER = "ledger.jsonl"       # multi-trial: one JSON line per finished trial (nas_restore.multitrial.Ledger)
PROCESSES = "processes.json"  # multi-trial: NNI's processes of the running search (nni_layer.runner.ProcessRecord)
# what only a search writes (config.yaml, genotype.json and metrics.csv a retraining writes too): how
# nas_restore.outputs tells a search's folder from a retraining's
SEARCH_ONLY_FILES = (ALPHAS, DERIVED, GUARD, ANYTIME, TRIALS, PARETO, LOG, JOB_FILE, LEDGER, PROCESSES,
                     SEARCH_CHECKPOINT, SUPERNET)
SEARCH_ONLY_DIRS = (TRIALS_DIR, NNI_DIR, TRIAL_CHECKPOINTS_DIR)

ALPHA_COLUMNS = ("step", "epoch", "label", "choice", "weight")
METRIC_COLUMNS = ("epoch", "train_loss", "val_psnr")  # the columns `render` needs; searches write more
ANYTIME_COLUMNS = ("cost_seconds", "cost_epochs", "val_psnr", "best_val_psnr", "source")
TRIAL_COLUMNS = ("trial", "status", "genotype_id", "val_psnr", "val_ssim", "params", "flops", "latency_s",
                 "seconds", "start_s", "end_s", "nni_trial", "arch", "error")
PARETO_COLUMNS = ("trial", "genotype_id", "val_psnr", "objective", "cost", "arch")


def is_run_folder(path: str | Path) -> bool:
    """A one-shot search run folder: the thing ``render`` draws the history of."""
    path = Path(path)
    return path.is_dir() and (path / ALPHAS).is_file()


def write_anytime(rows: list[dict[str, Any]], path: Path) -> None:
    """The anytime curve of a run: after each unit of work (a supernet epoch, a finished trial), its
    cost so far (wall seconds; epoch-equivalents = passes over the train split by one network) and the
    best validation PSNR found so far. One-shot runs score the supernet; multi-trial runs each trial."""
    best = float("-inf")
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ANYTIME_COLUMNS))
        writer.writeheader()
        for row in rows:
            value = float(row["val_psnr"])
            best = max(best, value) if value == value else best  # NaN never improves the best
            writer.writerow({"cost_seconds": round(float(row["cost_seconds"]), 3),
                             "cost_epochs": round(float(row["cost_epochs"]), 4), "val_psnr": value,
                             "best_val_psnr": best if best > float("-inf") else float("nan"),
                             "source": row.get("source", "")})


def write_trial_anytime(rows: list[dict[str, Any]], trial_epochs: int, path: Path) -> None:
    """anytime.csv of a multi-trial run: after each trained (or failed) trial, cost so far and best PSNR."""
    anytime, trained = [], 0
    for row in rows:
        if row["status"] == "skipped":
            continue
        trained += 1
        anytime.append({"cost_seconds": row["end_s"], "cost_epochs": trained * trial_epochs,
                        "val_psnr": row["val_psnr"] if row["status"] == "ok" else math.nan,
                        "source": f"trial {row['trial']}" + ("" if row["status"] == "ok" else " (failed)")})
    write_anytime(anytime, path)


def write_trials(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TRIAL_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "arch": json.dumps(row["arch"], sort_keys=True)})


def write_pareto(front: list[dict[str, Any]], objective: str, cost_column: str, path: Path) -> None:
    """pareto.csv: the trials on the PSNR/cost front, with the cost read from each row's ``cost_column``."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PARETO_COLUMNS))
        writer.writeheader()
        for row in front:
            writer.writerow({"trial": row["trial"], "genotype_id": row["genotype_id"], "val_psnr": row["val_psnr"],
                             "objective": objective, "cost": row.get(cost_column),
                             "arch": json.dumps(row["arch"], sort_keys=True)})


def load_alphas(path: str | Path) -> pd.DataFrame:
    """``alphas.csv`` with its columns checked; one row per (step, label, choice)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise RunRecordError(f"{path} cannot be read as CSV ({err}); re-run the search to regenerate it") from None
    missing = [c for c in ALPHA_COLUMNS if c not in frame.columns]
    if missing:
        raise RunRecordError(f"{path} lacks the column(s) {missing}; expected {', '.join(ALPHA_COLUMNS)} "
                         "(written by `nas-restore search`)")
    if frame.empty:
        raise RunRecordError(f"{path} has no rows: the search recorded no architecture weights (did it run a step?)")
    return frame.drop_duplicates(["step", "label", "choice"], keep="last")
