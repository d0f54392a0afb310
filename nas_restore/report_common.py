"""What `compare` and `rank` share: stage records that make them resumable, the machine line, tables.

A run folder's finished stages are small JSON files (``search.json``, ``retrain.json``, ``done.json``,
``failed.json``) written atomically, so a run killed at any moment leaves either a whole record or
none, and a re-run knows exactly what is left to do.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


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
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record_outcome(folder: Path, work: Callable[[], dict[str, Any]], failed_row: dict[str, Any],
                   describe: Callable[[dict[str, Any]], str], say: Callable[[str], None],
                   failed_note: str = "") -> dict[str, Any]:
    """Run one unit of a report (a compare run, a rank entry) and record how it ended in ``folder``.

    Success: ``done.json`` holds the row (a re-run skips the unit). Failure: ``failed.json`` holds
    ``failed_row`` plus the error, ``error.log`` the traceback, and the caller goes on with the others.
    """
    started = time.perf_counter()
    try:
        row = work()
    except Exception as err:  # noqa: BLE001  (one failed unit must not stop the report)
        message = f"{type(err).__name__}: {err}"
        (folder / "error.log").write_text(traceback.format_exc())
        row = {**failed_row, "error": message}
        write_json(folder / "failed.json", row)
        say(f"      failed ({message}); details in {folder / 'error.log'}{failed_note}")
        return row
    write_json(folder / "done.json", row)
    (folder / "failed.json").unlink(missing_ok=True)
    say(f"      {describe(row)} ({time.perf_counter() - started:.0f} s)")
    return row


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
    import torch

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


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as the user typed it (``nas-restore ...``), quoted for a shell."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "nas-restore " + " ".join(shlex.quote(a) for a in args)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_count(value: Any) -> str:
    """1234567 -> 1.23 M; 12345 -> 12.3 k (parameters, FLOPs)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


def mean_std(values: Iterable[float], digits: int = 2) -> str:
    """``mean ± std`` (sample std, n-1) of the finite values, with ``(n=…)`` when some are missing."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["write_json", "read_json", "cpu_model", "machine_info", "machine_line", "command_line", "fmt",
           "fmt_count", "mean_std", "markdown_table"]
