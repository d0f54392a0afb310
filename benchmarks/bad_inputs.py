"""Run the catalogue of bad inputs (tests/test_bad_inputs.py) and report how each one ended.

Usage:  python benchmarks/bad_inputs.py [--report reports/bad_inputs.md]

For every case: the exit status, whether a traceback appeared, whether a file outside the command's own
output changed, whether code from a data file ran, and the message itself. A message counts as naming a
fix when it says what to do (a command, a flag, a choice of known values, a file to remove); the words
that count are listed in ``FIX_WORDS`` and every message is in the report, so the count can be checked
by eye.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the catalogue

from nas_restore.report_common import markdown_table, write_report  # noqa: E402
from nas_restore.study import machine_info, machine_line  # noqa: E402
from tests.test_bad_inputs import CASES, _build_world, run_case  # noqa: E402

FIX_WORDS = ("use ", "give ", "pass ", "retrain", "remove", "delete", "choose", "write ", "omit", "fix ",
             "run ", "set ", "known", "allowed", "did you mean", "rename", "wait", "another", "must be",
             "expected", "pick ", "add ", "restore", "upgrade", "list them", "e.g.", "nas-restore ", "--",
             "put ", "close ")


def names_a_fix(message: str) -> bool:
    text = message.lower()
    return any(word in text for word in FIX_WORDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="reports/bad_inputs.md")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the library's warnings would mix into the captured messages
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "world"
        template.mkdir()
        _build_world(template)
        for number, case in enumerate(CASES):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    result = run_case(case, template, Path(tmp) / f"case{number}", lambda: (out.getvalue(),
                                                                                            err.getvalue()))
                except Exception as exc:  # noqa: BLE001  (a traceback is a finding, not the end of the run)
                    rows.append({"case": case.id, "kind": case.kind, "exit": "raised", "traceback": "yes",
                                 "changed": "?", "code ran": "?", "fix named": "no",
                                 "message": f"{type(exc).__name__}: {exc}"[:200]})
                    continue
            lines = result.stderr.strip().splitlines()
            first = next((i for i, line in enumerate(lines) if "error:" in line), 0)  # past progress bars
            message = " ".join(line for line in lines[first:]
                               if not line.startswith("usage:") and not line.startswith(" "))
            message = re.sub(r"\s+", " ", message)
            rows.append({"case": case.id, "kind": case.kind, "exit": result.code,
                         "traceback": "yes" if "Traceback" in result.stderr else "no",
                         "changed": ", ".join(result.changed) or "none",
                         "code ran": "yes" if result.code_ran else "no",
                         "fix named": "yes" if names_a_fix(message) else "no",
                         "message": message.replace("|", "\\|")[:400]})
            print(f"{case.id:40s} exit {rows[-1]['exit']}  fix {rows[-1]['fix named']}", flush=True)
    total = len(rows)
    count = {key: sum(1 for r in rows if r[key] == "yes") for key in ("traceback", "code ran", "fix named")}
    exits = sum(1 for r in rows if r["exit"] == 2)
    lost = sum(1 for r in rows if r["changed"] not in ("none",))
    lines = ["# Bad inputs: how each one ends", "",
             f"Regenerate: `{shlex.join(['python', 'benchmarks/bad_inputs.py', *sys.argv[1:]])}`; the cases are "
             "the catalogue in `tests/test_bad_inputs.py` (its own tiny generated data; no shared data).", "",
             f"Machine: {machine_line(machine_info('cpu'))}", "",
             f"- cases: **{total}**; exit status 2 with an `error:` line: **{exits}**",
             f"- tracebacks: **{count['traceback']}**; code from a data file ran: **{count['code ran']}**; "
             f"cases that changed a file outside their own output: **{lost}**",
             f"- messages naming a fix (what to do: {', '.join(repr(w.strip()) for w in FIX_WORDS[:8])}, ...): "
             f"**{count['fix named']} of {total}** ({100 * count['fix named'] / max(total, 1):.0f} %); the list "
             "counts a stated valid range (`channels must be between 1 and 512, got 100000`) as a fix", "",
             markdown_table(list(rows[0]), [list(r.values()) for r in rows]), ""]
    path = write_report(args.report, lines)
    print(f"\nwrote {path}: {exits}/{total} exit 2, {count['traceback']} tracebacks, {lost} changed, "
          f"{count['fix named']}/{total} name a fix")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
