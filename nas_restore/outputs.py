"""Where a command may write: run folders of one kind, one command per folder, never among the inputs.

A search and a retraining both write ``config.yaml``, ``genotype.json`` and ``metrics.csv``, so a
retraining pointed at a search's run folder (or the other way round) would silently replace the other
run's files; two retrainings into one folder at once would interleave their checkpoints; and an output
folder inside the data's ``input/`` or ``target/`` folder writes over the very images being scored.
Each command that writes a run folder therefore

* claims it (:func:`claim_run_folder`, or ``RunLock(path, kind=...)``, which claims once it holds the lock):
  refused when it holds the other kind of run, else created with a small marker ``RUN/run.json`` (``{"kind": ..., "created": ..., "command": ...}``) that says which kind
  it is (folders written before the marker are recognised by their files, :func:`run_folder_kind`);
* holds it while it runs (:class:`RunLock`: ``RUN/.lock`` with the pid, host and command), so that a
  second command on a busy folder stops at once; a lock left by a killed command is taken over;

and the commands that write next to the user's data check :func:`check_not_inside` first.

Foundation layer: it imports :mod:`nas_restore.errors`, the search's file names (:mod:`nas_restore.run_records`)
and, for whether a lock's process still runs, :mod:`nas_restore.threads`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from nas_restore.errors import UserError
from nas_restore.run_records import SEARCH_ONLY_DIRS, SEARCH_ONLY_FILES
from nas_restore.threads import process_alive, process_started

log = logging.getLogger(__name__)

MARKER = "run.json"
LOCK = ".lock"
KINDS = ("search", "retrain")

# Files that only one kind writes (a search's: nas_restore.run_records; a retraining's: training.retrain). Shared
# files (config.yaml, genotype.json, metrics.csv) decide nothing alone.
_RETRAIN_FILES = ("model.pt",)
_RETRAIN_DIRS = ("checkpoints",)
# The top-level keys of each kind's config.yaml (SearchConfig; RetrainRunConfig), for a folder with no other sign.
_SEARCH_KEYS = frozenset({"strategy", "resolved_space", "space_settings", "strategy_options"})
_RETRAIN_KEYS = frozenset({"train"})
# Environment variables that number the processes of a multi-process (DDP, torchrun, SLURM) run.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
_FOLDER_WORDS = {"search": "search run folder", "retrain": "retraining folder"}


def command_line() -> str:
    """The command that is running, for the marker and the lock (``nas-restore retrain ...``)."""
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name or argv[0]
    return shlex.join(argv)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """``RUN/run.json`` as a dict, or None when there is none (an unreadable one is logged and ignored)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s): telling the folder's kind from its files instead", marker, err)
        return None
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        log.warning("%s does not name a kind (%s): telling the folder's kind from its files instead", marker,
                    ", ".join(KINDS))
        return None
    return data


def _config_keys(path: Path) -> set[str]:
    """The top-level keys of a YAML config (none for one that cannot be read)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _evidence(path: Path) -> dict[str, list[str]]:
    """Which of each kind's own files ``path`` holds (folders with a trailing ``/``)."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, files, dirs in (("search", SEARCH_ONLY_FILES, SEARCH_ONLY_DIRS),
                              ("retrain", _RETRAIN_FILES, _RETRAIN_DIRS)):
        found[kind] += [name for name in files if (path / name).is_file()]
        found[kind] += [name + "/" for name in dirs if (path / name).is_dir()]
    if not any(found.values()) and (path / "genotype.json").is_file() and (path / "config.yaml").is_file():
        keys = _config_keys(path / "config.yaml")
        if keys & _RETRAIN_KEYS:
            found["retrain"] += ["genotype.json", "config.yaml (with train: settings)"]
        elif keys & _SEARCH_KEYS or not (path / "logs").is_dir():
            found["search"] += ["genotype.json", "config.yaml"]
        else:
            found["retrain"] += ["genotype.json", "config.yaml", "logs/"]
    return found


