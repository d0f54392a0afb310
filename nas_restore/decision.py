"""Did the search decide? How far a one-shot search's architecture weights moved from uniform.

A differentiable search derives its genotype by keeping, on every choice, the candidate of largest weight.
When the weights end where they started (every candidate near 1/n), that pick is close to arbitrary: a
different seed or a few more steps would keep another candidate. Two figures per choice say how much the
pick can be trusted:

- the **margin**: the kept candidate's weight minus the runner-up's, in units of the uniform weight 1/n
  (0: a tie; 1: the kept candidate leads by a whole uniform share);
- the **entropy** of the weights against the uniform one, ``H / log n`` (1: uniform; 0: one-hot).

DARTS's ``none`` (the zero operation) is never kept, so it is left out of the kept / runner-up pair but
counted in the entropy, as it is part of the softmax. The thresholds of :data:`DECIDED_MARGIN` and
:data:`DECIDED_ENTROPY` are rules of thumb, stated in every message that uses them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from nas_restore.run_records import ALPHAS, load_alphas

DECIDED_MARGIN = 0.25    # median kept-minus-runner-up margin, in uniform shares 1/n
DECIDED_ENTROPY = 0.95   # median entropy / log n
ZERO_OP = "none"


@dataclass
class ChoiceDecision:
    label: str
    candidates: int
    kept: str
    kept_weight: float
    runner_up: str
    runner_up_weight: float
    margin: float     # (kept - runner-up) x n
    entropy: float    # H / log n


@dataclass
class Decision:
    """The run's verdict with the figures behind it."""

    choices: list[ChoiceDecision]
    median_margin: float
    median_entropy: float
    decided: bool
    step: int | None = None

    def summary(self) -> str:
        verdict = "the search decided" if self.decided else "the search did not decide"
        return (f"{verdict}: median margin of the kept candidate over the runner-up {self.median_margin:.2f} "
                f"uniform shares (decided: >= {DECIDED_MARGIN}), median entropy {self.median_entropy:.3f} of "
                f"uniform (decided: <= {DECIDED_ENTROPY}) over {len(self.choices)} choices")

    def advice(self) -> str:
        """What to change when the weights barely moved."""
        return ("the architecture weights barely moved from uniform, so the genotype is close to an arbitrary "
                "pick: search longer (--epochs), on more data (data.train_items or --data), with a larger "
                "architecture learning rate (--strategy-option arc_learning_rate=...), or a multi-trial "
                "strategy (--strategy evolution)")

    def to_dict(self) -> dict[str, Any]:
        """The figures for the genotype's metadata (per-choice rows included)."""
        return {"decided": self.decided, "median_margin": round(self.median_margin, 4),
                "median_entropy": round(self.median_entropy, 4), "step": self.step,
                "thresholds": {"margin": DECIDED_MARGIN, "entropy": DECIDED_ENTROPY},
                "choices": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(c).items()}
                            for c in self.choices]}


def decide_choice(label: str, weights: Mapping[str, float]) -> ChoiceDecision | None:
    """The margin and entropy of one choice's (softmaxed) weights; None for a choice with one candidate."""
    n = len(weights)
    total = sum(weights.values())
    if n < 2 or total <= 0:
        return None
    probs = {name: w / total for name, w in weights.items()}
    ranked = sorted(((p, name) for name, p in probs.items() if name != ZERO_OP), reverse=True)
    if len(ranked) < 2:
        return None
    entropy = -sum(p * math.log(p) for p in probs.values() if p > 0) / math.log(n)
    (top, kept), (second, runner_up) = ranked[0], ranked[1]
    return ChoiceDecision(label=label, candidates=n, kept=kept, kept_weight=top, runner_up=runner_up,
                          runner_up_weight=second, margin=(top - second) * n, entropy=entropy)


def decide(weights: Mapping[str, Mapping[str, float]], step: int | None = None) -> Decision:
    """The verdict over all choices: ``weights`` maps each choice label to its candidates' weights."""
    choices = [d for label, w in weights.items() if (d := decide_choice(label, w)) is not None]
    if not choices:
        return Decision(choices=[], median_margin=float("nan"), median_entropy=float("nan"), decided=False,
                        step=step)
    margin = _median([c.margin for c in choices])
    entropy = _median([c.entropy for c in choices])
    return Decision(choices=choices, median_margin=margin, median_entropy=entropy,
                    decided=margin >= DECIDED_MARGIN and entropy <= DECIDED_ENTROPY, step=step)


def decision_of_run(run_dir: str | Path) -> Decision | None:
    """The verdict on a one-shot run folder's last recorded weights (None without ``alphas.csv``)."""
    path = Path(run_dir) / ALPHAS
    if not path.is_file() or len(path.read_text().splitlines()) < 2:
        return None  # no one-shot weights recorded (e.g. spos samples paths and keeps no weights)
    return decision_of_alphas(load_alphas(path))


def decision_of_alphas(frame: pd.DataFrame) -> Decision:
    """The verdict on the last step of an ``alphas.csv`` table (:func:`nas_restore.run_records.load_alphas`)."""
    last = int(frame["step"].max())
    rows = frame[frame["step"] == last]
    weights: dict[str, dict[str, float]] = {}
    for label, choice, weight in zip(rows["label"], rows["choice"], rows["weight"]):
        weights.setdefault(str(label), {})[str(choice)] = float(weight)
    return decide(weights, step=last)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


__all__ = ["ChoiceDecision", "Decision", "DECIDED_ENTROPY", "DECIDED_MARGIN", "decide", "decide_choice",
           "decision_of_alphas", "decision_of_run"]
