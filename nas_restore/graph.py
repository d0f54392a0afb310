"""The graph model of a genotype: each cell, the macro network and the whole network as networkx graphs.

What a genotype *is* as a graph, apart from how it is drawn (:mod:`nas_restore.render`) or analysed
(:mod:`nas_restore.analysis`). Node numbering follows DARTS: cell inputs ``c_{k-2}``, ``c_{k-1}``, then
intermediate nodes ``0 .. n-1``, output ``c_{k}``. A space may define the drawing of its macro network
beside itself (``SpaceSpec.macro_graph``, e.g. TMICS's alignment, branches and fusion); other spaces get
their macro choices in order.
"""

from __future__ import annotations

from typing import Callable

import networkx as nx

from nas_restore.genotype import CellGenotype, Genotype
from search_spaces import space_of

INPUT_NAMES = {1: ["c_{k-1}"], 2: ["c_{k-2}", "c_{k-1}"]}
OUTPUT_NAME = "c_{k}"
JOIN_OPS = ("concat", "sum", "residual")  # data flow inside a cell drawing, not searched operations


def input_names(n_inputs: int) -> list[str]:
    """Names of the cell inputs, oldest first: ``c_{k-2}``, ``c_{k-1}`` (DARTS's names)."""
    if n_inputs < 1:
        raise ValueError(f"a cell needs at least one input, got n_inputs={n_inputs}")
    return INPUT_NAMES.get(n_inputs) or [f"c_{{k-{n_inputs - i}}}" for i in range(n_inputs)]


def cell_graph(cell: CellGenotype) -> nx.MultiDiGraph:
    """The cell as a graph: one edge per operation (attribute ``op``), nodes of ``kind`` input /
    intermediate / output.

    DAG cells: edges into each intermediate node from its inputs, then ``concat`` edges from the
    concatenated nodes to ``c_{k}``. Chain cells (TMICS): ``c_{k-1}`` -> op1 -> ... -> opN, then the
    chain output and the residual from ``c_{k-1}`` are summed into ``c_{k}`` (ops ``sum``/``residual``).
    """
    graph = nx.MultiDiGraph()
    if cell.kind == "chain":
        ops = [edge.op for node in cell.nodes for edge in node]
        if not ops:
            raise ValueError("chain cell has no operations: its nodes list holds the ops in order")
        source = "c_{k-1}"  # a chain cell reads one input, the previous cell
        graph.add_node(source, kind="input", label=source)
        previous = source
        for i, op in enumerate(ops):
            graph.add_node(str(i), kind="intermediate", label=str(i))
            graph.add_edge(previous, str(i), op=op)
            previous = str(i)
        graph.add_node(OUTPUT_NAME, kind="output", label=OUTPUT_NAME)
        graph.add_edge(previous, OUTPUT_NAME, op="sum")
        graph.add_edge(source, OUTPUT_NAME, op="residual")
        return graph
    if cell.kind != "dag":
        raise ValueError(f"cell kind {cell.kind!r} cannot be drawn: expected 'dag' or 'chain'")

    names = input_names(cell.n_inputs) + [str(i) for i in range(len(cell.nodes))]
    for name in names[:cell.n_inputs]:
        graph.add_node(name, kind="input", label=name)
    for i, node in enumerate(cell.nodes):
        graph.add_node(str(i), kind="intermediate", label=str(i))
        limit = cell.n_inputs + i
        for edge in node:
            if not 0 <= edge.input < limit:
                raise ValueError(f"node {i} (number {limit}) has an edge {edge.op!r} from input {edge.input}; "
                                 f"it can only read inputs 0..{limit - 1} (cell inputs, then earlier nodes)")
            graph.add_edge(names[edge.input], str(i), op=edge.op)
    graph.add_node(OUTPUT_NAME, kind="output", label=OUTPUT_NAME)
    for number in cell.concat:
        if not 0 <= number < len(names):
            raise ValueError(f"concat lists node {number}, but node numbers run 0..{len(names) - 1}")
        graph.add_edge(names[number], OUTPUT_NAME, op="concat")
    return graph


def own_macro_graph(genotype: Genotype) -> Callable[[Genotype], nx.DiGraph] | None:
    """The macro drawing that the genotype's space defines beside itself (``SpaceSpec.macro_graph``), or None."""
    spec = space_of(genotype, missing_ok=True)
    return spec.macro_graph if spec is not None else None


def macro_graph(genotype: Genotype) -> nx.DiGraph:
    """The network around the cells: the space's own drawing (``tmics``), else its macro choices in order."""
    builder = own_macro_graph(genotype)
    if builder is None and genotype.macro:
        builder = generic_macro_graph
    if builder is None:
        raise ValueError(f"no macro structure is known for space {genotype.space!r}: it has no macro choices and "
                         "no drawing of its own (give its SpaceSpec a macro_graph)")
    return builder(genotype)


