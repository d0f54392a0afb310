"""A guard against the collapse of differentiable search into skip connections.

DARTS-like searches drift towards parameter-free ``skip_connect`` edges as the supernet's weights
train (Zela et al. 2020, "Understanding and robustifying DARTS"; Chen et al. 2019, P-DARTS; Liang
et al. 2019, DARTS+). Two remedies, both applied to every differentiable strategy by the search
runner (:func:`nas_restore.search._run_one_shot`):

* **cap** (on by default, P-DARTS style): the derived cell keeps at most ``cap`` skip edges; the
  weakest surplus skips (lowest skip probability on their edge) are re-derived as the next best
  operation of the same edge (neither skip nor DARTS's ``none``). Chain cells (one choice per
  position) are capped the same way, per position.
* **early stop** (off by default, DARTS+ style): after each epoch, stop the search once a derived
  cell holds more than ``stop`` skip edges.

The guard works on NNI's architecture dict plus the trained alphas (:func:`labelled_alphas`), so it
knows nothing of a particular space: DAG cells are the keys ``<cell>/op_<node>_<slot>`` with their
``<cell>/input_<node>_<slot>`` and the edge alpha ``<cell>/<node>_<input>``; chain cells are the keys
``<cell>/chain_<position>``, each its own alpha.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

log = logging.getLogger(__name__)

SKIP = "skip_connect"
NONE = "none"

_DAG_OP = re.compile(r"^(?P<cell>.+)/op_(?P<node>\d+)_(?P<slot>\d+)$")
_CHAIN_OP = re.compile(r"^(?P<cell>.+)/chain_(?P<pos>\d+)$")

Alphas = Mapping[str, tuple[torch.Tensor, Sequence[str]]]  # label -> (raw alpha, choice names)


@dataclass
class SkipGuardConfig:
    """``cap``: most skip edges a derived cell keeps (None: no cap); ``stop``: stop the search once a
    derived cell has more skips than this (None: never)."""

    cap: int | None = 2
    stop: int | None = None

    def __post_init__(self) -> None:
        for name in ("cap", "stop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"skip guard {name} must be an integer >= 0 or None (off), got {value!r}")


@dataclass
class Replacement:
    key: str                  # the NNI key whose op was changed
    input: int | None         # the edge's input (DAG cells), None for chain positions
    skip_weight: float        # probability of skip_connect on that edge
    new_op: str
    new_weight: float


@dataclass
class GuardReport:
    """What the guard did in one run: written to ``guard.json`` and the genotype's metadata."""

    cap: int | None
    stop: int | None
    skips_before: dict[str, int] = field(default_factory=dict)
    skips_after: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, list[Replacement]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)     # surplus skips no alpha could replace
    stopped_at_epoch: int | None = None                     # early stop: the epoch after which it stopped
    stopped_skips: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_state(self) -> dict[str, Any]:
        """What a resumed search needs (nas_restore.search_checkpoint): whether, and why, the early stop fired."""
        return {"stopped_at_epoch": self.stopped_at_epoch, "stopped_skips": dict(self.stopped_skips)}

    def load_resume_state(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.stopped_at_epoch, self.stopped_skips = state["stopped_at_epoch"], dict(state["stopped_skips"])

    def summary(self) -> dict[str, Any]:
        """The short form for the genotype's metadata."""
        return {"cap": self.cap, "stop": self.stop, "skips_before": self.skips_before,
                "skips_after": self.skips_after,
                "replaced": sum(len(r) for r in self.replaced.values()),
                "stopped_at_epoch": self.stopped_at_epoch}


def count_skips(arch: Mapping[str, Any]) -> dict[str, int]:
    """Skip edges per cell of an NNI architecture dict (DAG and chain cells; cells with none count 0)."""
    counts: dict[str, int] = {}
    for key, value in arch.items():
        m = _DAG_OP.match(key) or _CHAIN_OP.match(key)
        if m:
            counts.setdefault(m["cell"], 0)
            counts[m["cell"]] += int(str(value) == SKIP)
    return counts


def _probs(alphas: Alphas, label: str) -> tuple[list[float], list[str]] | None:
    if label not in alphas:
        return None
    alpha, names = alphas[label]
    return torch.softmax(alpha.detach().double().flatten(), -1).tolist(), [str(n) for n in names]


def _edge_label(key: str, arch: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """The alpha label of the edge behind an op key, and its input (None for chain positions)."""
    if m := _DAG_OP.match(key):
        chosen = arch.get(f"{m['cell']}/input_{m['node']}_{m['slot']}")
        if isinstance(chosen, (list, tuple)):
            chosen = chosen[0] if len(chosen) == 1 else None
        if chosen is None:
            return None
        return f"{m['cell']}/{m['node']}_{int(chosen)}", int(chosen)
    if _CHAIN_OP.match(key):
        return key, None
    return None


def apply_skip_cap(arch: Mapping[str, Any], alphas: Alphas, cap: int | None,
                   stop: int | None = None) -> tuple[dict[str, Any], GuardReport]:
    """``arch`` with at most ``cap`` skip edges per cell, and the report of what changed.

    The strongest ``cap`` skips of a cell stay; each other one takes its edge's best operation that
    is neither skip nor none. A surplus skip whose edge has no alpha or no other operation stays and
    is listed in ``unresolved``.
    """
    out = dict(arch)
    report = GuardReport(cap=cap, stop=stop, skips_before=count_skips(arch))
    if cap is None:
        report.skips_after = dict(report.skips_before)
        return out, report
    for cell, n_skips in report.skips_before.items():
        if n_skips <= cap:
            continue
        skips = []
        for key, value in arch.items():
            m = _DAG_OP.match(key) or _CHAIN_OP.match(key)
            if not (m and m["cell"] == cell and str(value) == SKIP):
                continue
            edge = _edge_label(key, arch)
            found = _probs(alphas, edge[0]) if edge else None
            weight = found[0][found[1].index(SKIP)] if found and SKIP in found[1] else float("inf")
            skips.append((weight, key, edge, found))
        skips.sort(key=lambda s: (-s[0], s[1]))  # strongest first; ties broken by key for determinism
        for weight, key, edge, found in skips[cap:]:
            options = [] if found is None else [(p, n) for p, n in zip(*found) if n not in (SKIP, NONE)]
            if not options:
                report.unresolved.append(key)
                log.warning("skip guard: %s is a surplus skip but its edge has no other operation to take", key)
                continue
            new_weight, new_op = max(options)
            out[key] = new_op
            report.replaced.setdefault(cell, []).append(
                Replacement(key=key, input=edge[1], skip_weight=round(weight, 6), new_op=new_op,
                            new_weight=round(new_weight, 6)))
            log.info("skip guard: cell %s had %d skips (cap %d): %s skip (p=%.3f) -> %s (p=%.3f)", cell,
                     n_skips, cap, key, weight, new_op, new_weight)
    report.skips_after = count_skips(out)
    return out, report


def early_stop_callback(config: SkipGuardConfig, report: GuardReport) -> Any:
    """A Lightning callback that stops the search once a derived cell has more than ``config.stop``
    skips (checked at every epoch end); it writes the epoch and the counts into ``report``."""
    import pytorch_lightning as pl

    class _SkipEarlyStop(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if config.stop is None or report.stopped_at_epoch is not None:
                return
            try:
                counts = count_skips(pl_module.export())
            except Exception as err:  # noqa: BLE001  (a strategy that cannot export mid-search)
                log.debug("skip guard: no derived architecture at epoch %d: %s", trainer.current_epoch, err)
                return
            over = {c: n for c, n in counts.items() if n > config.stop}
            if over:
                report.stopped_at_epoch = trainer.current_epoch
                report.stopped_skips = counts
                trainer.should_stop = True
                log.info("skip guard: stopping the search after epoch %d: cells %s have more than %d skip "
                         "edges (DARTS+ early stop)", trainer.current_epoch, over, config.stop)

    return _SkipEarlyStop()
