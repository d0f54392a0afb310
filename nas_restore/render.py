"""Drawing genotypes: each cell as a DARTS-paper-style graph, the macro network, and an overview.

The graphs are built first as networkx objects (:func:`cell_graph`, :func:`macro_graph`), so tests and
other tools can inspect them, and only then drawn: with Graphviz ``dot`` when it is installed (the
look of the DARTS paper: inputs light green, intermediate nodes light blue, output light yellow,
left to right, op names on the edges), otherwise with matplotlib, so a machine without Graphviz still
gets pictures plus the ``.gv`` sources to render elsewhere.
"""

from __future__ import annotations

import html
import io
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import graphviz
import networkx as nx

from nas_restore.config import ConfigError
from nas_restore.genotype import GenotypeError
from nas_restore.graph import OUTPUT_NAME, cell_graph, macro_graph, own_macro_graph
from nas_restore.ops import op_family
from nas_restore.outputs import check_output_folder

if TYPE_CHECKING:
    from nas_restore.genotype import Genotype
    from nas_restore.analysis import GenotypeDiff

logger = logging.getLogger(__name__)

NO_DOT_MESSAGE = ("Graphviz 'dot' not found: wrote .gv sources and matplotlib drawings; install it with "
                  "`apt-get install graphviz` (Debian/Ubuntu) or `conda install graphviz` for the full rendering")

# DARTS's visualize.py colours (X11 darkseagreen2, lightblue, palegoldenrod) as hex, which both Graphviz
# and matplotlib read; then the macro graph's kinds.
NODE_COLORS = {"input": "#b4eeb4", "intermediate": "#add8e6", "output": "#eee8aa",
               "module": "#e6e6e6", "cell": "#add8e6", "fusion": "#f5c6a5"}