def run_folder_kind(path: str | Path) -> str | None:
    """"search", "retrain", or None for an absent, empty or unrecognised folder.

    The marker ``run.json`` decides; without one (a folder written before markers existed) the files do: a
    search writes alphas.csv (one-shot) or trials/ (multi-trial), a retraining model.pt and checkpoints/.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    marker = read_marker(path)
    if marker is not None:
        return str(marker["kind"])
    found = _evidence(path)
    if found["search"] and not found["retrain"]:
        return "search"
    if found["retrain"] and not found["search"]:
        return "retrain"
    if found["search"]:  # both: already mixed by an older version; the search's files are the ones to keep
        return "search"
    return None


def _holdings(path: Path, kind: str) -> str:
    """What makes ``path`` a ``kind`` folder, in words for a message."""
    marker = read_marker(path)
    if marker is not None:
        by = f" by `{marker['command']}`" if marker.get("command") else ""
        return f"its {MARKER} marks a {kind} run, created {marker.get('created', '?')}{by}"
    names = _evidence(path)[kind]
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """An output folder that is a file, or lies under one, cannot be made: say so before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: give {flag} a folder (new or empty) for the "
                        "outputs; nothing was written")
    check_parents(path, flag)
    return path


def check_parents(path: str | Path, flag: str = "--out", writable: bool = False) -> None:
    """The nearest existing folder above ``path`` (a file or a folder still to be made) is a folder (and,
    with ``writable``, one this process may write in)."""
    path = Path(path)
    parent = next(p for p in path.parents if p.exists() or p == p.parent)
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder, so nothing can be written under it; "
                        f"give {flag} a path inside a folder; nothing was written")
    if writable and (not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK))):
        raise UserError(f"{flag} {path}: no permission to write {path if path.exists() else 'in ' + str(parent)}; "
                        f"give {flag} in a folder you can write to (or fix its permissions)")


