"""What `compare`, `rank` and `continual` share: a study folder that resumes, and the report's common parts.

A study is a folder of units of work (a compare run, a rank entry, a continual stage). Each finished
unit leaves a small JSON record written atomically (``done.json``; a failed one ``failed.json`` and
``error.log``), so a study killed at any moment leaves either a whole record or none, and a re-run
skips the finished units and retries the failed ones. Inside a unit, a retraining continues from its
``last.ckpt`` (and a continual stage from its ``stage.ckpt``), so an interrupted unit loses at most an
epoch (some steps), and its record gives the whole run's epochs and seconds (:func:`retrain_totals`).
A unit being worked on holds ``claim.json`` (pid, host, process start), so a second process started on the
same folder takes the next free unit instead of the same one: on a 2-core CPU, two one-thread workers finish
small retrainings sooner than one two-thread worker. A claim whose process has ended is taken over.
The settings a study was made with are kept
beside its units, and a re-run with settings that would make the old units incomparable is refused,
naming the fields that changed.

Also here: the held-out synthetic test clips (written once, from their own seed), and the summary
sections every report ends with (protocol, machine, regenerate command).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nas_restore import config as cfg
from nas_restore.data.synthetic import write_synthetic_folder
from nas_restore.evaluation import evaluate_folder
from nas_restore.threads import process_alive, process_started

DONE = "done.json"
FAILED = "failed.json"
CLAIM = "claim.json"
HELD = "running"          # the status of a unit another live process is working on
ERROR_LOG = "error.log"
TEST_DIR = Path("data") / "test"
TEST_RECORD = Path("data") / "test.json"


# --------------------------------------------------------------------------------------------------
# records


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename (never a half-written record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any | None:
    """The record at ``path``, or None when there is none (or it cannot be read: the stage is redone)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def record_outcome(folder: Path, work: Callable[[], dict[str, Any]], failed_row: dict[str, Any],
                   describe: Callable[[dict[str, Any]], str], say: Callable[[str], None],
                   failed_note: str = "") -> dict[str, Any]:
    """Run one unit of a study and record how it ended in ``folder``.

    Success: ``done.json`` holds the row (a re-run skips the unit). Failure: ``failed.json`` holds
    ``failed_row`` plus the error, ``error.log`` the traceback, and the caller goes on with the others.
    """
    started = time.perf_counter()
    try:
        row = work()
    except Exception as err:  # noqa: BLE001  (one failed unit must not stop the study)
        message = f"{type(err).__name__}: {err}"
        (folder / ERROR_LOG).write_text(traceback.format_exc())
        row = {**failed_row, "error": message}
        write_json(folder / FAILED, row)
        say(f"      failed ({message}); details in {folder / ERROR_LOG}{failed_note}")
        return row
    write_json(folder / DONE, row)
    (folder / FAILED).unlink(missing_ok=True)
    say(f"      {describe(row)} ({time.perf_counter() - started:.0f} s)")
    return row


def run_unit(folder: Path, heading: str, announce: str, work: Callable[[], dict[str, Any]],
             failed_row: dict[str, Any], describe: Callable[[dict[str, Any]], str], say: Callable[[str], None],
             failed_note: str = "", start: Callable[[], None] | None = None) -> tuple[dict[str, Any], bool]:
    """One unit of a study, resumed: its ``done.json`` row when it finished earlier (and ``False``), else
    the row :func:`record_outcome` records after running ``work`` (and ``True``; failed units are retried).

    ``heading`` names the unit in progress lines (``[k/n] label``), ``announce`` is said before it runs;
    ``start`` runs once the unit's folder exists, before the work (e.g. to save what the unit is of).
    """
    done = read_json(folder / DONE)
    if done is not None:
        say(f"{heading}: finished earlier, skipped")
        return done, False
    folder.mkdir(parents=True, exist_ok=True)
    holder = claim_unit(folder)
    if holder is not None:
        where = f"process {holder.get('pid')} on {holder.get('host')}"
        say(f"{heading}: in progress in {where}, skipped")
        return {**failed_row, "status": HELD, "error": f"in progress in {where}"}, False
    try:
        done = read_json(folder / DONE)  # finished by another process between the first look and the claim
        if done is not None:
            say(f"{heading}: finished earlier, skipped")
            return done, False
        if start is not None:
            start()
        say(announce)
        return record_outcome(folder, work, failed_row, describe, say, failed_note), True
    finally:
        release_unit(folder)


def _claim_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_started(os.getpid())}


def _is_mine(holder: Any) -> bool:
    return isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _live(holder: Any) -> bool:
    """Whether a claim record belongs to a process that may still be working (other hosts: assumed so)."""
    if not isinstance(holder, dict):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    return process_alive(int(holder.get("pid") or 0), holder.get("started"))


def claim_unit(folder: Path) -> dict[str, Any] | None:
    """Claim ``folder`` for this process (``claim.json``, created exclusively); None when it is ours now,
    else the claim of the live process that holds it. A claim of an ended process on this host (killed,
    say) is taken over; a claim from another host is honoured: delete ``claim.json`` if that run is gone."""
    path = folder / CLAIM
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = read_json(path)
            if _is_mine(holder):
                return None
            if _live(holder):
                return holder
            path.unlink(missing_ok=True)  # stale: its process ended, or torn while its writer was killed
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(_claim_record()) + "\n")
        return None
    return read_json(path) or {"pid": None, "host": "unknown"}


