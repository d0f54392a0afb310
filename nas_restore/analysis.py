"""Analysing a genotype as a graph: depth, op histograms, longest paths, parameters, and differences.

The drawings of :mod:`nas_restore.render` answer "what does it look like"; this module answers "how
deep, how big, what is on the critical path, what changed": a whole-network ``networkx`` graph
(:func:`genotype_graph`: the macro structure with every cell instance expanded into its cell graph)
and a :class:`GenotypeReport` (:func:`inspect_genotype`). :func:`diff_genotypes` aligns two genotypes
edge by edge, for ``nas-restore render --diff`` and for following a search epoch by epoch.

Counting conventions: a cell's *depth* is the number of operations on its longest path from a cell
input to the cell output; the joins (``concat`` into ``c_{k}``, the chain cell's ``sum`` and
``residual``) are data flow, not operations, and do not count. ``skip_connect`` does count: it is an
edge the search chose.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from nas_restore.build import build_model
from nas_restore.genotype import CellGenotype, Genotype
from nas_restore.graph import (JOIN_OPS, OUTPUT_NAME, cell_graph, genotype_graph, is_op_edge, longest_op_path,
                               own_macro_graph)
from nas_restore.ops import OPS, build_op, op_family
from nas_restore.profiling import count_parameters
from search_spaces import space_of, validate_genotype

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------------
# reports


@dataclass
class OpInstance:
    """One searched operation of a cell, where it sits and what it costs at the genotype's width."""

    node: str          # the node it feeds, as drawn: "0", "1", ... (chain cells: the op's position)
    input: str         # the node it reads: "c_{k-2}", "c_{k-1}", "0", ...
    op: str
    family: str
    params: int | None  # None: a foreign op (e.g. DARTS's sep_conv_3x3) or an unknown channel width


@dataclass
class CellReport:
    name: str
    kind: str
    n_inputs: int
    num_nodes: int
    num_ops: int
    depth: int                        # ops on the longest input -> output path
    longest_path: list[str]           # its ops, in order
    longest_path_nodes: list[str]     # the nodes it visits, input to output
    histogram: dict[str, int]
    ops: list[OpInstance]
    op_params: int | None             # the ops' parameters summed (None if any is unknown)
    instances: int                    # how many copies of the cell the network stacks
    unused_nodes: list[str]           # intermediate nodes whose output reaches nothing (wasted compute)


@dataclass
class GenotypeReport:
    """What :func:`inspect_genotype` found; ``to_dict()`` is the ``inspect --json`` output."""

    space: str
    genotype_id: str
    name: str | None
    macro: dict[str, str]
    fusion: dict[str, Any]
    channels: int | None
    cells: dict[str, CellReport]
    histogram: dict[str, int]          # over the genotype's cells (each cell counted once)
    network_histogram: dict[str, int]  # over the network (each cell times its instances)
    cell_op_params: int | None         # all op instances of the network
    total_params: int | None           # the built network (spaces of ours only)
    params_by_module: dict[str, int]   # the built network's top-level modules
    network_depth: int | None          # ops on the longest path through the whole network
    network_longest_path: list[str]    # "<instance>: <op>" along it
    notes: list[str] = field(default_factory=list)
    graph: nx.MultiDiGraph | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "graph"}
        data = json.loads(json.dumps(data, default=_plain))
        if self.graph is not None:
            data["graph"] = {"nodes": self.graph.number_of_nodes(),
                             "op_edges": sum(is_op_edge(d) for *_, d in self.graph.edges(data=True)),
                             "edges": self.graph.number_of_edges()}
        return data


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@functools.lru_cache(maxsize=256)
def op_parameters(op: str, channels: int) -> int:
    """Parameters of one instance of a registered op at ``channels`` channels (built once, cached)."""
    return count_parameters(build_op(op, channels))


