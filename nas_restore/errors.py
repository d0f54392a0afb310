"""The one error type for a user's mistake: a file, a config, a command-line value or a name.

The CLI prints a :class:`UserError` as one line (``error: <message>``) and exits 2; anything else is a
bug and keeps its traceback. So a message must name the problem *and* the fix. The specific errors of
each layer (config, data, genotype, space file, unknown name) derive from it; they also derive from
``ValueError`` (or ``KeyError``) so that callers that caught those keep working.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class UnknownNameError(UserError, KeyError):
    """A name that no registry holds (an operation, a space, a strategy, a reference genotype, ...).

    A ``KeyError`` for callers that look names up, but printed as its message (``KeyError`` alone would
    print the message's repr, inside stray quotes).
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], listing: str | None = None,
                 extra: str = ""):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        self.suggestions = did_you_mean(name, self.known)
        hint = f" Did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        where = f" (list them with `{listing}`)" if listing else ""
        self.message = f"unknown {kind} {name!r}; known: {', '.join(self.known) or 'none'}.{hint}{where}{extra}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``word`` among ``choices`` (difflib's ratio >= 0.6), best first."""
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)


__all__ = ["UserError", "UnknownNameError", "did_you_mean"]