# One colour per op family (Tableau 10, dark enough to read as text on white).
FAMILY_COLORS = {
    "residual": "#1f77b4", "dense": "#ff7f0e", "dilated": "#2ca02c", "attention": "#d62728",
    "separable": "#9467bd", "skip": "#17becf", "none": "#c7c7c7", "pool": "#8c564b",
    "conv": "#e377c2", "other": "#bcbd22",
}
JOIN_COLOR = "#9a9a9a"  # edges into c_{k} (concat / residual sum) and macro data flow
FONT = "Times-Roman"
MPL_FORMATS = ("png", "svg", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff")
DOT_FORMATS = {"png", "svg", "pdf", "eps", "ps", "jpg", "jpeg", "gif"}  # what every Graphviz build writes
PNG_DPI = 200

# What c_{k} of a DAG cell is, per space: DARTS concatenates the nodes; TMICS's cells fuse the concat
# back to C channels and add the previous cell (search_spaces/tmics.py, CellOutput).
DAG_OUTPUT_MEANINGS = {"tmics": "concat → 1×1 conv → + c_{k-1} (residual)"}
DAG_OUTPUT_DEFAULT = "concat of its inputs"
CHAIN_OUTPUT = "input + chain"

# ``render --diff``: edges of the union of two cells, by where they occur.
DIFF_COLORS = {"common": "#9a9a9a", "only_a": "#1f77b4", "only_b": "#ff7f0e", "changed": "#d62728"}
DIFF_MEANINGS = {"common": "in A and B", "only_a": "only in A", "only_b": "only in B",
                 "changed": "changed op: A op / B op"}


def output_meaning(space: str | None, chain: bool) -> str:
    """What the cell output ``c_{k}`` computes, in words, for the legend."""
    if chain:
        return CHAIN_OUTPUT
    return DAG_OUTPUT_MEANINGS.get(space or "", DAG_OUTPUT_DEFAULT)


@dataclass
class RenderResult:
    """What :func:`render_genotype` wrote, whether Graphviz drew it, and notes for the user."""

    paths: list[Path] = field(default_factory=list)
    dot_available: bool = True
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Graphviz


def _edge_style(data: dict) -> dict[str, str]:
    """Colour, label and line style of an edge: by op family for cell edges, grey for data flow."""
    if "status" in data:  # the union of two cells (render --diff)
        return _diff_edge_style(data)
    if "op" not in data:  # macro graph edge
        style = {"color": JOIN_COLOR, "label": data.get("label", "")}
        if data.get("kind") == "guide":
            style["style"] = "dashed"
        return style
    op = data["op"]
    if op in ("concat", "sum"):
        return {"color": JOIN_COLOR, "label": ""}
    if op == "residual":
        return {"color": JOIN_COLOR, "style": "dashed", "label": "+"}
    color = FAMILY_COLORS[op_family(op)]
    return {"color": color, "fontcolor": color, "label": op}


def _diff_edge_style(data: dict) -> dict[str, str]:
    status, op = data["status"], data["op"]
    color = DIFF_COLORS[status]
    style = {"color": color, "fontcolor": color, "label": "" if op in ("concat", "sum") else op}
    if status == "common":
        style["fontcolor"] = "#555555"
    if status == "only_a" or (status == "common" and op == "residual"):
        style["style"] = "dashed"
    if status != "common":
        style["penwidth"] = "2.6"
    return style


def _html_name(name: str) -> str:
    """``c_{k-2}`` -> c<SUB>k−2</SUB> for Graphviz HTML labels."""
    if name.startswith("c_{") and name.endswith("}"):
        return f"c<SUB>{html.escape(name[3:-1]).replace('-', '−')}</SUB>"
    return html.escape(name)


def _html_text(text: str) -> str:
    """Plain legend text with ``c_{k-1}``-style names as HTML subscripts."""
    return re.sub(r"c_\{[^}]*\}", lambda m: _html_name(m.group(0)), html.escape(text).replace("&#x27;", "'"))


def _legend_table(graph: nx.MultiDiGraph, chain: bool, space: str | None = None) -> str:
    rows = ['<TR><TD COLSPAN="2"><B>Legend</B></TD></TR>']
    meanings = {"c_{k-2}": "output of cell k−2", "c_{k-1}": "output of cell k−1 (previous cell)",
                OUTPUT_NAME: _html_text("cell output: " + output_meaning(space, chain))}
    for node, data in graph.nodes(data=True):
        if data["kind"] in ("input", "output"):
            meaning = meanings.get(node, "cell input")
            rows.append(f'<TR><TD BGCOLOR="{NODE_COLORS[data["kind"]]}">{_html_name(node)}</TD>'
                        f'<TD ALIGN="LEFT">{meaning}</TD></TR>')
    if any(d["kind"] == "intermediate" for _, d in graph.nodes(data=True)):
        rows.append(f'<TR><TD BGCOLOR="{NODE_COLORS["intermediate"]}">0, 1, …</TD>'
                    f'<TD ALIGN="LEFT">{"output of op 1, 2, …" if chain else "node: sum of its inputs"}</TD></TR>')
    families = sorted({op_family(d["op"]) for *_, d in graph.edges(data=True)
                       if d["op"] not in ("concat", "sum", "residual")}, key=list(FAMILY_COLORS).index)
    for family in families:
        rows.append(f'<TR><TD BGCOLOR="{FAMILY_COLORS[family]}"> </TD><TD ALIGN="LEFT">{family} op</TD></TR>')
    return ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
            + "".join(rows) + "</TABLE>>")


def _new_digraph(name: str, title: str | None) -> graphviz.Digraph:
    dot = graphviz.Digraph(
        name=name, engine="dot",
        graph_attr={"rankdir": "LR", "fontname": FONT, "fontsize": "22", "nodesep": "0.35",
                    "ranksep": "0.6", "pad": "0.2"},
        node_attr={"style": "filled", "shape": "rect", "fontname": FONT, "fontsize": "20",
                   "height": "0.5", "width": "0.5", "penwidth": "2"},
        edge_attr={"fontname": FONT, "fontsize": "16", "penwidth": "1.6", "arrowsize": "0.8"},
    )
    if title:
        dot.attr(label=title, labelloc="t")
    return dot