def check_run_folder(path: str | Path, kind: str) -> Path:
    """Refuse ``path`` for a run of ``kind`` when it is a file or holds the other kind of run; writes nothing."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = check_output_folder(path)
    other = run_folder_kind(path)
    if other is not None and other != kind:
        suggestion = path.parent / f"{path.name}-{kind}"
        action = "a retraining" if kind == "retrain" else "a search"
        raise UserError(f"--out {path} is a {_FOLDER_WORDS[other]} ({_holdings(path, other)}): {action} there would "
                        f"overwrite its files; give another --out (a new or empty folder, e.g. {suggestion}); "
                        "nothing was written")
    return path


def claim_run_folder(path: str | Path, kind: str, command: str | None = None) -> Path:
    """Check ``path`` (:func:`check_run_folder`), create it, and mark it as a ``kind`` run; returns it.

    An existing marker of the same kind is kept (it says when and by what the folder was first written).
    """
    path = check_run_folder(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    if read_marker(path) is None:
        marker = {"kind": kind, "created": _now(), "command": command if command is not None else command_line()}
        (path / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return path


def check_not_inside(out: str | Path, protected: dict[str, Path], flag: str = "--out", inside: bool = True) -> None:
    """Refuse an output folder that is (or, with ``inside``, lies within) one of the ``protected`` folders.

    ``protected`` maps a description ("the data's input folder") to its path. Paths are compared resolved
    (symlinks, ``..``) and, where both exist, as the same file (bind mounts, case-insensitive disks).
    """
    out = Path(out)
    resolved = out.resolve()
    chain = [resolved, *resolved.parents] if inside else [resolved]
    for name, folder in protected.items():
        folder = Path(folder)
        target = folder.resolve()
        hit = any(candidate == target for candidate in chain)
        if not hit and target.exists():
            hit = any(candidate.exists() and os.path.samefile(candidate, target) for candidate in chain)
        if hit:
            where = "is" if resolved == target or not inside else "lies inside"
            fix = f"a folder outside {folder}" if inside else "another folder (a subfolder will do)"
            raise UserError(f"{flag} {out} {where} {name} {folder}: writing there would put outputs among (or over) "
                            f"those files; give {flag} {fix}; nothing was written")


def is_secondary_rank() -> bool:
    """Whether this process is a non-first process of a multi-process run (DDP ranks re-run the command): it
    computes beside the first but writes no run-folder file and takes no lock (the first process holds it)."""
    for name in _RANK_VARIABLES:
        try:
            if int(os.environ.get(name, "0") or 0) != 0:
                return True
        except ValueError:
            continue
    return False


class RunLock:
    """This command holds ``path`` while the ``with`` block runs: ``path/.lock`` names its pid, host and command.

    A second command on the folder stops with a UserError naming the holder; a lock whose process has
    ended (on this host) is taken over with a warning. Re-entrant within a process (``run_retrain`` and
    the ``retrain`` it calls both hold it); the file goes when the outermost block ends. Processes of a
    multi-process run other than the first (DDP ranks re-run the command) do not take it.

    With ``kind``, the folder is also claimed for that kind of run: checked first (:func:`check_run_folder`),
    marked only once the lock is held, so a refused command (wrong kind, busy folder) writes nothing.
    """

    _depth: dict[Path, int] = {}

    def __init__(self, path: str | Path, command: str | None = None, kind: str | None = None):
        self.folder = Path(path)
        self.path = self.folder / LOCK
        self.command = command if command is not None else command_line()
        self.kind = kind
        self._key = self.path.resolve()
        self._held = False

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "since": _now(),
                "start": process_started(os.getpid())}

    def __enter__(self) -> "RunLock":
        if self.kind is not None:
            check_run_folder(self.folder, self.kind)
        if is_secondary_rank():
            log.debug("%s: not locked by this process (a secondary rank of a multi-process run)", self.folder)
            return self
        depth = RunLock._depth.get(self._key, 0)
        if depth == 0:
            check_output_folder(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._acquire()
        RunLock._depth[self._key] = depth + 1
        self._held = True
        if self.kind is not None:
            try:
                claim_run_folder(self.folder, self.kind, self.command)
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._held:
            return
        self._held = False
        depth = RunLock._depth.get(self._key, 1) - 1
        if depth > 0:
            RunLock._depth[self._key] = depth
            return
        RunLock._depth.pop(self._key, None)
        holder = self._read()
        if holder is None or (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()):
            self.path.unlink(missing_ok=True)
        else:
            log.warning("%s: not removed, it now names pid %s: another command took this folder over while this "
                        "one ran", self.path, holder.get("pid"))

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _create(self, record: dict[str, Any]) -> bool:
        """Write the lock only if there is none: the whole file appears at once (a hard link of a full file)."""
        scratch = self.folder / f"{LOCK}.{os.getpid()}.tmp"
        scratch.write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.link(scratch, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create (a reader may see it empty briefly)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record, indent=2) + "\n")
            return True
        finally:
            scratch.unlink(missing_ok=True)

    def _acquire(self) -> None:
        host = socket.gethostname()
        for _ in range(20):
            if self._create(self._record()):
                return
            try:
                raw = self.path.read_text()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            try:
                holder = json.loads(raw)
                holder = holder if isinstance(holder, dict) else {}
            except ValueError:
                holder = {}
            pid = holder.get("pid")
            if not isinstance(pid, int):
                if time.time() - self._mtime() < 5:  # being written by a file system without hard links
                    time.sleep(0.1)
                    continue
                self._take_over(raw, f"{self.path} is not a lock this version wrote")
                continue
            if holder.get("host") == host and pid == os.getpid():
                log.debug("%s: already held by this process", self.path)
                return
            if holder.get("host") != host or process_alive(pid, holder.get("start") if isinstance(holder.get("start"), float) else None):
                where = f" on {holder.get('host')}" if holder.get("host") != host else ""
                running = f" running `{holder['command']}`" if holder.get("command") else ""
                raise UserError(f"{self.folder} is in use: pid {pid}{where} has held it since "
                                f"{holder.get('since', '?')}{running}; wait for it to finish or give another --out "
                                f"(if that process is gone, delete {self.path})")
            self._take_over(raw, f"pid {pid} ({holder.get('command') or 'unknown command'}, since "
                                 f"{holder.get('since', '?')}) has ended")
        raise UserError(f"could not take {self.path}: other commands keep claiming {self.folder}; give another --out")

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _take_over(self, raw: str, why: str) -> None:
        """Move the stale lock aside, unless it changed since it was read (then another command took it)."""
        aside = self.folder / f"{LOCK}.stale.{os.getpid()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text() != raw:  # a fresh lock replaced the stale one meanwhile: put it back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                return
        finally:
            aside.unlink(missing_ok=True)
        log.warning("%s: taking over a stale lock: %s", self.folder, why)


__all__ = ["MARKER", "LOCK", "KINDS", "run_folder_kind", "read_marker", "check_output_folder", "check_run_folder",
           "claim_run_folder", "check_not_inside", "RunLock", "command_line", "is_secondary_rank"]
