"""kill -9 at random points of a search, a --parallel search, a retraining and a compare: does each resume?

Usage:  python benchmarks/kill_resume.py [--targets search,parallel,retrain,compare] [--points 5] [--seed 0]
                                         [--out-dir DIR] [--keep] [--report reports/kill_resume_cpu.md] [--json FILE]

Issue 13's targets: ``kill -9`` at 5 random points of each of a one-shot search, a ``--parallel 2`` multi-trial
search, a retraining and a ``compare``; every run resumes, at most one epoch or one trial of work is lost, the final
genotype is the same where the run is deterministic, and no orphaned process or listening port is left.

For each target, on tiny built-in synthetic rain (the sizes of the kill tests in ``tests/``):

1. one uninterrupted reference run of the command, timed;
2. ``--points`` runs of the same command in a fresh folder, each started as a subprocess and sent SIGKILL at a
   random moment within the reference's duration (``random.Random(f"{seed}:{target}")``: the same moments every
   time), then started again with the same command until it exits 0 (never killed again);
3. per run: where the killed process stood (its folder's records at the kill), the seconds it had worked since
   its last durable record (a checkpoint, a ledger line, a trial's row, a stage record; since its start when it had
   none), the work done twice (epochs logged by two processes, trials trained twice), what it left behind right
   after the kill and after the re-run (processes, their listening ports, NNI manifest entries), and whether the
   final result equals the reference's.

What is left behind is looked for in three ways, all of them read-only: processes whose environment holds the
run's tag (``NAS_RESTORE_KILL_BENCH``, set on the command and inherited by NNI's node manager and trials), whose
environment (``NNI_EXP_ID``) or command line (``--experiment-id``) names one of the run's NNI experiments (the
folders under its ``nni/``), or whose command line names the run folder; their listening TCP sockets, and every
port of the run's ``processes.json`` (as it stood at the kill) that still accepts a connection on 127.0.0.1; and the
run's experiments in NNI's manifest ``$HOME/nni-experiments/.experiment``. The commands run with ``HOME`` set to
``OUT_DIR/home``, so that NNI's manifest is the benchmark's own (the studies running on the machine keep theirs).
Anything the benchmark finds still running after a re-run is a finding: it is reported, then ended by pid.

Run it with one thread: ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NAS_RESTORE_THREADS=1 nice -n 10 python
benchmarks/kill_resume.py``; the commands inherit that environment (and get ``NAS_RESTORE_THREADS=1`` anyway).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import psutil
import torch
import yaml

from nas_restore import multitrial, run_records
from nas_restore.report_common import markdown_table, write_report
from nas_restore.search_checkpoint import STATE_KEY
from nas_restore.study import machine_info, machine_line

ROOT = Path(__file__).resolve().parents[1]
TAG = "NAS_RESTORE_KILL_BENCH"
TARGETS = ("search", "parallel", "retrain", "compare")
MAX_RERUNS = 3  # a re-run that fails is started again, up to this many times
MAX_REDRAWS = 2  # a kill moment after the run had ended (it ran faster than the reference) is drawn again
EPOCH_LINE = re.compile(r"epoch (\d+): train_loss ")

# the space of tests/test_search_resume.py (TMICS at 4 channels, 3 frames, one 2-node cell per branch)
SEARCH_SPACE = {"channels": 4, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
                "operations": ["Residualblocks_3_1", "DilConv_3_2", "skip_connect"]}
# the space of tests/test_multitrial.py (TMICS at 6 channels, 1 frame, one operation per node)
TRIAL_SPACE = {"channels": 6, "frames": 1, "cells_per_branch": 1, "nodes_per_cell": 2, "ops_per_node": 1,
               "operations": ["DilConv_3_2", "ECAattention_3", "skip_connect"]}

SEARCH = {"space": "tmics", "preset": "demo", "space_settings": SEARCH_SPACE, "strategy": "darts", "epochs": 6,
          "batch_size": 2, "data": {"patch_size": 16, "train_items": 32, "val_items": 12}, "device": "cpu",
          "progress": False}
PARALLEL = {"space": "tmics", "preset": "demo", "space_settings": TRIAL_SPACE, "strategy": "random", "max_trials": 6,
            "trial_epochs": 3, "parallel": 2, "batch_size": 4,
            "data": {"patch_size": 32, "train_items": 320, "val_items": 4}, "device": "cpu", "progress": False}
RETRAIN_GENOTYPE = "space:rescnn:cpu"  # the hand-designed residual CNN (16 channels, 7 blocks, 3 frames)
RETRAIN = {"train": {"epochs": 8, "batch_size": 4, "seed": 3},
           "data": {"train_items": 96, "val_items": 8, "patch_size": 48}}
COMPARE = {"space": "tmics", "preset": "demo", "space_settings": TRIAL_SPACE, "strategies": ["darts", "random"],
           "seeds": 1, "budget": 4, "trial_epochs": 1,
           "search": {"batch_size": 4, "data": {"patch_size": 16, "train_items": 48, "val_items": 8}},
           "retrain": {"train": {"epochs": 4, "batch_size": 4}, "data": {"patch_size": 48, "train_items": 64,
                                                                         "val_items": 8}},
           "test": {"clips": 1, "frames_per_clip": 3, "size": 32}, "device": "cpu"}


# --------------------------------------------------------------------------------------------------
# reading a run folder


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole JSON lines of a file (a line cut short by a kill is skipped)."""
    lines = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def state_digest(path: Path, key: str = "state_dict") -> str | None:
    """sha256 (12 hex digits) of a checkpoint's tensors, in key order: equal digests, equal weights bit for bit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)[key]
    except Exception:  # noqa: BLE001  (missing or unreadable: no digest)
        return None
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
        else:
            digest.update(repr(tensor).encode())
    return digest.hexdigest()[:12]


def logged_epochs(log: Path) -> list[int]:
    """The epoch rows a one-shot search logged (every process that ran in the folder, in order)."""
    try:
        return [int(m.group(1)) for m in EPOCH_LINE.finditer(log.read_text())]
    except OSError:
        return []


def search_position(run: Path) -> str | None:
    """Where a one-shot search's checkpoint stands, in words; None without one."""
    try:
        state = torch.load(run / run_records.SEARCH_CHECKPOINT, map_location="cpu",
                           weights_only=True)["callbacks"][STATE_KEY]
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001
        return f"unreadable checkpoint ({type(err).__name__})"
    position = state.get("position", {})
    if state.get("training_done"):
        return f"ckpt: training done (epoch {position.get('epoch')})"
    if position.get("epoch_end"):
        return f"ckpt after epoch {position.get('epoch')}"
    return f"ckpt inside epoch {position.get('epoch')} ({position.get('batches')} batches)"