def inspect_genotype(genotype: Genotype, channels: int | None = None,
                     build_network: bool = True) -> GenotypeReport:
    """Depth, histograms, longest paths and parameter counts of a genotype.

    ``channels`` defaults to the genotype's ``space_config.channels``; without one (a DARTS text
    genotype) op parameters are None. ``build_network`` builds the network of a space of ours to count
    its parameters (a second or so at the paper's width). Raises :class:`GenotypeError` for a genotype
    that does not fit its space (an unknown op, a dangling input).
    """
    validate_genotype(genotype)
    own_space = _own_space(genotype.space)
    notes: list[str] = []
    if channels is None:
        raw = (genotype.space_config or {}).get("channels")
        channels = int(raw) if isinstance(raw, int) else None
    if channels is None:
        notes.append("channel width unknown (no space_config.channels): op parameters are not counted; "
                     "pass channels (CLI: --channels C) to count the ops nas-restore knows by name")
    elif not own_space:
        notes.append(f"space {genotype.space!r} is not a nas-restore space: op names are counted as nas-restore's "
                     "ops of the same name, foreign ops as unknown")

    graph = genotype_graph(genotype)
    instances = Counter(d["cell"] for _, d in graph.nodes(data=True) if d.get("kind") == "output" and "cell" in d)
    cells = {name: _cell_report(name, cell, channels, instances.get(name, 1)) for name, cell in genotype.cells.items()}
    histogram: Counter[str] = Counter()
    network_histogram: Counter[str] = Counter()
    for report in cells.values():
        histogram.update(report.histogram)
        for op, n in report.histogram.items():
            network_histogram[op] += n * report.instances
    op_params = [r.op_params * r.instances if r.op_params is not None else None for r in cells.values()]
    cell_op_params = sum(op_params) if op_params and None not in op_params else None
    foreign = sorted({op.op for r in cells.values() for op in r.ops if op.op not in OPS})
    if foreign and channels is not None:
        notes.append(f"ops not in nas-restore's registry (parameters unknown): {', '.join(foreign)}")

    network_depth, network_path = None, []
    if own_macro_graph(genotype) is not None:
        sources = [n for n in graph.nodes if graph.in_degree(n) == 0]
        sinks = [n for n, d in graph.nodes(data=True) if d.get("kind") == "output" and d.get("level") == "macro"]
        if sinks:
            path = longest_op_path(graph, sources, sinks[0])
            network_path = [f"{graph.nodes[v]['instance']}: {d['op']}" for _, v, d in path if is_op_edge(d)]
            network_depth = len(network_path)

    total, by_module = None, {}
    if own_space and build_network:
        model = build_model(genotype)
        total = count_parameters(model)
        by_module = {name: count_parameters(child) for name, child in model.named_children()}
    elif not own_space:
        notes.append(f"no network parameters: space {genotype.space!r} has no network builder in nas-restore")

    return GenotypeReport(
        space=genotype.space, genotype_id=genotype.genotype_id(), name=(genotype.metadata or {}).get("name"),
        macro=dict(genotype.macro), fusion=dict(genotype.fusion), channels=channels, cells=cells,
        histogram=dict(histogram.most_common()), network_histogram=dict(network_histogram.most_common()),
        cell_op_params=cell_op_params, total_params=total, params_by_module=by_module,
        network_depth=network_depth, network_longest_path=network_path, notes=notes, graph=graph)


def _own_space(name: str) -> bool:
    return space_of(name, missing_ok=True) is not None


def _cell_report(name: str, cell: CellGenotype, channels: int | None, instances: int) -> CellReport:
    graph = cell_graph(cell)
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
    ops = [OpInstance(node=v, input=u, op=d["op"], family=op_family(d["op"]),
                      params=op_parameters(d["op"], channels) if channels is not None and d["op"] in OPS else None)
           for v in graph.nodes for u, _, d in graph.in_edges(v, data=True) if is_op_edge(d)]  # node by node
    path = longest_op_path(graph, inputs, OUTPUT_NAME)
    path_ops = [d["op"] for _, _, d in path if is_op_edge(d)]
    params = [op.params for op in ops]
    unused = [n for n, d in graph.nodes(data=True) if d["kind"] == "intermediate" and graph.out_degree(n) == 0]
    return CellReport(
        name=name, kind=cell.kind, n_inputs=cell.n_inputs if cell.kind == "dag" else 1,
        num_nodes=sum(d["kind"] == "intermediate" for _, d in graph.nodes(data=True)), num_ops=len(ops),
        depth=len(path_ops), longest_path=path_ops,
        longest_path_nodes=([path[0][0]] + [v for _, v, _ in path]) if path else [],
        histogram=dict(Counter(op.op for op in ops).most_common()), ops=ops,
        op_params=sum(params) if params and None not in params else None, instances=instances,
        unused_nodes=unused)