def cell_digraph(graph: nx.MultiDiGraph, title: str | None = None, legend: bool = True,
                 space: str | None = None) -> graphviz.Digraph:
    """Graphviz drawing of a :func:`cell_graph`, DARTS style, with a legend table on the right.

    ``space`` picks the legend's meaning of ``c_{k}`` (default: ``graph.graph["space"]``, else DARTS's).
    """
    space = space if space is not None else graph.graph.get("space")
    dot = _new_digraph("cell", title)
    for node, data in graph.nodes(data=True):
        dot.node(node, label=f"<{_html_name(node)}>", fillcolor=NODE_COLORS[data["kind"]])
    for u, v, data in graph.edges(data=True):
        dot.edge(u, v, **_edge_style(data))
    # keep all inputs on the first rank, as in the DARTS figures
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
    with dot.subgraph() as same:
        same.attr(rank="same")
        for upper, lower in zip(inputs, inputs[1:]):  # c_{k-2} above c_{k-1}, as in the paper
            same.edge(upper, lower, style="invis")
    if legend:
        chain = any(d["op"] == "residual" for *_, d in graph.edges(data=True))
        table = _diff_legend_table(graph) if _is_diff(graph) else _legend_table(graph, chain, space)
        dot.node("legend", label=table, shape="plaintext", style="", fontsize="14")
        dot.edge(OUTPUT_NAME, "legend", style="invis")  # legend to the right of the output
    return dot


def _is_diff(graph: nx.Graph) -> bool:
    return any("status" in d for *_, d in graph.edges(data=True))


def _diff_legend_table(graph: nx.MultiDiGraph) -> str:
    a, b = graph.graph.get("a_label", "A"), graph.graph.get("b_label", "B")
    rows = ['<TR><TD COLSPAN="2"><B>Legend</B></TD></TR>',
            f'<TR><TD>A</TD><TD ALIGN="LEFT">{html.escape(a)}</TD></TR>',
            f'<TR><TD>B</TD><TD ALIGN="LEFT">{html.escape(b)}</TD></TR>']
    present = {d["status"] for *_, d in graph.edges(data=True)}
    for status in DIFF_COLORS:
        if status in present:
            dash = " (dashed)" if status == "only_a" else ""
            rows.append(f'<TR><TD BGCOLOR="{DIFF_COLORS[status]}"> </TD>'
                        f'<TD ALIGN="LEFT">{DIFF_MEANINGS[status]}{dash}</TD></TR>')
    return ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
            + "".join(rows) + "</TABLE>>")


def macro_digraph(graph: nx.DiGraph, title: str | None = None) -> graphviz.Digraph:
    """Graphviz drawing of a :func:`macro_graph`: cells as light-blue boxes, modules grey."""
    dot = _new_digraph("network", title)
    dot.attr("node", shape="box", style="rounded,filled", fontsize="16")
    for node, data in graph.nodes(data=True):
        label = data.get("label", node).replace("\n", "\\n")  # DOT's own line break escape
        dot.node(node, label=label, fillcolor=NODE_COLORS[data["kind"]])
    for u, v, data in graph.edges(data=True):
        dot.edge(u, v, **_edge_style(data))
    return dot


# --------------------------------------------------------------------------------------------------
# matplotlib fallback

UNIT = 0.5  # inches per layout unit: the fallback drawings are laid out at a fixed physical scale
NODE_FONT, EDGE_FONT = 9, 7


@dataclass
class _Layout:
    """Node centres and half box sizes (layout units) of a fallback drawing, and its extent."""

    pos: dict[str, tuple[float, float]]
    half: dict[str, tuple[float, float]]
    edges: list[tuple[str, str, dict, float, float]]  # u, v, data, arc3 rad, label position t
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    @property
    def size(self) -> tuple[float, float]:  # inches
        return (self.xlim[1] - self.xlim[0]) * UNIT, (self.ylim[1] - self.ylim[0]) * UNIT


def _mpl_label(text: str) -> str:
    return f"${text[:2]}{{{text[3:-1]}}}$" if text.startswith("c_{") and text.endswith("}") else text