def generic_macro_graph(genotype: Genotype) -> nx.DiGraph:
    """Spaces without a drawing of their own (rrgnet, rdmc, rescnn): the macro choices in order."""
    frames = (genotype.space_config or {}).get("frames")
    graph = nx.DiGraph()
    graph.add_node("input", kind="input", label=f"{frames} input frame(s)" if frames else "input")
    previous = "input"
    for i, (key, value) in enumerate(genotype.macro.items()):
        graph.add_node(f"macro_{i}", kind="module", label=f"{key}\n{value}")
        graph.add_edge(previous, f"macro_{i}", label="")
        previous = f"macro_{i}"
    graph.add_node("output", kind="output", label="output")
    graph.add_edge(previous, "output", label="")
    return graph


def is_op_edge(data: dict) -> bool:
    return "op" in data and data["op"] not in JOIN_OPS


def longest_op_path(graph: nx.MultiDiGraph, sources: list[str], sink: str) -> list[tuple[str, str, dict]]:
    """The edges of the path from any of ``sources`` to ``sink`` with the most operations on it.

    Dynamic programming over a topological order: networkx's ``dag_longest_path`` cannot restrict the
    start to the inputs nor weigh join edges 0 on a multigraph. Ties go to the earlier-added edge.
    """
    best: dict[str, tuple[int, tuple[str, str, dict] | None]] = {s: (0, None) for s in sources}
    for node in nx.topological_sort(graph):
        if node not in best:
            continue
        length = best[node][0]
        for _, v, data in graph.out_edges(node, data=True):
            candidate = length + (1 if is_op_edge(data) else 0)
            if v not in best or candidate > best[v][0]:
                best[v] = (candidate, (node, v, data))
    if sink not in best:
        return []
    path = []
    node = sink
    while best[node][1] is not None:
        edge = best[node][1]
        path.append(edge)
        node = edge[0]
    return path[::-1]


def genotype_graph(genotype: Genotype) -> nx.MultiDiGraph:
    """The whole network as one graph: macro modules plus every cell instance expanded into its cells' graph.

    Cell nodes are named ``<instance>/<cell node>`` (``dna_1/c_{k-1}``, ``dna_1/0``) and carry ``cell``,
    ``instance`` and ``level="cell"``; macro nodes carry ``level="macro"``. Op edges carry ``op``; data
    flow between modules carries ``kind="flow"``. A cell's ``c_{k-1}`` reads what feeds the instance;
    ``c_{k-2}`` reads the previous instance's input (or the same source for the first cell, as the
    TMICS network runs it). Spaces without a macro structure give the cells side by side, unconnected,
    one instance each named after the cell.
    """
    graph = nx.MultiDiGraph()
    if own_macro_graph(genotype) is None:
        for name, cell in genotype.cells.items():
            _add_instance(graph, name, name, cell)
        return graph
    macro = macro_graph(genotype)
    instances = {n: d["cell"] for n, d in macro.nodes(data=True) if d.get("cell") in genotype.cells}
    for node, data in macro.nodes(data=True):
        if node in instances:
            _add_instance(graph, node, instances[node], genotype.cells[instances[node]])
        else:
            graph.add_node(node, **data, level="macro")
    for u, v, data in macro.edges(data=True):
        source = f"{u}/{OUTPUT_NAME}" if u in instances else u
        if v not in instances:
            graph.add_edge(source, v, kind="flow", label=data.get("label", ""))
            continue
        graph.add_edge(source, f"{v}/{_inputs(graph, v)[-1]}", kind="flow", label=data.get("label", ""))
    for v in instances:
        inputs = _inputs(graph, v)
        previous = [u for u in macro.predecessors(v) if instances.get(u) == instances[v]]
        for j, older in enumerate(inputs[:-1]):  # c_{k-2} (and older) inputs
            if previous:  # c_{k-2} of this cell = c_{k-1} of the previous cell, and so on
                graph.add_edge(f"{previous[0]}/{inputs[j + 1]}", f"{v}/{older}", kind="flow", label="")
            else:  # the first cell of a branch reads the same features on every input
                for source, _, data in list(graph.in_edges(f"{v}/{inputs[-1]}", data=True)):
                    if data.get("kind") == "flow":
                        graph.add_edge(source, f"{v}/{older}", **data)
    return graph


def _add_instance(graph: nx.MultiDiGraph, instance: str, cell_name: str, cell: CellGenotype) -> None:
    sub = cell_graph(cell)
    for node, data in sub.nodes(data=True):
        graph.add_node(f"{instance}/{node}", **data, level="cell", cell=cell_name, instance=instance, cell_node=node)
    for u, v, data in sub.edges(data=True):
        graph.add_edge(f"{instance}/{u}", f"{instance}/{v}", **data)


def _inputs(graph: nx.MultiDiGraph, instance: str) -> list[str]:
    """The cell-input node names of an instance, oldest first."""
    return [d["cell_node"] for _, d in graph.nodes(data=True)
            if d.get("instance") == instance and d["kind"] == "input"]


__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "JOIN_OPS", "input_names", "cell_graph", "own_macro_graph", "macro_graph",
           "generic_macro_graph", "genotype_graph", "longest_op_path", "is_op_edge"]
