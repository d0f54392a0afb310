"""How reports write figures: numbers, counts, mean ± std, Markdown tables, the command line to regenerate.

The study machinery (records, resume, the held-out test set, summary sections) is :mod:`nas_restore.study`.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence


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


def write_report(path: str | Path, lines: Sequence[str]) -> Path:
    """Write a Markdown report (its folder made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


__all__ = ["command_line", "fmt", "fmt_count", "mean_std", "markdown_table", "write_report"]