def unit_held(folder: Path) -> bool:
    """Whether another live process is working on the unit in ``folder`` now (claimed and not finished)."""
    if read_json(folder / DONE) is not None:
        return False
    holder = read_json(folder / CLAIM)
    return not _is_mine(holder) and _live(holder)


def release_unit(folder: Path) -> None:
    """Drop this process's claim on ``folder`` (left alone when another process holds it)."""
    path = folder / CLAIM
    if _is_mine(read_json(path)):
        path.unlink(missing_ok=True)


def retrain_totals(metrics_csv: Path, fallback_epochs: int = 0, fallback_seconds: float = 0.0) -> dict[str, float]:
    """The whole retraining's ``epochs`` and ``seconds``, every call together, from its ``metrics.csv``.

    A unit killed mid-retraining and run again continues from ``last.ckpt`` (:func:`nas_restore.training.retrain`):
    that second call trains only the epochs left, but ``metrics.csv`` has a row per epoch of the whole run, each
    with its own seconds (training and validation), so the record of the unit counts the run, not its last part.
    The fallbacks (the call's own figures) stand in only when there is no readable ``metrics.csv``.
    """
    try:
        with Path(metrics_csv).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {"epochs": int(fallback_epochs), "seconds": float(fallback_seconds)}
    epochs = {row["epoch"] for row in rows if row.get("epoch") not in (None, "")}
    seconds = 0.0
    for row in rows:
        try:
            value = float(row.get("seconds") or "nan")
        except ValueError:
            continue
        if math.isfinite(value):
            seconds += value
    if not epochs:
        return {"epochs": int(fallback_epochs), "seconds": float(fallback_seconds)}
    return {"epochs": len(epochs), "seconds": seconds if seconds > 0 else float(fallback_seconds)}


def check_single_process(train: Any, study: str) -> None:
    """A study retrains in one process: DDP (``devices``/``num_nodes`` > 1) starts its other processes by running
    the command line again, which for a study would run its searches and evaluations once per process."""
    processes = int(getattr(train, "devices", 1)) * int(getattr(train, "num_nodes", 1))
    if processes > 1:
        raise ValueError(f"{study} retrains every genotype in one process: retrain.train.devices and num_nodes must "
                         f"be 1 (got {train.devices} and {train.num_nodes}); retrain a single genotype on several "
                         "devices with `nas-restore retrain GENOTYPE --devices N`")


# --------------------------------------------------------------------------------------------------
# the settings a study was made with


# changed_fields and refuse_changed_settings live in the foundation (searches resume and check them too)
from nas_restore.config import changed_fields, refuse_changed_settings  # noqa: E402,F401


# --------------------------------------------------------------------------------------------------
# the held-out test set


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


def write_test_clips(test: HeldOutConfig, folder: Path) -> Path:
    """The held-out synthetic clips of ``test`` written into ``folder`` (the folder writer, salted seeds)."""
    return write_synthetic_folder(folder, kind="video", count=test.clips, frames_per_clip=test.frames_per_clip,
                                  size=test.size, rain_types=list(test.rain_types), seed=test.seed)


def held_out_test(test: HeldOutConfig, out: Path) -> tuple[Path, dict[str, Any]]:
    """Write the test clips once (``data/test``) and score the rainy input on them; reused on resume.

    The record (``data/test.json``) holds the clips' settings and the input's ``psnr_input``,
    ``ssim_input``, ``count`` and ``protocol``."""
    folder = out / TEST_DIR
    record_path = out / TEST_RECORD
    wanted = cfg.to_dict(test)
    record = read_json(record_path)
    if record is not None and record.get("config") == wanted and folder.is_dir():
        return folder, record
    write_test_clips(test, folder)
    scores = evaluate_folder(folder, None, progress=False).summary
    record = {"config": wanted, "psnr_input": scores["psnr"], "ssim_input": scores["ssim"],
              "count": scores["count"], "protocol": scores["protocol"]}
    write_json(record_path, record)
    return folder, record


# --------------------------------------------------------------------------------------------------
# the summary sections every report ends with


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Where figures were taken: timings mean nothing without the machine and its load."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover  (not on Windows)
        load = []
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "load_average": load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in info.get("load_average", [])) or "n/a"
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['cpu']} ({info['cpu_count']} logical CPUs), torch {info['torch']} with "
            f"{info['torch_threads']} thread(s), Python {info['python']}, device {info['device']}{gpu}; "
            f"load average {load} (1/5/15 min) at the time of writing, {info['date']}")


def protocol_section(items: Sequence[str]) -> list[str]:
    """``## Protocol`` with one bullet per item (each item's text without the ``- ``)."""
    return ["## Protocol", "", *(f"- {item}" for item in items), ""]


def machine_section(info: dict[str, Any]) -> list[str]:
    return ["## Machine", "", machine_line(info), ""]


def regenerate_section(command: str | None, fallback: str, resume_note: str) -> list[str]:
    """``## Regenerate``: the command as typed (``fallback`` when run from Python), then how re-running resumes."""
    return ["## Regenerate", "", f"    {command or fallback}", "", resume_note, ""]


__all__ = ["DONE", "FAILED", "CLAIM", "HELD", "ERROR_LOG", "claim_unit", "release_unit", "unit_held", "write_json",
           "read_json", "record_outcome", "run_unit", "retrain_totals",
           "check_single_process", "changed_fields", "refuse_changed_settings", "HeldOutConfig", "write_test_clips",
           "held_out_test", "cpu_model", "machine_info", "machine_line", "protocol_section", "machine_section",
           "regenerate_section"]