def _text_size(text: str, fontsize: float) -> tuple[float, float]:
    """Width and height of a (multi-line) label, in layout units."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="serif", size=fontsize)
    lines = text.split("\n") if not text.startswith("$") else [text]
    width = max(TextPath((0, 0), line or " ", prop=prop).get_extents().width for line in lines)
    return width / 72 / UNIT, len(lines) * fontsize * 1.25 / 72 / UNIT


def _layout(graph: nx.DiGraph | nx.MultiDiGraph) -> _Layout:
    """Layered layout, left to right by topological generation (as rankdir=LR), at a fixed physical scale.

    networkx's ``multipartite_layout`` gives the same columns but in a unit box: fitting it to boxes sized
    to their labels took more code than placing the generations here. The edge routing (``_crosses``,
    ``_box_exit``) bends edges around boxes and ends arrows on rectangles, which networkx's drawing cannot.
    """
    pad = (0.4 * NODE_FONT + 1) / 72 / UNIT  # the label box padding (0.4 em) and its edge, in layout units
    half = {}
    for node, data in graph.nodes(data=True):
        w, h = _text_size(_mpl_label(data.get("label", node)), NODE_FONT)
        half[node] = (w / 2 + pad, h / 2 + pad)
    label_w = max([_text_size(_edge_style(d)["label"], EDGE_FONT)[0]
                   for *_, d in graph.edges(data=True) if _edge_style(d)["label"]] or [0.0])
    generations = [sorted(g, key=list(graph.nodes).index) for g in nx.topological_generations(graph)]
    row = max(2 * hh for _, hh in half.values()) + 1.6  # the tallest box, plus room for edge labels
    pos: dict[str, tuple[float, float]] = {}
    x = 0.0
    for i, generation in enumerate(generations):
        widest = max(half[n][0] for n in generation)
        if i:
            x += previous + widest + max(label_w + 1.0, 1.2)
        for j, node in enumerate(generation):
            pos[node] = (x, ((len(generation) - 1) / 2 - j) * row)
        previous = widest
    xs = [pos[n][0] + s * half[n][0] for n in pos for s in (-1, 1)]
    ys = [pos[n][1] + s * half[n][1] for n in pos for s in (-1, 1)]

    edges = []
    totals: dict[tuple[str, str], int] = {}
    for u, v in graph.edges():
        totals[(u, v)] = totals.get((u, v), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for u, v, data in graph.edges(data=True):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        length = max(((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5, 1e-6)
        index, total = seen.get((u, v), 0), totals[(u, v)]
        seen[(u, v)] = index + 1
        t = 0.55  # label a little past the middle: edges leaving one node do not stack their labels
        if total > 1:  # spread parallel edges, and their labels along them
            offset = index - (total - 1) / 2
            rad, t = offset * 0.35, t + 0.2 * offset
        elif any(_crosses(pos[u], pos[v], pos[n], half[n]) for n in pos if n not in (u, v)):
            # the straight line would run through a box it jumps over: bow out by a box height or so
            rad = min(0.3, 2 * (row / 2 + 0.3) / length)
        else:
            rad = 0.0
        edges.append((u, v, data, rad, t))
        bulge = abs(rad) * length / 2  # how far the curve's middle leaves the straight line
        ys += [min(y1, y2) - bulge - 0.3, max(y1, y2) + bulge + 0.3]
    return _Layout(pos, half, edges, (min(xs) - 0.3, max(xs) + 0.3), (min(ys) - 0.9, max(ys) + 0.9))


def _crosses(a: tuple[float, float], b: tuple[float, float], centre: tuple[float, float],
             half: tuple[float, float]) -> bool:
    """Whether the segment a-b passes within a box (plus a margin for the edge label) around centre."""
    (x1, y1), (x2, y2), (cx, cy) = a, b, centre
    if not min(x1, x2) < cx < max(x1, x2):
        return False
    y = y1 + (y2 - y1) * (cx - x1) / (x2 - x1)
    return abs(y - cy) < half[1] + 0.4


def _box_exit(half: tuple[float, float], dx: float, dy: float) -> float:
    """Distance (layout units) from a box centre to its border in direction (dx, dy)."""
    norm = (dx * dx + dy * dy) ** 0.5 or 1.0
    dx, dy = abs(dx) / norm, abs(dy) / norm
    return min(half[0] / dx if dx else float("inf"), half[1] / dy if dy else float("inf"))


def draw_graph_matplotlib(graph: nx.DiGraph | nx.MultiDiGraph, ax, title: str | None = None,
                          legend: bool = True, layout: _Layout | None = None) -> None:
    """Draw a cell or macro graph on a matplotlib axis (the fallback when ``dot`` is missing).

    The axis should be ``layout.size`` inches large for arrows to stop exactly at the boxes.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch

    layout = layout or _layout(graph)
    pos, half = layout.pos, layout.half
    ax.set_xlim(*layout.xlim)
    ax.set_ylim(*layout.ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    points_per_unit = UNIT * 72
    for u, v, data, rad, t in layout.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)  # arc3's control point
        style = _edge_style(data)
        shrink_a = _box_exit(half[u], cx - x1, cy - y1) * points_per_unit + 1
        shrink_b = _box_exit(half[v], x2 - cx, y2 - cy) * points_per_unit + 1
        ax.add_patch(FancyArrowPatch(
            (x1, y1), (x2, y2), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=10,
            color=style["color"], lw=1.2 * float(style.get("penwidth", 1.6)) / 1.6, shrinkA=shrink_a, shrinkB=shrink_b, zorder=1,
            linestyle="--" if style.get("style") == "dashed" else "-"))
        if style.get("label"):  # at t along the quadratic Bezier that arc3 draws
            mx = (1 - t) ** 2 * x1 + 2 * t * (1 - t) * cx + t ** 2 * x2
            my = (1 - t) ** 2 * y1 + 2 * t * (1 - t) * cy + t ** 2 * y2
            ax.text(mx, my, style["label"], fontsize=EDGE_FONT, color=style.get("fontcolor", "black"),
                    ha="center", va="center", zorder=3, family="serif",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
    for node, data in graph.nodes(data=True):
        ax.text(*pos[node], _mpl_label(data.get("label", node)), ha="center", va="center", fontsize=NODE_FONT,
                zorder=4, family="serif", linespacing=1.0,
                bbox={"boxstyle": "square,pad=0.4", "fc": NODE_COLORS[data["kind"]], "ec": "black", "lw": 1.0})
    if title:
        ax.set_title(title, fontsize=11, family="serif")
    if legend and graph.is_multigraph() and _is_diff(graph):
        present = {d["status"] for *_, d in graph.edges(data=True)}
        handles = [Line2D([], [], color=DIFF_COLORS[s], lw=2, linestyle="--" if s == "only_a" else "-",
                          label=DIFF_MEANINGS[s]) for s in DIFF_COLORS if s in present]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False,
                  prop={"family": "serif", "size": 7}, title_fontproperties={"family": "serif", "size": 7},
                  title=f"A = {graph.graph.get('a_label', 'A')}    B = {graph.graph.get('b_label', 'B')}")
    elif legend and graph.is_multigraph():
        inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
        chain = any(d["op"] == "residual" for *_, d in graph.edges(data=True))
        cells = ", ".join(n[3:-1].replace("-", "−") for n in inputs if n.startswith("c_{"))
        handles = [Patch(fc=NODE_COLORS["input"], ec="black",
                         label=", ".join(_mpl_label(n) for n in inputs) + f": outputs of cells {cells}"),
                   Patch(fc=NODE_COLORS["output"], ec="black", label="$c_{k}$: cell output: " + re.sub(
                       r"c_\{([^}]*)\}", r"$c_{\1}$", output_meaning(graph.graph.get("space"), chain)))]
        families = sorted({op_family(d["op"]) for *_, d in graph.edges(data=True)
                           if d["op"] not in ("concat", "sum", "residual")},
                          key=list(FAMILY_COLORS).index)
        handles += [Line2D([], [], color=FAMILY_COLORS[f], lw=2, label=f"{f} op") for f in families]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
                  frameon=False, prop={"family": "serif", "size": 7})


