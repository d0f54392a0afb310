"""Drawing a search run: how the architecture weights moved, when the genotype settled, how the supernet trained.

``nas-restore render runs/NAME`` reads the run folder that :func:`nas_restore.search.run_search` writes
(``genotype.json``, ``alphas.csv``, ``derived.jsonl``, ``metrics.csv``) and writes into
``runs/NAME/render/``, next to the genotype's cell and network drawings:

* ``alphas_<cell>.<fmt>``: per edge ``<node>_<input>`` a heatmap of the softmaxed weight of every op
  (rows, DARTS's ``none`` included) against the training step (columns), laid out as the cell: one
  row of panels per node, one column per input it may read;
* ``alphas_final.<fmt>``: the last recorded weights, edge x op, the edges the genotype kept outlined;
* ``macro.<fmt>``: the macro choices' weights (TMICS: OFM vs TGM alignment) against the step;
* ``derived_by_epoch.md`` and ``derived_changes.<fmt>``: the genotype derived after every epoch, what
  changed from the epoch before, and how far it still was from the final genotype;
* ``metrics.<fmt>``: the supernet's training loss, validation PSNR and seconds per epoch.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from nas_restore.genotype import Genotype, GenotypeError, cells_from_nni_arch
from nas_restore.sources import load_genotype
from nas_restore.analysis import diff_genotypes, safe_stem
from nas_restore.graph import input_names
from nas_restore.decision import Decision, decision_of_alphas
from nas_restore.errors import UserError
from nas_restore.run_records import ALPHAS, DERIVED, METRIC_COLUMNS, METRICS, is_run_folder, load_alphas
from nas_restore.render import MPL_FORMATS, PNG_DPI, RenderResult, render_genotype
from search_spaces import space_of

log = logging.getLogger(__name__)

_EDGE_LABEL = re.compile(r"^(?P<cell>.+)/(?P<node>\d+)_(?P<input>\d+)$")
STYLE = {"font.family": "serif", "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "axes.spines.top": False,
         "axes.spines.right": False}
CMAP = "viridis"


@dataclass
class EpochChange:
    """The genotype derived after one epoch, compared with the epoch before and with the final one."""

    epoch: int
    genotype: Genotype
    changed_edges: int | None       # op edges that differ from the previous epoch (None for the first)
    macro_changes: list[str]        # "alignment: ofm -> tgm"
    edges_from_final: int           # op edges that still differ from the final genotype
    details: list[str] = field(default_factory=list)  # the changes, one line each


# --------------------------------------------------------------------------------------------------
# reading


def parse_edge_label(label: str) -> tuple[str, int, int] | None:
    """``dna/3_1`` -> (``dna``, node 3, input 1); None for a macro choice such as ``alignment``."""
    m = _EDGE_LABEL.match(label)
    return (m["cell"], int(m["node"]), int(m["input"])) if m else None


def derived_genotypes(run_dir: str | Path, final: Genotype) -> list[tuple[int, Genotype]]:
    """The genotype NNI derived after each epoch (``derived.jsonl``), converted with the run's space."""
    path = Path(run_dir) / DERIVED
    if not path.is_file():
        return []
    spec = space_of(final, missing_ok=True)
    config = spec.config_class.from_dict(final.space_config) if spec is not None else None
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch, arch = int(record["epoch"]), record["arch"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {number}: expected {{\"epoch\": N, \"arch\": {{...}}}} ({err})") from None
        try:
            if spec is not None:
                genotype = spec.to_genotype(arch, config, {})
            else:
                cells, macro = cells_from_nni_arch(arch)
                genotype = Genotype(space=final.space, cells=cells, macro={k: str(v) for k, v in macro.items()})
        except GenotypeError as err:
            raise GenotypeError(f"{path}, line {number} (epoch {epoch}): {err}") from None
        out.append((epoch, genotype))
    return out


def epoch_changes(derived: list[tuple[int, Genotype]], final: Genotype) -> list[EpochChange]:
    """What changed from epoch to epoch (cells edge by edge, macro choices)."""
    changes = []
    previous: Genotype | None = None
    for epoch, genotype in derived:
        details: list[str] = []
        changed = macro = None
        if previous is not None:
            diff = diff_genotypes(previous, genotype)
            changed = diff.num_changed
            macro = [f"{k}: {a} -> {b}" for k, (a, b) in diff.macro.items()]
            details += [f"macro {m}" for m in macro]
            for name, cell in diff.cells.items():
                details += [f"{name} {u} -> {v}: {a} => {b}" for u, v, a, b in cell.changed]
                details += [f"{name} {u} -> {v}: {op} dropped" for u, v, op in cell.only_a]
                details += [f"{name} {u} -> {v}: {op} added" for u, v, op in cell.only_b]
        to_final = diff_genotypes(genotype, final)
        changes.append(EpochChange(epoch=epoch, genotype=genotype, changed_edges=changed,
                                   macro_changes=macro or [],
                                   edges_from_final=to_final.num_changed + len(to_final.macro), details=details))
        previous = genotype
    return changes


# --------------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out_dir: Path, stem: str, formats: list[str], result: RenderResult) -> None:
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=PNG_DPI)
        result.paths.append(path)


def _node_name(number: int, n_inputs: int) -> str:
    return input_names(n_inputs)[number] if number < n_inputs else str(number - n_inputs)


def _tex(name: str) -> str:
    return f"${name[:2]}{{{name[3:-1]}}}$" if name.startswith("c_{") else name


def _epoch_bounds(steps: list[int], epochs: dict[int, int]) -> list[float]:
    """Column positions (between two steps) where a new epoch starts."""
    return [i - 0.5 for i in range(1, len(steps)) if epochs[steps[i]] != epochs[steps[i - 1]]]


def _step_ticks(ax, steps: list[int], n: int = 4) -> None:
    idx = sorted(set(np.linspace(0, len(steps) - 1, min(n, len(steps))).round().astype(int).tolist()))
    ax.set_xticks(idx)
    ax.set_xticklabels([str(steps[i]) for i in idx])


def plot_cell_alphas(alphas: pd.DataFrame, cell: str, n_inputs: int, kept: dict[tuple[int, int], str],
                     title: str):
    """One cell's edges as a grid of op x step heatmaps (rows: nodes, columns: the inputs they may read)."""
    import matplotlib as mpl

    edges = sorted({parse_edge_label(lb)[1:] for lb in alphas["label"].unique()})
    nodes = sorted({n for n, _ in edges})
    n_cols = max(i for _, i in edges) + 1
    steps = sorted(alphas["step"].unique().tolist())
    epochs = alphas.groupby("step")["epoch"].max().to_dict()
    choices = list(dict.fromkeys(alphas["choice"]))
    if "none" in choices:  # DARTS's zero op last, below the real ones
        choices = [c for c in choices if c != "none"] + ["none"]
    # one colour scale for the whole cell, spanning its weights: early in a search they all sit near
    # 1/len(choices), and a fixed 0..1 scale would show a flat picture
    low, high = float(alphas["weight"].min()), float(alphas["weight"].max())
    high = max(high, low + 1e-3)
    with mpl.rc_context(STYLE):
        fig = _figure(1.9 * n_cols + 1.6, 1.05 + 0.13 * len(choices) * len(nodes) + 0.45 * len(nodes))
        grid = fig.subplots(len(nodes), n_cols, squeeze=False, sharex=True, sharey=True)
        image = None
        for r, node in enumerate(nodes):
            for c in range(n_cols):
                ax = grid[r][c]
                if (node, c) not in edges:
                    ax.set_axis_off()
                    continue
                rows = alphas[alphas["label"] == f"{cell}/{node}_{c}"]
                matrix = rows.pivot_table(index="choice", columns="step", values="weight", aggfunc="last")
                matrix = matrix.reindex(index=choices, columns=steps)
                image = ax.imshow(matrix.to_numpy(), aspect="auto", cmap=CMAP, vmin=low, vmax=high,
                                  interpolation="nearest")
                for x in _epoch_bounds(steps, epochs):
                    ax.axvline(x, color="white", lw=0.8, ls=":")
                op = kept.get((node, c))
                source, target = _tex(_node_name(c, n_inputs)), _node_name(node, n_inputs)
                ax.set_title(f"{source} → {target}\n" + (f"kept: {op}" if op else "dropped"),
                             fontsize=8, color="black" if op else "#777777")
                if op in choices:
                    ax.annotate("◀", (len(steps) - 0.5, choices.index(op)), xytext=(2, 0),
                                textcoords="offset points", va="center", ha="left", fontsize=7,
                                annotation_clip=False, color="#d62728")
                ax.set_yticks(range(len(choices)))
                ax.set_yticklabels(choices)
                ax.tick_params(length=2)
                _step_ticks(ax, steps)
                if r == len(nodes) - 1 or (node + 1, c) not in edges:
                    ax.set_xlabel("step")
        if image is not None:
            fig.colorbar(image, ax=grid, shrink=0.6, aspect=30,
                         label=f"softmaxed weight (uniform: {1 / len(choices):.3f})")
        fig.suptitle(title, fontsize=10)
    return fig


def plot_final_alphas(alphas: pd.DataFrame, cells: dict[str, int], kept: dict[str, dict[tuple[int, int], str]],
                      title: str):
    """The last recorded weights per cell, edge (rows) x op (columns); kept (edge, op) pairs outlined."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    last = alphas[alphas["step"] == alphas["step"].max()]
    choices = list(dict.fromkeys(alphas["choice"][alphas["label"].map(lambda lb: parse_edge_label(lb) is not None)]))
    if "none" in choices:
        choices = [c for c in choices if c != "none"] + ["none"]
    panels = []
    for cell, n_inputs in cells.items():
        labels = sorted((lb for lb in last["label"].unique() if (p := parse_edge_label(lb)) and p[0] == cell),
                        key=lambda lb: parse_edge_label(lb)[1:])
        if labels:
            panels.append((cell, n_inputs, labels))
    height = max(len(labels) for *_, labels in panels)
    low, high = float(last["weight"].min()), float(last["weight"].max())  # the data's range, as over time
    high = max(high, low + 1e-3)
    with mpl.rc_context(STYLE):
        fig = _figure(0.55 * len(choices) * len(panels) + 1.6 * len(panels) + 0.8, 0.32 * height + 2.2)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (cell, n_inputs, labels) in zip(axes, panels):
            rows = last[last["label"].isin(labels)]
            matrix = rows.pivot_table(index="label", columns="choice", values="weight", aggfunc="last")
            matrix = matrix.reindex(index=labels, columns=choices)
            values = matrix.to_numpy()
            image = ax.imshow(values, aspect="auto", cmap=CMAP, vmin=low, vmax=high)
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    if not np.isnan(values[i, j]):
                        dark = values[i, j] < (low + high) / 2  # white text on the dark half of viridis
                        ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=6,
                                color="white" if dark else "black")
            for i, label in enumerate(labels):
                _, node, source = parse_edge_label(label)
                op = kept.get(cell, {}).get((node, source))
                if op in choices:
                    ax.add_patch(Rectangle((choices.index(op) - 0.5, i - 0.5), 1, 1, fill=False, lw=1.8,
                                           ec="#d62728"))
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels([f"{_tex(_node_name(parse_edge_label(lb)[2], n_inputs))} → "
                                f"{_node_name(parse_edge_label(lb)[1], n_inputs)}" for lb in labels])
            ax.set_xticks(range(len(choices)))
            ax.set_xticklabels(choices, rotation=45, ha="right")
            ax.set_title(f"cell {cell}")
            ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=list(axes), shrink=0.8, label=f"softmaxed weight (last step {last['step'].max()})")
        fig.suptitle(title + "\n(red box: the op the genotype kept on that edge)", fontsize=10)
    return fig


def plot_macro(alphas: pd.DataFrame, labels: list[str], final: Genotype, title: str):
    """Macro choices' weights against the step, one panel per choice (TMICS: the alignment)."""
    import matplotlib as mpl

    epochs = alphas.groupby("step")["epoch"].max()
    steps = list(epochs.index)  # a new epoch starts between its first record and the previous one
    starts = [(a + b) / 2 for a, b in zip(steps, steps[1:]) if epochs[a] != epochs[b]]
    with mpl.rc_context(STYLE):
        fig = _figure(4.2 * len(labels), 2.8)
        axes = fig.subplots(1, len(labels), squeeze=False)[0]
        for ax, label in zip(axes, labels):
            rows = alphas[alphas["label"] == label]
            for choice, part in rows.groupby("choice", sort=False):
                part = part.sort_values("step")
                ax.plot(part["step"], part["weight"], marker="o", ms=3, lw=1.5, label=str(choice).upper())
            for s in starts:
                ax.axvline(s, color="#bbbbbb", lw=0.8, ls=":")
            chosen = final.macro.get(label)
            ax.set_title(f"{label}" + (f" (genotype: {str(chosen).upper()})" if chosen else ""))
            ax.set_xlabel("step (dotted: epoch boundaries)")
            ax.set_ylabel("softmaxed weight")
            ax.legend(frameon=False)
            ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
    return fig


def plot_changes(changes: list[EpochChange], title: str):
    """Edges changed since the previous epoch (bars) and still differing from the final genotype (line)."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    epochs = [c.epoch for c in changes]
    with mpl.rc_context(STYLE):
        fig = _figure(4.6, 2.8)
        ax = fig.subplots()
        moved = [(c.epoch, c.changed_edges + len(c.macro_changes)) for c in changes if c.changed_edges is not None]
        if moved:
            ax.bar([e for e, _ in moved], [n for _, n in moved], width=0.6, color="#1f77b4", alpha=0.8,
                   label="changed since the previous epoch")
        ax.plot(epochs, [c.edges_from_final for c in changes], color="#d62728", marker="o", lw=1.5,
                label="differ from the final genotype")
        ax.set_xlabel("epoch")
        ax.set_ylabel("edges / macro choices")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        fig.suptitle(title, fontsize=10)
    return fig


def plot_metrics(metrics: pd.DataFrame, title: str):
    """The supernet's training loss, validation PSNR and seconds per epoch."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    panels = [("train_loss", "training loss", "#1f77b4"), ("val_psnr", "supernet val PSNR (dB)", "#2ca02c"),
              ("seconds", "seconds per epoch", "#7f7f7f")]
    panels = [p for p in panels if p[0] in metrics.columns]
    with mpl.rc_context(STYLE):
        fig = _figure(2.6 * len(panels), 2.5)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (column, label, color) in zip(axes, panels):
            ax.plot(metrics["epoch"], metrics[column], marker="o", ms=4, lw=1.5, color=color)
            ax.set_xlabel("epoch")
            ax.set_title(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------
# the run folder


def derived_markdown(changes: list[EpochChange], final: Genotype, run_name: str) -> str:
    """``derived_by_epoch.md``: a table of changes per epoch, then each epoch's cells."""
    lines = [f"# Genotype derived after each epoch: {run_name}", "",
             f"Final genotype: `{final.genotype_id()}` (genotype.json). An edge counts as changed when its op "
             "or its input differs.", "",
             "| epoch | macro | changed since previous epoch | differ from final | changes |",
             "|---:|---|---:|---:|---|"]
    settled = None
    for change in changes:
        macro = ", ".join(f"{k}={v}" for k, v in change.genotype.macro.items()) or "-"
        moved = "-" if change.changed_edges is None else str(change.changed_edges + len(change.macro_changes))
        details = "<br>".join(d.replace("|", "\\|") for d in change.details) or "-"
        lines.append(f"| {change.epoch} | {macro} | {moved} | {change.edges_from_final} | {details} |")
        if change.edges_from_final == 0 and settled is None:
            settled = change.epoch
        elif change.edges_from_final:
            settled = None
    lines.append("")
    lines.append(f"The search settled (matched the final genotype from then on) at epoch {settled}."
                 if settled is not None else "The derived genotype never matched the final one for good.")
    for change in changes:
        lines += ["", f"## Epoch {change.epoch}", ""]
        for name, cell in change.genotype.cells.items():
            names = input_names(cell.n_inputs) + [str(i) for i in range(cell.num_nodes)]
            parts = [f"node {i}: " + ", ".join(f"{e.op} <- {names[e.input] if cell.kind == 'dag' else '…'}"
                                               for e in node) for i, node in enumerate(cell.nodes)]
            lines.append(f"- **{name}**: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def decision_markdown(decision: Decision, run_name: str) -> str:
    """``decision.md``: did the search decide, choice by choice (see nas_restore/decision.py)."""
    lines = [f"# Did the search decide? {run_name}", "", decision.summary() + ".", ""]
    if not decision.decided:
        lines += [decision.advice()[0].upper() + decision.advice()[1:] + ".", ""]
    lines += ["Margin: the kept candidate's weight minus the runner-up's, in uniform shares 1/n; entropy: of the "
              "weights, against uniform (1 = uniform).", "",
              "| choice | n | kept | weight | runner-up | weight | margin | entropy |",
              "|---|---:|---|---:|---|---:|---:|---:|"]
    for c in decision.choices:
        lines.append(f"| {c.label} | {c.candidates} | {c.kept} | {c.kept_weight:.3f} | {c.runner_up} | "
                     f"{c.runner_up_weight:.3f} | {c.margin:.2f} | {c.entropy:.3f} |")
    return "\n".join(lines) + "\n"


def render_run(run_dir: str | Path, out_dir: str | Path | None = None, formats: Iterable[str] = ("svg", "png"),
               use_dot: bool | None = None, overview: bool = True) -> RenderResult:
    """Everything ``nas-restore render runs/NAME`` draws; returns the files written and notes."""
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise UserError(f"{run_dir} is not a search run folder (no alphas.csv); give runs/NAME as written "
                         "by `nas-restore search`")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "render"
    formats = [f.lower().lstrip(".") for f in formats]
    plot_formats = [f for f in formats if f in MPL_FORMATS] or ["png"]
    final = load_genotype(run_dir)
    result = render_genotype(final, out_dir, formats=formats, use_dot=use_dot, overview=overview)
    name = run_dir.resolve().name

    alphas = load_alphas(run_dir / ALPHAS)
    parsed = alphas["label"].map(parse_edge_label)
    edge_rows = alphas[parsed.notna()]
    cells = {}
    for cell in dict.fromkeys(p[0] for p in parsed.dropna()):
        genotype_cell = final.cells.get(cell)
        cells[cell] = genotype_cell.n_inputs if genotype_cell is not None and genotype_cell.kind == "dag" else 2
    kept = {cell: _kept_edges(final, cell) for cell in cells}
    for cell, n_inputs in cells.items():
        rows = edge_rows[edge_rows["label"].str.startswith(cell + "/")]
        fig = plot_cell_alphas(rows, cell, n_inputs, kept[cell],
                               f"{name}: architecture weights of cell {cell} over the search")
        _save(fig, out_dir, f"alphas_{safe_stem(cell)}", plot_formats, result)
    if cells:
        fig = plot_final_alphas(edge_rows, cells, kept, f"{name}: final architecture weights")
        _save(fig, out_dir, "alphas_final", plot_formats, result)

    macro_labels = [lb for lb in dict.fromkeys(alphas["label"]) if parse_edge_label(lb) is None]
    if macro_labels:
        fig = plot_macro(alphas[alphas["label"].isin(macro_labels)], macro_labels, final,
                         f"{name}: macro choices over the search")
        _save(fig, out_dir, "macro", plot_formats, result)
    else:
        result.messages.append("no macro plot: the search had no macro choice (e.g. single-frame input: "
                               "no alignment to choose)")

    changes = epoch_changes(derived_genotypes(run_dir, final), final)
    if changes:
        path = out_dir / "derived_by_epoch.md"
        path.write_text(derived_markdown(changes, final, name), encoding="utf-8")
        result.paths.append(path)
        fig = plot_changes(changes, f"{name}: when the genotype settled")
        _save(fig, out_dir, "derived_changes", plot_formats, result)
    else:
        result.messages.append(f"no derived_by_epoch: {run_dir / 'derived.jsonl'} is missing or empty")

    decision = decision_of_alphas(alphas)  # from the table read above
    path = out_dir / "decision.md"
    path.write_text(decision_markdown(decision, name), encoding="utf-8")
    result.paths.append(path)
    result.messages.append(decision.summary() + ("" if decision.decided else f" ({decision.advice()})"))

    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path)
        missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
        if missing:
            raise UserError(f"{metrics_path} lacks the column(s) {missing}; expected epoch, train_loss, val_psnr, "
                            "seconds (re-run the search to regenerate it)")
        if not metrics.empty:
            fig = plot_metrics(metrics, f"{name}: supernet during the search")
            _save(fig, out_dir, "metrics", plot_formats, result)
    else:
        result.messages.append(f"no metrics plot: {metrics_path} is missing")
    log.info("rendered run %s into %s (%d files)", run_dir, out_dir, len(result.paths))
    return result


def _kept_edges(genotype: Genotype, cell: str) -> dict[tuple[int, int], str]:
    """(node number, input) -> op of the edges the genotype kept in ``cell`` (DAG cells)."""
    found = genotype.cells.get(cell)
    if found is None or found.kind != "dag":
        return {}
    return {(found.n_inputs + i, e.input): e.op for i, node in enumerate(found.nodes) for e in node}
