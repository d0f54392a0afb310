"""How many threads torch may use: the cores this process may run on, shared by the jobs running at once.

Two torch jobs with 2 threads each on 2 cores run 10-60x slower than one alone (the threads spin
against each other), so a job must not take every core when another is running. Every command that
computes registers itself for its lifetime (:class:`JobSlot`: a pid file in a per-user folder), and
sets torch's intra-op threads to ``cores // running jobs`` (less one per DataLoader worker process).
Training loops re-check at every epoch (:func:`share_threads`), so a job started second slows the first
one down to its share, and the first gets its cores back when the second ends.

``NAS_RESTORE_THREADS=N`` in the environment fixes the count instead (benchmarks use it).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import psutil
import torch

log = logging.getLogger(__name__)

THREADS_ENV = "NAS_RESTORE_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_job(jobs: int = 1, workers: int = 0) -> int:
    """Threads for one of ``jobs`` jobs sharing the cores, leaving one core per DataLoader worker."""
    fixed = os.environ.get(THREADS_ENV)
    if fixed:
        try:
            return max(1, int(fixed))
        except ValueError:
            log.warning("%s=%r is not a whole number: ignored", THREADS_ENV, fixed)
    return max(1, available_cores() // max(1, int(jobs)) - max(0, int(workers)))


def jobs_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"nas-restore-jobs-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def process_started(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), to tell it from a later process given the same pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs on this machine: not ended, not a zombie and, given ``started``, not a reused pid."""
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. another user's process: alive, as far as we can tell
        return True


def running_jobs(folder: Path | None = None) -> int:
    """How many registered jobs are alive (stale pid files of killed jobs are removed)."""
    folder = folder or jobs_folder()
    alive = 0
    for path in folder.glob("*.pid"):
        if not path.stem.isdigit() or not process_alive(int(path.stem)):
            path.unlink(missing_ok=True)
            continue
        alive += 1
    return alive


def share_threads(workers: int = 0, folder: Path | None = None) -> int:
    """Set torch's threads to this job's share of the cores now; returns the count."""
    count = threads_per_job(max(1, running_jobs(folder)), workers)
    if torch.get_num_threads() != count:
        log.info("torch threads: %d -> %d (%d core(s), %d job(s) running)", torch.get_num_threads(), count,
                 available_cores(), running_jobs(folder))
        torch.set_num_threads(count)
    return count


class JobSlot:
    """This process counted among the running jobs while the ``with`` block runs; threads set on entry.

    Re-entrant: the CLI holds one for the whole command and the training loops hold their own, so any
    caller of the library (a benchmark script, a notebook) is counted too; the pid file goes when the
    outermost block of the process ends.
    """

    _depth: dict[Path, int] = {}

    def __init__(self, folder: Path | None = None):
        self.folder = folder or jobs_folder()
        self.path = self.folder / f"{os.getpid()}.pid"

    def __enter__(self) -> "JobSlot":
        depth = JobSlot._depth.get(self.path, 0)
        JobSlot._depth[self.path] = depth + 1
        if depth == 0:
            self.path.write_text("")
        share_threads(folder=self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        depth = JobSlot._depth.get(self.path, 1) - 1
        if depth <= 0:
            JobSlot._depth.pop(self.path, None)
            self.path.unlink(missing_ok=True)
        else:
            JobSlot._depth[self.path] = depth


__all__ = ["available_cores", "threads_per_job", "process_alive", "process_started", "running_jobs", "share_threads", "JobSlot", "THREADS_ENV"]