def format_report(report: GenotypeReport) -> str:
    """The human-readable ``nas-restore inspect`` summary."""
    def count(n: int | None) -> str:
        return "unknown" if n is None else f"{n:,}"

    title = " ".join(p for p in (report.space, report.name, report.genotype_id) if p)
    lines = [f"genotype {title}"]
    if report.macro:
        lines.append("  macro: " + ", ".join(f"{k}={v}" for k, v in report.macro.items()))
    if report.fusion:
        lines.append("  fusion: " + ", ".join(f"{k}={v}" for k, v in report.fusion.items()))
    lines.append(f"  channels: {report.channels if report.channels is not None else 'unknown'}")
    for cell in report.cells.values():
        lines.append("")
        lines.append(f"cell {cell.name} ({cell.kind}, {cell.num_nodes} nodes, {cell.num_ops} ops, "
                     f"{cell.instances} instance{'s' if cell.instances != 1 else ''} in the network)")
        lines.append(f"  depth {cell.depth}: " + " -> ".join(cell.longest_path_nodes)
                     + (f"  [{', '.join(cell.longest_path)}]" if cell.longest_path else ""))
        lines.append("  ops: " + ", ".join(f"{op} x{n}" for op, n in cell.histogram.items()))
        width = max(len(op.op) for op in cell.ops)
        for op in cell.ops:
            lines.append(f"    {op.input:>8} -> {op.node:<4} {op.op:<{width}}  {count(op.params):>10} params")
        lines.append(f"  op parameters per instance: {count(cell.op_params)}")
        if cell.unused_nodes:
            lines.append(f"  warning: node(s) {', '.join(cell.unused_nodes)} reach nothing (not in concat, "
                         "read by no node)")
    lines.append("")
    lines.append("ops in all cells: " + ", ".join(f"{op} x{n}" for op, n in report.histogram.items()))
    if report.network_depth is not None:
        lines.append(f"network depth: {report.network_depth} searched ops on the longest path: "
                     + " -> ".join(report.network_longest_path))
    lines.append(f"parameters of all cell ops: {count(report.cell_op_params)}")
    if report.total_params is not None:
        parts = ", ".join(f"{k} {v:,}" for k, v in report.params_by_module.items())
        lines.append(f"parameters of the built network: {report.total_params:,} ({parts})")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# differences


DIFF_STATUSES = ("common", "only_a", "only_b", "changed")


@dataclass
class CellDiff:
    """Edge-by-edge comparison of one cell; ``graph`` is the union with a ``status`` on every edge.

    Edges are matched on (from node, to node, op). What is left on the same (from, to) pair is a
    changed op (``op_a`` / ``op_b``); the rest exists in one genotype only.
    """

    name: str
    graph: nx.MultiDiGraph
    common: list[tuple[str, str, str]] = field(default_factory=list)
    only_a: list[tuple[str, str, str]] = field(default_factory=list)
    only_b: list[tuple[str, str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str, str]] = field(default_factory=list)  # from, to, op_a, op_b
    presence: str = "both"  # "both", "only_a", "only_b"

    @property
    def num_changed(self) -> int:
        """Operation edges that differ, counting a moved or replaced edge once (per target node)."""
        total = sum(1 for e in self.changed if e[2] not in JOIN_OPS)
        for node in {e[1] for e in self.only_a + self.only_b}:
            total += max(sum(1 for e in self.only_a if e[1] == node and e[2] not in JOIN_OPS),
                         sum(1 for e in self.only_b if e[1] == node and e[2] not in JOIN_OPS))
        return total

    @property
    def identical(self) -> bool:
        return not (self.only_a or self.only_b or self.changed) and self.presence == "both"


@dataclass
class GenotypeDiff:
    a_label: str
    b_label: str
    cells: dict[str, CellDiff]
    macro: dict[str, tuple[Any, Any]]      # key -> (a value, b value), differing keys only
    other: dict[str, tuple[Any, Any]]      # space, space_config, fusion entries that differ

    @property
    def identical(self) -> bool:
        return not self.macro and not self.other and all(c.identical for c in self.cells.values())

    @property
    def num_changed(self) -> int:
        return sum(c.num_changed for c in self.cells.values())

    def summary(self) -> str:
        """Which edges differ, as text (printed by ``render --diff``)."""
        lines = [f"A = {self.a_label}", f"B = {self.b_label}"]
        if self.identical:
            return "\n".join(lines + ["the two genotypes are identical"])
        for key, (a, b) in self.other.items():
            lines.append(f"{key}: A {a!r}, B {b!r}")
        for key, (a, b) in self.macro.items():
            lines.append(f"macro {key}: A {a}, B {b}")
        if not self.macro:
            lines.append("macro: same")
        for name, cell in self.cells.items():
            if cell.presence != "both":
                lines.append(f"cell {name}: only in {cell.presence[-1].upper()}")
                continue
            if cell.identical:
                lines.append(f"cell {name}: same")
                continue
            lines.append(f"cell {name}: {cell.num_changed} op edge(s) differ")
            lines += [f"  {u} -> {v}: A {a} / B {b}" for u, v, a, b in cell.changed]
            lines += [f"  {u} -> {v}: {op} only in A" for u, v, op in cell.only_a]
            lines += [f"  {u} -> {v}: {op} only in B" for u, v, op in cell.only_b]
        return "\n".join(lines)