_TITLE_IN, _LEGEND_IN = 0.4, 0.75  # room above (title) and below (legend) each fallback drawing


def _save_matplotlib(graph, path: Path, title: str | None) -> None:
    from matplotlib.figure import Figure

    layout = _layout(graph)
    w, h = layout.size
    fig = Figure(figsize=(w, h + _TITLE_IN + _LEGEND_IN))
    ax = fig.add_axes((0, _LEGEND_IN / (h + _TITLE_IN + _LEGEND_IN), 1, h / (h + _TITLE_IN + _LEGEND_IN)))
    draw_graph_matplotlib(graph, ax, title, layout=layout)
    fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.1)


# --------------------------------------------------------------------------------------------------
# files


def render_genotype(genotype: Genotype, out_dir: str | Path, formats: Iterable[str] = ("svg", "png"),
                    use_dot: bool | None = None, overview: bool = True) -> RenderResult:
    """Write ``cell_<name>.<fmt>`` + ``.gv`` per cell, ``network.<fmt>`` + ``.gv`` (spaces with a macro
    structure) and ``overview.png`` (all of them on one picture) into ``out_dir``.

    ``use_dot=None`` uses Graphviz when its ``dot`` program is on PATH, else matplotlib drawings.
    ``overview=False`` skips the overview (about a second per genotype saved).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = [f.lower().lstrip(".") for f in formats]
    if use_dot is None:
        use_dot = shutil.which("dot") is not None
    result = RenderResult(dot_available=use_dot)
    if not use_dot:
        _note_no_dot(result)
    allowed = DOT_FORMATS & set(graphviz.FORMATS) if use_dot else set(MPL_FORMATS)
    bad = [f for f in formats if f not in allowed and f != "gv"]
    if bad:
        raise ConfigError(f"cannot write format(s) {bad}; choose from {', '.join(sorted(allowed))}")
    formats = [f for f in formats if f != "gv"]
    if not genotype.cells and not genotype.macro:
        raise GenotypeError("the genotype has no cells and no macro choices to draw")

    figures: list[tuple[str, nx.Graph, graphviz.Digraph, str]] = []
    for name, cell in genotype.cells.items():
        graph = cell_graph(cell)
        graph.graph["space"] = genotype.space  # the legend says what c_{k} is in this space
        title = f"{name} {'chain cell' if cell.kind == 'chain' else 'cell'}"
        stem = "cell_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)  # a cell name is not trusted as a path
        figures.append((stem, graph, cell_digraph(graph, title=title), title))
    if own_macro_graph(genotype) is not None or not genotype.cells:
        graph = macro_graph(genotype)
        title = f"{genotype.space} network"
        figures.append(("network", graph, macro_digraph(graph, title=title), title))
    else:
        result.messages.append(f"no macro network drawn: space {genotype.space!r} has no macro structure "
                               "registered (cells only)")

    pngs: dict[str, bytes] = {}
    for stem, graph, dot, title in figures:
        gv_path = out_dir / f"{stem}.gv"
        gv_path.write_text(dot.source, encoding="utf-8")
        result.paths.append(gv_path)
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if result.dot_available:
                try:
                    data = _pipe(dot, fmt)
                except graphviz.ExecutableNotFound:
                    result.dot_available = False
                    _note_no_dot(result)
                else:
                    path.write_bytes(data)
                    result.paths.append(path)
                    if fmt == "png":
                        pngs[stem] = data
                    continue
            if fmt not in MPL_FORMATS:
                raise ConfigError(f"without Graphviz 'dot', {fmt!r} cannot be drawn; use one of {MPL_FORMATS}")
            _save_matplotlib(graph, path, title)
            result.paths.append(path)

    if not overview:
        return result
    overview_path = out_dir / "overview.png"
    if result.dot_available:
        try:
            for stem, _, dot, _ in figures:
                if stem not in pngs:
                    pngs[stem] = _pipe(dot, "png")
        except graphviz.ExecutableNotFound:
            result.dot_available = False
            _note_no_dot(result)
    if result.dot_available:
        _compose_overview(genotype, [(stem, pngs[stem]) for stem, *_ in figures], overview_path)
    else:
        _draw_overview_matplotlib(genotype, [(stem, graph, title) for stem, graph, _, title in figures],
                                  overview_path)
    result.paths.append(overview_path)
    logger.info("rendered genotype %s into %s (%d files)", _genotype_label(genotype), out_dir, len(result.paths))
    return result


def _pipe(dot: graphviz.Digraph, fmt: str) -> bytes:
    if fmt in ("png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff"):
        dot = dot.copy()
        dot.attr(dpi=str(PNG_DPI))
    try:
        return dot.pipe(format=fmt)
    except graphviz.CalledProcessError as err:
        raise RuntimeError(f"Graphviz failed to draw {dot.name!r} as {fmt}: {err.stderr!r}") from err


def _note_no_dot(result: RenderResult) -> None:
    if NO_DOT_MESSAGE not in result.messages:
        result.messages.append(NO_DOT_MESSAGE)
        logger.warning(NO_DOT_MESSAGE)


def _genotype_label(genotype: Genotype) -> str:
    name = (genotype.metadata or {}).get("name")
    ident = genotype.genotype_id() if hasattr(genotype, "genotype_id") else ""
    return " ".join(p for p in (genotype.space, name, ident) if p)


def _compose_overview(genotype: Genotype, images: list[tuple[str, bytes]], path: Path) -> None:
    """All cells side by side (the network above them), pasted pixel for pixel from the Graphviz PNGs.

    Pasting arrays (rather than drawing them on a matplotlib figure) keeps every pixel of the
    Graphviz rendering and takes milliseconds instead of seconds.
    """
    import matplotlib.image as mpimg
    import numpy as np

    def rgb(data: bytes) -> np.ndarray:
        array = mpimg.imread(io.BytesIO(data), format="png")
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.shape[2] == 4:  # composite transparency onto white
            array = array[..., :3] * array[..., 3:] + (1 - array[..., 3:])
        return array[..., :3].astype(np.float32, copy=False)

    def pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
        top, left = (height - array.shape[0]) // 2, (width - array.shape[1]) // 2
        canvas = np.ones((height, width, 3), dtype=np.float32)
        canvas[top:top + array.shape[0], left:left + array.shape[1]] = array
        return canvas

    title = graphviz.Digraph("title", graph_attr={"pad": "0.1"})
    title.node("t", label=f"genotype {_genotype_label(genotype)}", shape="plaintext", fontname=FONT,
               fontsize="28")
    gap = PNG_DPI // 4
    arrays = [(stem, rgb(data)) for stem, data in images]
    cells = [a for stem, a in arrays if stem != "network"]
    rows = [rgb(_pipe(title, "png"))]
    rows += [a for stem, a in arrays if stem == "network"]
    if cells:  # a genotype of macro choices only (rrgnet, rdmc) has none
        height = max(a.shape[0] for a in cells)
        rows.append(np.concatenate([pad(a, height, a.shape[1] + gap) for a in cells], axis=1))
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([pad(r, r.shape[0] + gap, width) for r in rows], axis=0)
    # half resolution (2x2 box filter): an overview does not need print dpi, and it saves 4x faster
    p = picture[:picture.shape[0] // 2 * 2, :picture.shape[1] // 2 * 2]
    picture = (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4
    mpimg.imsave(path, np.clip(picture, 0, 1), format="png", dpi=PNG_DPI // 2)


def _draw_overview_matplotlib(genotype: Genotype, graphs: list[tuple[str, nx.Graph, str]], path: Path) -> None:
    """The fallback overview: the network on top, every cell side by side below, each at true scale."""
    from matplotlib.figure import Figure

    layouts = [(stem, graph, title, _layout(graph)) for stem, graph, title in graphs]
    gap = 0.4
    rows = [[item for item in layouts if item[0] == "network"], [item for item in layouts if item[0] != "network"]]
    rows = [r for r in rows if r]
    row_w = [sum(item[3].size[0] for item in r) + gap * (len(r) - 1) for r in rows]
    row_h = [max(item[3].size[1] for item in r) + _TITLE_IN + _LEGEND_IN for r in rows]
    width, height = max(row_w), sum(row_h) + 0.5
    fig = Figure(figsize=(width, height))
    fig.suptitle(f"genotype {_genotype_label(genotype)}", fontsize=13, family="serif", y=1 - 0.2 / height)
    top = height - 0.5
    for r, w, h in zip(rows, row_w, row_h):
        left = (width - w) / 2
        for stem, graph, title, layout in r:
            aw, ah = layout.size
            bottom = top - h + _LEGEND_IN + (h - _TITLE_IN - _LEGEND_IN - ah) / 2
            ax = fig.add_axes((left / width, bottom / height, aw / width, ah / height))
            draw_graph_matplotlib(graph, ax, title, layout=layout)
            left += aw + gap
        top -= h
    fig.savefig(path, dpi=PNG_DPI / 2, bbox_inches="tight", pad_inches=0.1)


# --------------------------------------------------------------------------------------------------
# differences between two genotypes


def render_diff(diff: GenotypeDiff, out_dir: str | Path, formats: Iterable[str] = ("svg", "png"),
                use_dot: bool | None = None) -> RenderResult:
    """Write ``diff_<cell>.gv`` (+ ``formats``) per cell and ``diff.txt`` (the text summary) into ``out_dir``.

    Each drawing is the union of the cell in A and in B (:func:`nas_restore.analysis.diff_genotypes`):
    common edges grey, A-only blue dashed, B-only orange, a changed op on the same pair of nodes red
    with "A op / B op"; the title states the macro differences.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = [f.lower().lstrip(".") for f in formats if f.lower().lstrip(".") != "gv"]
    if use_dot is None:
        use_dot = shutil.which("dot") is not None
    result = RenderResult(dot_available=use_dot)
    if not use_dot:
        _note_no_dot(result)
    bad = [f for f in formats if f not in (DOT_FORMATS & set(graphviz.FORMATS) if use_dot else set(MPL_FORMATS))]
    if bad:
        raise ConfigError(f"cannot write format(s) {bad}; choose from "
                         f"{', '.join(sorted(graphviz.FORMATS if use_dot else MPL_FORMATS))}")
    macro = "; ".join(f"{k}: A {a} / B {b}" for k, (a, b) in diff.macro.items()) or "same macro"
    summary = out_dir / "diff.txt"
    summary.write_text(diff.summary() + "\n", encoding="utf-8")
    result.paths.append(summary)
    for name, cell in diff.cells.items():
        graph = cell.graph
        graph.graph.update(a_label=diff.a_label, b_label=diff.b_label)
        changed = "identical" if cell.identical else (
            f"only in {cell.presence[-1].upper()}" if cell.presence != "both"
            else f"{cell.num_changed} op edge(s) differ")
        title = f"cell {name}: {changed} ({macro})"
        stem = "diff_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        dot = cell_digraph(graph, title=title)
        (out_dir / f"{stem}.gv").write_text(dot.source, encoding="utf-8")
        result.paths.append(out_dir / f"{stem}.gv")
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if result.dot_available:
                try:
                    path.write_bytes(_pipe(dot, fmt))
                    result.paths.append(path)
                    continue
                except graphviz.ExecutableNotFound:
                    result.dot_available = False
                    _note_no_dot(result)
            if fmt not in MPL_FORMATS:
                raise ConfigError(f"without Graphviz 'dot', {fmt!r} cannot be drawn; use one of {MPL_FORMATS}")
            _save_matplotlib(graph, path, title)
            result.paths.append(path)
    logger.info("rendered the difference of %s and %s into %s", diff.a_label, diff.b_label, out_dir)
    return result