def retrain_versions(folder: Path) -> list[list[int]]:
    """The epochs each call of a retraining finished (its CSV logger version: a row with ``epoch_seconds``)."""
    versions = []
    for path in sorted(folder.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
            versions.append([])
            continue
        done = frame[frame["epoch_seconds"].notna()] if "epoch_seconds" in frame else frame.iloc[0:0]
        versions.append(sorted({int(e) for e in done["epoch"]}))
    return versions


def last_ckpt_epoch(folder: Path) -> int | None:
    try:
        return int(torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001
        return None


def trial_rows(run: Path) -> list[dict[str, Any]]:
    """The rows trial processes wrote (one per training of an architecture)."""
    return [row for row in (read_json(p) for p in sorted((run / run_records.TRIALS_DIR).glob("*.json"))) if row]


def arch_key(arch: Any) -> str:
    return json.dumps(arch, sort_keys=True)


def redone(counts: list[int]) -> int:
    """How many items of a list occur more than once, counted beyond their first time."""
    return len(counts) - len(set(counts))


# --------------------------------------------------------------------------------------------------
# what a run leaves behind


def experiments_of(out: Path) -> set[str]:
    """The NNI experiments every search under ``out`` started (the folders of its ``nni/``)."""
    found = set()
    for nni in out.rglob(run_records.NNI_DIR):
        if nni.is_dir():
            found |= {p.name for p in nni.iterdir() if p.is_dir() and p.name != "_latest"}
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def leftovers(out: Path, tag: str, home: Path, ports: list[int]) -> dict[str, Any]:
    """The run's processes still there, their listening ports, recorded ports still open, manifest entries."""
    experiments = experiments_of(out)
    processes = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            line = " ".join(process.cmdline())
            env = process.environ()
            status = process.status()
        except psutil.Error:
            continue
        why = ("tag" if env.get(TAG) == tag else "NNI_EXP_ID" if env.get("NNI_EXP_ID") in experiments
               else "--experiment-id" if any(f"--experiment-id {e}" in line for e in experiments)
               else "run folder" if str(out) in line else None)
        if why is None:
            continue
        try:
            listens = sorted({c.laddr.port for c in process.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN})
        except psutil.Error:
            listens = []
        processes.append({"pid": process.pid, "start": process.create_time(), "status": status, "found_by": why,
                          "listens": listens, "command": line[:160]})
    manifest_path = home / "nni-experiments" / ".experiment"
    manifest = read_json(manifest_path) or {}
    alive = [p for p in processes if p["status"] != psutil.STATUS_ZOMBIE]
    entries = {e: manifest[e] for e in sorted(set(manifest) & experiments) if isinstance(manifest[e], dict)}
    return {"processes": alive, "zombies": len(processes) - len(alive),
            "ports": sorted({port for p in alive for port in p["listens"]} | {p for p in ports if listening(p)}),
            "manifest": sorted(set(manifest) & experiments), "manifest_all": len(manifest),
            "manifest_entries": {e: {**{k: v.get(k) for k in ("status", "pid", "port", "logDir")},
                                     "one_shot": run_records.is_run_folder(Path(v.get("logDir") or "/").parent)}
                                 for e, v in entries.items()}}


def left_text(left: dict[str, Any] | None) -> str:
    if left is None:
        return "–"
    parts = []
    if left["processes"]:
        kinds = {}
        for p in left["processes"]:
            word = "NNI manager" if "nni_node" in p["command"] or "main.js" in p["command"] else \
                "trial" if "training_service trial" in p["command"] else "process"
            kinds[word] = kinds.get(word, 0) + 1
        parts.append(", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items()))
    if left["ports"]:
        parts.append("port " + ",".join(map(str, left["ports"])))
    if left["manifest"]:
        count = len(left["manifest"])
        parts.append(f"{count} NNI manifest entr{'y' if count == 1 else 'ies'}")
    return "; ".join(parts) or "nothing"


def end_leftovers(left: dict[str, Any]) -> list[int]:
    """SIGKILL what a run left after its re-run (a finding, already recorded), by the exact pids found."""
    ended = []
    for p in left["processes"]:
        try:
            process = psutil.Process(p["pid"])
            if abs(process.create_time() - p["start"]) < 0.01:
                process.kill()
                ended.append(p["pid"])
        except psutil.Error:
            continue
    return ended


# --------------------------------------------------------------------------------------------------
# the four targets


@dataclass
class Target:
    name: str
    what: str                                             # the report's words for the run
    argv: Callable[[Path, Path], list[str]]               # (inputs folder, run folder) -> nas-restore arguments
    durable: tuple[str, ...]                              # globs of the records a re-run resumes from
    at_kill: Callable[[Path, float], dict[str, Any]]      # (run, kill time): where it stood, read right after
    after: Callable[[Path, Path, dict[str, Any]], dict[str, Any]]  # (reference, run, at_kill): same? redone?
    inputs: Callable[[Path], None]                        # write the command's config files


def write_yaml(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


# ---- (1) one-shot search


def search_at_kill(run: Path, killed_at: float) -> dict[str, Any]:
    epochs = logged_epochs(run / run_records.LOG)
    where = search_position(run) or "no checkpoint yet"
    return {"phase": f"{where}; {len(epochs)} epoch row(s) logged", "checkpoint": search_position(run) is not None,
            "epochs_logged": len(epochs)}


def search_after(reference: Path, run: Path, killed: dict[str, Any]) -> dict[str, Any]:
    genotypes = [read_json(d / run_records.GENOTYPE) or {} for d in (reference, run)]
    archs = [g.get("metadata", {}).get("nni_arch") for g in genotypes]
    same_genotype = archs[0] == archs[1] and genotypes[0].get("cells") == genotypes[1].get("cells")
    same_files = all((reference / n).read_bytes() == (run / n).read_bytes()
                     for n in (run_records.ALPHAS, run_records.DERIVED) if (run / n).exists())
    metrics = [pd.read_csv(d / run_records.METRICS).drop(columns=["seconds"]) for d in (reference, run)]
    same_metrics = metrics[0].equals(metrics[1])
    digests = [state_digest(d / run_records.SEARCH_CHECKPOINT) for d in (reference, run)]
    epochs = logged_epochs(run / run_records.LOG)
    log = (run / run_records.LOG).read_text()
    resumed = "resuming the search from" in log
    return {"same": same_genotype and same_files and same_metrics and digests[0] == digests[1] is not None,
            "same_detail": f"genotype {'=' if same_genotype else '≠'}, "
                           f"alphas+derived {'=' if same_files else '≠'}, "
                           f"metrics {'=' if same_metrics else '≠'}, weights {digests[1]} "
                           f"{'=' if digests[0] == digests[1] else '≠ ' + str(digests[0])}",
            "redone": redone(epochs), "redone_unit": "epoch",
            "resumed_from": "checkpoint" if resumed else ("start (no checkpoint)" if not killed.get("checkpoint")
                                                          else "START OVER despite a checkpoint")}


# ---- (2) --parallel multi-trial search


def trial_dirs(run: Path, experiment: str) -> dict[str, float]:
    """NNI's trial folders of one experiment (local service), with the time each trial was launched."""
    found = {}
    for folder in (run / run_records.NNI_DIR / experiment).glob("environments/*/trials/*"):
        stamps = [p.stat().st_mtime for p in [folder, *folder.iterdir()]]
        found[folder.name] = min(stamps)
    return found


def trial_checkpoints(run: Path, killed_at: float) -> dict[str, float]:
    """NNI trial id -> when its trial last saved a finished epoch (``trial_checkpoints/*/last.ckpt``), before
    the kill."""
    saved = {}
    for folder in (run / run_records.TRIAL_CHECKPOINTS_DIR).glob("*"):
        owner, ckpt = read_json(folder / multitrial.TRIAL_OWNER) or {}, folder / "last.ckpt"
        if owner.get("nni_trial") and ckpt.is_file() and ckpt.stat().st_mtime <= killed_at:
            saved[owner["nni_trial"]] = ckpt.stat().st_mtime
    return saved


def parallel_at_kill(run: Path, killed_at: float) -> dict[str, Any]:
    """The ledger (only the killed search writes it), the trials' rows written before the kill (a trial process
    outlives the kill and may still write its row), the trials launched and not finished then."""
    record = read_json(run / run_records.PROCESSES) or {}
    lines = [line for line in jsonl(run / run_records.LEDGER) if line.get("kind") == "trial"]
    files = sorted((run / run_records.TRIALS_DIR).glob("*.json"))
    rows = [read_json(p) or {} for p in files if p.stat().st_mtime <= killed_at]
    later = len(files) - len(rows)
    finished = {line.get("row", {}).get("nni_trial") for line in lines if line.get("row")} | \
        {row.get("nni_trial") for row in rows}
    launched = trial_dirs(run, record["experiment"]) if record.get("experiment") else {}
    in_flight = {name: start for name, start in launched.items() if name not in finished and start <= killed_at}
    saved = trial_checkpoints(run, killed_at)
    manager = "manager up" if record.get("manager") else "no NNI manager yet"
    return {"phase": f"{len(lines)} trial(s) in the ledger, {len(rows)} row(s), {len(in_flight)} in flight"
                     + (f" ({later} row(s) written after the kill by a trial still running)" if later else "")
                     + f"; {manager}",
            "ledger_trials": len(lines), "rows": len(rows), "rows_after_kill": later, "in_flight": in_flight,
            "in_flight_saved": {name: saved[name] for name in in_flight if name in saved},
            "ports": [int(p) for p in record.get("ports", [])], "experiment": record.get("experiment")}


def parallel_after(reference: Path, run: Path, killed: dict[str, Any]) -> dict[str, Any]:
    tables = [pd.read_csv(d / run_records.TRIALS) for d in (reference, run)]
    scores = [dict(zip(t["arch"].map(lambda a: arch_key(json.loads(a))), t["val_psnr"])) for t in tables]
    same_set = set(scores[0]) == set(scores[1])
    same_scores = same_set and all(scores[0][a] == scores[1][a] for a in scores[0])
    genotypes = [read_json(d / run_records.GENOTYPE) or {} for d in (reference, run)]
    meta = genotypes[1].get("metadata", {})
    same_genotype = genotypes[0].get("metadata", {}).get("nni_arch") == meta.get("nni_arch")
    rows = [arch_key(row["arch"]) for row in trial_rows(run)]
    lines = [line for line in jsonl(run / run_records.LEDGER) if line.get("kind") == "trial"]
    twice = redone(rows)
    return {"same": same_set and same_scores and same_genotype and twice == 0 and len(lines) == len(set(rows)),
            "same_detail": f"set of {len(scores[1])} trial archs {'=' if same_set else '≠'}, per-arch PSNR "
                           f"{'=' if same_scores else '≠'}, genotype {'=' if same_genotype else '≠'}; "
                           f"{len(lines)} ledger trials, {len(rows)} rows ({twice} arch trained twice)",
            "redone": twice, "redone_unit": "trial trained twice",
            "in_flight_lost": len(killed.get("in_flight", {})),
            "in_flight_kept": len(killed.get("in_flight_saved", {})),
            "epochs_resumed": sum(int(row.get("epochs_resumed") or 0) for row in trial_rows(run)),
            "resumed_from": f"ledger ({meta.get('resumed_trials')} answered, session {meta.get('sessions')})"}


def in_flight_seconds(killed: dict[str, Any], killed_at: float) -> float:
    """The work of the trials in flight that no checkpoint kept: from each one's last saved epoch (or its start)
    to the kill."""
    saved = killed.get("in_flight_saved", {})
    return round(sum(killed_at - max(start, saved.get(name, start))
                     for name, start in killed.get("in_flight", {}).items()), 1)


# ---- (3) retraining


def retrain_at_kill(run: Path, killed_at: float) -> dict[str, Any]:
    epoch = last_ckpt_epoch(run)
    versions = retrain_versions(run)
    done = len(versions[-1]) if versions else 0
    where = f"last.ckpt after epoch {epoch}" if epoch is not None else "no last.ckpt yet"
    if (run / "model.pt").exists():
        where += ", model.pt written"
    return {"phase": f"{where}; {done} epoch(s) logged", "checkpoint": epoch is not None}


def retrain_after(reference: Path, run: Path, killed: dict[str, Any]) -> dict[str, Any]:
    digests = [state_digest(d / "model.pt") for d in (reference, run)]
    metrics = [pd.read_csv(d / "metrics.csv") for d in (reference, run)]
    columns = ["epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "lr"]
    same_metrics = metrics[0][columns].equals(metrics[1][columns])
    versions = retrain_versions(run)
    return {"same": digests[0] == digests[1] is not None and same_metrics,
            "same_detail": f"model.pt {digests[1]} {'=' if digests[0] == digests[1] else '≠ ' + str(digests[0])}, "
                           f"per-epoch metrics {'=' if same_metrics else '≠'}",
            "redone": redone([e for v in versions for e in v]), "redone_unit": "epoch",
            "resumed_from": ("last.ckpt" if len(versions) > 1 and versions[-1][:1] != [0] else "start")
            + f" (calls' epochs {versions})"}


# ---- (4) compare


def unit_state(unit: Path) -> str:
    """A compare run's stage, in words."""
    if (unit / "done.json").exists():
        return "done"
    if (unit / "retrain.json").exists():
        return "evaluating"
    if (unit / "search.json").exists():
        epoch = last_ckpt_epoch(unit / "retrain")
        return "retraining, " + (f"last.ckpt after epoch {epoch}" if epoch is not None else "no last.ckpt")
    search = unit / "search"
    if (search / run_records.LEDGER).exists():
        trials = sum(1 for line in jsonl(search / run_records.LEDGER) if line.get("kind") == "trial")
        return f"searching, {trials} trial(s) in the ledger"
    if search.exists():
        return "searching, " + (search_position(search) or "no checkpoint")
    return "not started"


def compare_at_kill(run: Path, killed_at: float) -> dict[str, Any]:
    units = sorted((run / "runs").glob("*-seed*")) if (run / "runs").exists() else []
    states = {u.name: unit_state(u) for u in units}
    if not (run / "data" / "test.json").exists():
        phase = "writing the held-out clips"
    else:
        phase = "; ".join(f"{name}: {state}" for name, state in states.items()) or "before the first run"
    return {"phase": phase, "units": states, "killed_at": killed_at}


def compare_continued(run: Path, killed: dict[str, Any]) -> str:
    """How the re-run went on with each run that the kill had found started: skipped, continued, or started over."""
    parts = []
    for name, state in killed.get("units", {}).items():
        unit = run / "runs" / name
        if state == "done":
            again = (unit / "done.json").stat().st_mtime > killed.get("killed_at", float("inf"))
            parts.append(f"{name} RUN AGAIN although done" if again else f"{name} skipped (done)")
        elif state.startswith("searching") and "ckpt" in state:
            log = (unit / "search" / run_records.LOG).read_text()
            parts.append(f"{name} search from its checkpoint" if "resuming the search from" in log
                         else f"{name} search STARTED OVER")
        elif state.startswith("searching") and "ledger" in state:
            meta = (read_json(unit / "search" / run_records.GENOTYPE) or {}).get("metadata", {})
            parts.append(f"{name} search from its ledger ({meta.get('resumed_trials')} trial(s) answered)")
        elif state.startswith("retraining") and "last.ckpt after" in state:
            versions = retrain_versions(unit / "retrain")
            parts.append(f"{name} retraining from last.ckpt" if len(versions) > 1 and versions[-1][:1] != [0]
                         else f"{name} retraining STARTED OVER")
        elif state == "evaluating":
            parts.append(f"{name} evaluated again")
        else:
            parts.append(f"{name} {state.split(',')[0]} from the start of the stage (nothing saved)")
    return "; ".join(parts) or "the start (nothing saved)"


def compare_after(reference: Path, run: Path, killed: dict[str, Any]) -> dict[str, Any]:
    columns = ["strategy", "seed", "status", "genotype_id", "search_cost_epochs", "retrain_epochs", "retrain_val_psnr",
               "psnr", "ssim"]
    tables = [pd.read_csv(d / "results.csv")[columns].sort_values("strategy").reset_index(drop=True)
              for d in (reference, run)]
    same_table = tables[0].equals(tables[1])
    units = sorted(p.name for p in (reference / "runs").glob("*-seed*"))
    digests = {u: [state_digest(d / "runs" / u / "retrain" / "model.pt") for d in (reference, run)] for u in units}
    same_weights = all(a == b is not None for a, b in digests.values())
    epochs, trials, retrain = 0, 0, 0
    for unit in units:
        search = run / "runs" / unit / "search"
        epochs += redone(logged_epochs(search / run_records.LOG))
        trials += redone([arch_key(r["arch"]) for r in trial_rows(search)])
        retrain += redone([e for v in retrain_versions(run / "runs" / unit / "retrain") for e in v])
    return {"same": same_table and same_weights,
            "same_detail": f"results.csv (genotype, epochs, PSNR, SSIM) {'=' if same_table else '≠'}, "
                           f"model.pt of {len(units)} runs {'=' if same_weights else '≠'}",
            "redone": epochs + trials + retrain, "redone_unit": "epoch/trial",
            "redone_detail": f"search epochs {epochs}, trials {trials}, retrain epochs {retrain}",
            "resumed_from": compare_continued(run, killed)}


def make_targets() -> dict[str, Target]:
    def search_argv(inputs: Path, out: Path) -> list[str]:
        return ["search", "--config", str(inputs / "search.yaml"), "--out", str(out)]

    def parallel_argv(inputs: Path, out: Path) -> list[str]:
        return ["search", "--config", str(inputs / "parallel.yaml"), "--out", str(out)]

    def retrain_argv(inputs: Path, out: Path) -> list[str]:
        return ["retrain", RETRAIN_GENOTYPE, "--config", str(inputs / "retrain.yaml"), "--device", "cpu",
                "--no-progress", "--out", str(out)]

    def compare_argv(inputs: Path, out: Path) -> list[str]:
        return ["compare", "--config", str(inputs / "compare.yaml"), "--out", str(out)]

    return {
        "search": Target(
            "search", f"one-shot search: `nas-restore search --strategy darts`, TMICS at 4 channels, 3 frames, "
                      f"{SEARCH['epochs']} epochs of {SEARCH['data']['train_items']} 16x16 items",
            search_argv, (run_records.SEARCH_CHECKPOINT,), search_at_kill, search_after,
            lambda d: write_yaml(d / "search.yaml", SEARCH)),
        "parallel": Target(
            "parallel", f"multi-trial search `--strategy random --parallel 2`, {PARALLEL['max_trials']} trials of "
                        f"{PARALLEL['trial_epochs']} epochs of {PARALLEL['data']['train_items']} 32x32 items (TMICS "
                        "at 6 channels, 1 frame) on NNI's training-service engine",
            parallel_argv, (run_records.LEDGER, f"{run_records.TRIALS_DIR}/*.json"), parallel_at_kill, parallel_after,
            lambda d: write_yaml(d / "parallel.yaml", PARALLEL)),
        "retrain": Target(
            "retrain", f"`nas-restore retrain {RETRAIN_GENOTYPE}` (16 channels, 7 blocks, 3 frames), "
                       f"{RETRAIN['train']['epochs']} epochs of {RETRAIN['data']['train_items']} 48x48 clips",
            retrain_argv, ("checkpoints/last.ckpt",), retrain_at_kill, retrain_after,
            lambda d: write_yaml(d / "retrain.yaml", RETRAIN)),
        "compare": Target(
            "compare", "`nas-restore compare --strategies darts,random --seeds 1 --budget 4` (TMICS at 6 channels, "
                       "1 frame), each genotype retrained 4 epochs and scored on one held-out clip",
            compare_argv, ("data/test.json", "runs/*/*.json", "runs/*/search/search.ckpt", "runs/*/search/ledger.jsonl",
                           "runs/*/search/trials/*.json", "runs/*/retrain/checkpoints/last.ckpt"),
            compare_at_kill, compare_after, lambda d: write_yaml(d / "compare.yaml", COMPARE)),
    }


# --------------------------------------------------------------------------------------------------
# running, killing, re-running


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "nas_restore.cli", *argv]


def environment(home: Path, tag: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NAS_RESTORE_THREADS": "1",
            "PYTHONHASHSEED": "0", "HOME": str(home), TAG: tag}


def run_to_end(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    started = time.time()
    with log.open("a") as handle:
        try:
            done = subprocess.run(command(argv), env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, round(time.time() - started, 2)


def last_record(out: Path, patterns: tuple[str, ...], since: float, until: float) -> float | None:
    """The time of the last durable record the killed command wrote (between its start and the kill)."""
    stamps = [p.stat().st_mtime for pattern in patterns for p in out.glob(pattern) if p.is_file()]
    stamps = [s for s in stamps if since - 0.5 <= s <= until]
    return max(stamps) if stamps else None


def kill_point(target: Target, inputs: Path, out: Path, home: Path, delay: float, logs: Path,
               timeout: float) -> dict[str, Any]:
    """Start the command, SIGKILL it ``delay`` seconds later, look, re-run it to the end, look again."""
    tag = f"{target.name}-{out.name}-{os.getpid()}"
    env = environment(home, tag)
    argv = target.argv(inputs, out)
    log = logs / f"{out.name}.log"
    started = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen(command(argv), env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=delay)  # it ended before the kill
            killed_at = None
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            killed_at = time.time()
            code = process.wait()
    row: dict[str, Any] = {"target": target.name, "folder": str(out), "delay_s": round(delay, 2),
                           "killed": killed_at is not None and code == -signal.SIGKILL, "first_exit": code}
    if row["killed"]:
        at = target.at_kill(out, killed_at)
        record = last_record(out, target.durable, started, killed_at)
        row.update(at_kill=at, phase=at["phase"], started=started, killed_at=killed_at,
                   lost_s=round(killed_at - (record if record is not None else started), 2),
                   lost_since="last record" if record is not None else "start")
        if "in_flight" in at:
            row["in_flight_s"] = in_flight_seconds(at, killed_at)
        row["left_after_kill"] = leftovers(out, tag, home, at.get("ports", []))
    else:  # the command ended first: nothing was tested (the caller draws another moment)
        row.update(phase=f"ended (exit {code}) before the kill", finished=code == 0, reruns=[],
                   left_after_rerun=leftovers(out, tag, home, []))
        return row
    reruns = []
    while True:
        code, seconds = run_to_end(argv, env, log, timeout)
        reruns.append({"exit": code, "seconds": seconds})
        if code == 0 or len(reruns) >= MAX_RERUNS:
            break
    row["reruns"] = reruns
    row["finished"] = code == 0
    row["left_after_rerun"] = leftovers(out, tag, home, at.get("ports", []))
    if row["left_after_rerun"]["processes"]:
        row["ended_by_benchmark"] = end_leftovers(row["left_after_rerun"])
    return row


def run_target(target: Target, work: Path, home: Path, points: int, seed: int, timeout: float) -> dict[str, Any]:
    inputs, logs = work / "inputs", work / "logs"
    inputs.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    target.inputs(inputs)
    reference = work / "reference"
    tag = f"{target.name}-reference-{os.getpid()}"
    print(f"[{target.name}] reference run ...", flush=True)
    code, seconds = run_to_end(target.argv(inputs, reference), environment(home, tag), logs / "reference.log", timeout)
    if code != 0:
        raise SystemExit(f"the reference {target.name} run failed (exit {code}): see {logs / 'reference.log'}")
    result: dict[str, Any] = {"target": target.name, "what": target.what,
                              "command": "nas-restore " + shlex.join(target.argv(Path("INPUTS"), Path("RUN"))),
                              "reference_seconds": seconds,
                              "reference_left": leftovers(reference, tag, home, []), "runs": []}
    print(f"[{target.name}] reference: {seconds:.1f} s, left {left_text(result['reference_left'])}", flush=True)
    draw = random.Random(f"{seed}:{target.name}")
    for point in range(points):
        missed: list[float] = []
        while True:
            delay = draw.uniform(0.0, seconds)
            row = kill_point(target, inputs, work / f"run{point}", home, delay, logs, timeout)
            if row["killed"] or len(missed) >= MAX_REDRAWS:
                break
            missed.append(round(delay, 2))  # the run was faster than the reference: that moment tested nothing
            print(f"[{target.name}] point {point}: the run ended before the kill at {delay:.1f} s: drawn again",
                  flush=True)
            shutil.rmtree(work / f"run{point}", ignore_errors=True)
        row["missed_kills_s"] = missed
        if row["finished"]:
            row.update(target.after(reference, work / f"run{point}", row.get("at_kill", {})))
        result["runs"].append(row)
        print(f"[{target.name}] point {point}: kill at {delay:.1f} s ({row['phase']}); re-run exit "
              f"{[r['exit'] for r in row['reruns']]} in {sum(r['seconds'] for r in row['reruns']):.1f} s; "
              f"same: {row.get('same')} "
              f"({row.get('same_detail', '')}); redone {row.get('redone')}; lost {row.get('lost_s')} s; left after "
              f"kill: {left_text(row.get('left_after_kill'))}; after re-run: {left_text(row['left_after_rerun'])}",
              flush=True)
    return result


# --------------------------------------------------------------------------------------------------
# the report


def summary_row(result: dict[str, Any]) -> list[Any]:
    runs = result["runs"]
    killed = [r for r in runs if r["killed"]]
    finished = [r for r in killed if r["finished"]]
    same = [r for r in finished if r.get("same")]
    redone_max = max((r.get("redone", 0) for r in finished), default=0)
    lost = [r["lost_s"] for r in killed]
    flight_s = [r["in_flight_s"] for r in killed if r.get("in_flight_s") is not None]
    after_kill = sum(1 for r in killed if r["left_after_kill"]["processes"] or r["left_after_kill"]["ports"])
    procs = sum(len(r["left_after_rerun"]["processes"]) for r in runs)
    ports = sum(len(r["left_after_rerun"]["ports"]) for r in runs)
    manifest = sum(len(r["left_after_rerun"]["manifest"]) for r in runs)
    in_flight = [r.get("in_flight_lost") for r in finished if r.get("in_flight_lost") is not None]
    return [result["target"], f"{result['reference_seconds']:.1f}", f"{len(killed)} of {len(runs)}",
            f"{len(finished)} of {len(killed)}", f"{len(same)} of {len(finished)}",
            f"{redone_max} {finished[0].get('redone_unit', '') if finished else ''}".strip()
            + (f"; in flight at kill: max {max(in_flight)}" if in_flight else ""),
            (f"{max(lost):.1f}" if lost else "–") + (f"; trials in flight {max(flight_s):.1f}" if flight_s else ""),
            f"{after_kill} of {len(killed)}", procs, ports, manifest]


def run_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for point, r in enumerate(result["runs"]):
        lost = f"{r['lost_s']:.1f} (since {r['lost_since']})" if r["killed"] else "–"
        if r.get("in_flight_s") is not None:
            lost += f"; in-flight trials {r['in_flight_s']:.1f}"
        redone = r.get("redone", "–")
        if r.get("redone_detail"):
            redone = f"{redone} ({r['redone_detail']})"
        if r.get("in_flight_lost") is not None:
            redone = (f"{redone}; {r['in_flight_lost']} in flight restarted ({r.get('in_flight_kept', 0)} from a "
                      f"checkpoint, {r.get('epochs_resumed', 0)} epoch(s) taken from checkpoints)")
        ended = f" (ended by the benchmark: {r['ended_by_benchmark']})" if r.get("ended_by_benchmark") else ""
        rows.append([result["target"], point, f"{r['delay_s']:.1f}", r["phase"].replace("|", "/"),
                     " ".join(str(x["exit"]) for x in r["reruns"]), r.get("resumed_from", "–"),
                     ("yes" if r.get("same") else "**no**") + f": {r.get('same_detail', '')}", redone, lost,
                     left_text(r.get("left_after_kill")), left_text(r["left_after_rerun"]) + ended])
    return rows


def findings(results: list[dict[str, Any]]) -> list[str]:
    """What the figures say against the issue's targets, computed (not written by hand)."""
    lines = []
    for result in results:
        name, runs = result["target"], result["runs"]
        killed = [r for r in runs if r["killed"]]
        for point, r in enumerate(runs):
            where = f"{name} point {point} (kill at {r['delay_s']:.1f} s, {r['phase']})"
            if r["killed"] and not r["finished"]:
                lines.append(f"- **{where}: the re-run did not finish** (exits {[x['exit'] for x in r['reruns']]}).")
            elif r["finished"] and not r.get("same"):
                lines.append(f"- **{where}: the result differs from the reference**: {r.get('same_detail')}.")
            if r.get("redone", 0) > 1:
                lines.append(f"- {where}: work done twice: {r.get('redone')} {r.get('redone_unit')} (target: at most "
                             "one).")
            if r.get("in_flight_lost", 0) > 0:
                epoch_s = r.get("in_flight_s", 0)
                lines.append(f"- {where}: {r['in_flight_lost']} trial(s) were in flight at the kill; "
                             f"{r.get('in_flight_kept', 0)} had saved a finished epoch, and the re-run took "
                             f"{r.get('epochs_resumed', 0)} epoch(s) from trial checkpoints instead of training them "
                             f"again; {epoch_s:.1f} s of trial work no checkpoint held were lost (from each one's "
                             "last saved epoch, or its launch, to the kill; target: at most one trial).")
            left = r["left_after_rerun"]
            if left["processes"] or left["ports"] or left["manifest"]:
                lines.append(f"- **{where}: left after the re-run**: {left_text(left)}; processes "
                             f"{[(p['pid'], p['command'][:60]) for p in left['processes']]}, manifest entries "
                             f"{left.get('manifest_entries') or left['manifest']}.")
        if not killed:
            lines.append(f"- {name}: no kill landed before the run ended: nothing was tested.")
        stale = [r for r in runs if r["left_after_rerun"]["manifest"]]
        one_shot = all(entry["one_shot"] for r in stale for entry in r["left_after_rerun"]["manifest_entries"].values())
        if stale and one_shot:
            lines.append(f"- {name}: {len(stale)} of {len(killed)} killed runs left an entry of the killed one-shot "
                         "search in NNI's manifest that the re-run did not remove (status RUNNING, no pid, its "
                         "`logDir` the run's `nni/` folder): `nas_restore.nni_layer.runner.run_oneshot` removes its "
                         "own experiment's entry in a `finally`, which SIGKILL skips, and the re-run starts and "
                         "removes a new experiment only. No process or port is involved (a one-shot search runs "
                         "in-process, without NNI's manager).")
        ref = result["reference_left"]
        if ref["processes"] or ref["ports"] or ref["manifest"]:
            lines.append(f"- **{name}: the uninterrupted reference left {left_text(ref)}**.")
    return lines or ["- every kill resumed to the reference's result, nothing was left behind, and no epoch or trial "
                     "was done twice beyond the targets."]


def report(results: list[dict[str, Any]], regenerate: str, load_start: list[float], load_end: list[float],
           info: dict[str, Any], seconds: float, points: int, seed: int) -> list[str]:
    header = ["target", "reference s", "kills landed", "re-run exit 0", "same result", "work done twice (max)",
              "lost s (max)", "processes or ports right after the kill", "processes after re-run", "ports after re-run",
              "manifest entries after re-run"]
    detail = ["target", "point", "kill at s", "where the killed run stood", "re-run exit", "resumed from",
              "same as reference", "work done twice", "seconds lost", "left after kill", "left after re-run"]
    lines = ["# kill -9 and resume: a search, a --parallel search, a retraining, a compare", "",
             f"Regenerate: `{regenerate}`", "",
             f"Machine: {machine_line(info)}", "",
             f"Load average (1/5/15 min) at the start {' / '.join(f'{x:.2f}' for x in load_start)}, at the end "
             f"{' / '.join(f'{x:.2f}' for x in load_end)}; the whole benchmark took {seconds / 60:.1f} min "
             "(two studies and other work shared the 2 cores: seconds are wall-clock on a loaded machine).", "",
             "## Protocol", "",
             "- targets (tiny built-in synthetic rain; every command with one thread, `PYTHONHASHSEED=0`, its own "
             "`HOME` so that NNI's manifest is the benchmark's):"]
    lines += [f"  - **{r['target']}**: {r['what']}; `{r['command']}`" for r in results]
    lines += [f"- per target: one uninterrupted reference run, then {points} run(s), each SIGKILLed (`kill -9` of the "
              "command's process, nothing else) at a moment drawn uniformly within the reference's duration "
              f"(`random.Random(\"{seed}:TARGET\")`), then the same command again until it exits 0 (never killed "
              "again). A kill can land before the first checkpoint (then the re-run starts from the beginning: "
              "nothing was saved, and that is no loss of saved work). A moment after the run had already ended (it "
              f"ran faster than the reference) tests nothing: it is drawn again, at most {MAX_REDRAWS} times "
              "(listed in the JSON as `missed_kills_s`).",
              "- *where the killed run stood*: the run folder's records right after the kill (the search checkpoint's "
              "position and the epoch rows of `search.log`; the ledger, the trials' rows and NNI's trial folders; "
              "`last.ckpt` and the CSV log; a compare's per-run stage records).",
              "- *seconds lost*: from the killed process's last durable record (a checkpoint, a ledger line or trial "
              "row, a compare stage record) to the kill, or from its start when it had written none; for `--parallel`, "
              "also the summed seconds of the trials in flight at the kill that no checkpoint kept: from each one's "
              "last saved epoch (`trial_checkpoints/*/last.ckpt`, paired by the NNI trial id in its `trial.json`) or "
              "its launch to the kill (the re-run stops them, and trains what is missing from their checkpoints).",
              "- *work done twice*: epoch rows that two processes logged for the same epoch (`search.log`, the "
              "retraining's `logs/version_*/metrics.csv`), trials whose architecture was trained twice (two rows in "
              "`trials/`). With `--parallel`, the trials in flight at the kill are restarted by the re-run (counted "
              "apart).",
              "- *same as reference*: search: the genotype, `alphas.csv` and `derived.jsonl` byte for byte, "
              "`metrics.csv` but its seconds, and the supernet and architecture weights (sha256 of `search.ckpt`'s "
              "tensors); `--parallel`: the order in which trials end depends on timing, so the *set* of trained "
              "architectures, each one's PSNR, the genotype, and every architecture trained once (rows and ledger); "
              "retrain: `model.pt`'s tensors and every epoch's metrics; compare: `results.csv` (genotype, epochs, "
              "PSNR, SSIM per strategy) and each run's `model.pt`.",
              "- *left*: processes with the run's tag in their environment (inherited by NNI's node manager and "
              "trials), naming the run's NNI experiments (`NNI_EXP_ID`, `--experiment-id`) or the run folder; their "
              "listening sockets and the recorded ports (`processes.json`) still open on 127.0.0.1; the run's "
              "experiments in `$HOME/nni-experiments/.experiment`. Right after the kill, and after the re-run.", "",
              "## Summary against issue 13's targets", "",
              "Targets: 5 of 5 resume; at most one epoch or one trial of work lost; the same final genotype where the "
              "run is deterministic; no orphaned process or listening port left.", "",
              markdown_table(header, [summary_row(r) for r in results]), "",
              "## Findings", "", *findings(results), "",
              "## Every run", "",
              markdown_table(detail, [row for r in results for row in run_rows(r)]), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--points", type=int, default=5, help="killed runs per target")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--out-dir", default=None, help="where the runs go (default: a temporary folder, removed at "
                                                        "the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the default temporary folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a command may run")
    parser.add_argument("--report", default="reports/kill_resume_cpu.md")
    parser.add_argument("--json", default=None, help="the figures as JSON (default: the report's path with .json)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names or args.points < 1:
        parser.error(f"--targets takes {', '.join(TARGETS)} (got {unknown or names}); --points at least 1")
    temporary = args.out_dir is None
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="kill_resume-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    home.mkdir(exist_ok=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    began = time.time()
    targets = make_targets()
    results = []
    try:
        for name in names:
            work = out / name
            if work.exists():
                shutil.rmtree(work)  # every target starts from empty folders
            results.append(run_target(targets[name], work, home, args.points, args.seed, args.timeout))
    finally:
        if temporary and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    seconds = time.time() - began
    load_end = [round(x, 2) for x in os.getloadavg()]
    info = machine_info("cpu")
    regenerate = ("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NAS_RESTORE_THREADS=1 nice -n 10 "
                  + shlex.join(["python", "benchmarks/kill_resume.py", *(sys.argv[1:] if argv is None else argv)]))
    path = write_report(args.report, report(results, regenerate, load_start, load_end, info, seconds, args.points,
                                            args.seed))
    json_path = Path(args.json) if args.json else path.with_suffix(".json")
    json_path.write_text(json.dumps({"regenerate": regenerate, "machine": info, "load_start": load_start,
                                     "load_end": load_end, "seconds": round(seconds, 1), "seed": args.seed,
                                     "points": args.points, "out_dir": str(out) if not temporary or args.keep else None,
                                     "settings": {"search": SEARCH, "parallel": PARALLEL, "retrain": RETRAIN,
                                                  "retrain_genotype": RETRAIN_GENOTYPE, "compare": COMPARE},
                                     "results": results}, indent=1, default=str))
    header = ["target", "ref s", "killed", "exit 0", "same", "done twice", "lost s", "left after kill", "procs",
              "ports", "manifest"]
    print("\n" + markdown_table(header, [summary_row(r) for r in results]))
    print(f"\nwrote {path} and {json_path} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