def diff_cells(a: CellGenotype | None, b: CellGenotype | None, name: str = "cell") -> CellDiff:
    """Align two versions of a cell; either may be None (the cell exists in one genotype only)."""
    if a is None and b is None:
        raise ValueError("diff_cells needs at least one cell")
    ga = cell_graph(a) if a is not None else nx.MultiDiGraph()
    gb = cell_graph(b) if b is not None else nx.MultiDiGraph()
    union = nx.MultiDiGraph()
    for node, data in list(ga.nodes(data=True)) + list(gb.nodes(data=True)):
        if node not in union:
            union.add_node(node, **data)
    edges_a = Counter((u, v, d["op"]) for u, v, d in ga.edges(data=True))
    edges_b = Counter((u, v, d["op"]) for u, v, d in gb.edges(data=True))
    diff = CellDiff(name=name, graph=union,
                    presence="both" if a is not None and b is not None else ("only_a" if b is None else "only_b"))
    common = edges_a & edges_b
    rest_a, rest_b = list((edges_a - common).elements()), list((edges_b - common).elements())
    # keep the A edge order of the cell drawing, so the union reads like the cells
    for u, v, op in _ordered(ga, common):
        diff.common.append((u, v, op))
        union.add_edge(u, v, op=op, status="common")
    for u, v, op_a in list(rest_a):
        match = next((e for e in rest_b if e[0] == u and e[1] == v and _comparable(op_a, e[2])), None)
        if match is not None:
            rest_a.remove((u, v, op_a))
            rest_b.remove(match)
            diff.changed.append((u, v, op_a, match[2]))
            union.add_edge(u, v, op=f"{op_a} / {match[2]}", op_a=op_a, op_b=match[2], status="changed")
    for u, v, op in rest_a:
        diff.only_a.append((u, v, op))
        union.add_edge(u, v, op=op, status="only_a")
    for u, v, op in rest_b:
        diff.only_b.append((u, v, op))
        union.add_edge(u, v, op=op, status="only_b")
    return diff


def _comparable(op_a: str, op_b: str) -> bool:
    """A searched op can replace a searched op; a join (concat, residual) only itself."""
    return (op_a in JOIN_OPS) == (op_b in JOIN_OPS)


def _ordered(graph: nx.MultiDiGraph, wanted: Counter) -> list[tuple[str, str, str]]:
    """The edges of ``wanted`` in the order the graph holds them."""
    left = Counter(wanted)
    out = []
    for u, v, d in graph.edges(data=True):
        key = (u, v, d["op"])
        if left[key] > 0:
            left[key] -= 1
            out.append(key)
    return out


def diff_genotypes(a: Genotype, b: Genotype, a_label: str | None = None, b_label: str | None = None) -> GenotypeDiff:
    """Cell-by-cell and macro differences between two genotypes (of the same space or not)."""
    cells = {name: diff_cells(a.cells.get(name), b.cells.get(name), name)
             for name in list(a.cells) + [n for n in b.cells if n not in a.cells]}
    macro = {key: (a.macro.get(key), b.macro.get(key)) for key in sorted(set(a.macro) | set(b.macro))
             if a.macro.get(key) != b.macro.get(key)}
    other: dict[str, tuple[Any, Any]] = {}
    if a.space != b.space:
        other["space"] = (a.space, b.space)
    for section in ("space_config", "fusion"):
        da, db = getattr(a, section) or {}, getattr(b, section) or {}
        for key in sorted(set(da) | set(db)):
            if da.get(key) != db.get(key):
                other[f"{section}.{key}"] = (da.get(key), db.get(key))
    return GenotypeDiff(a_label=a_label or _label(a), b_label=b_label or _label(b), cells=cells, macro=macro,
                        other=other)


def _label(genotype: Genotype) -> str:
    name = (genotype.metadata or {}).get("name")
    return " ".join(p for p in (genotype.space, name, genotype.genotype_id()) if p)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(name: str) -> str:
    """A cell name made safe to use in a file name."""
    return _SAFE.sub("_", name)
