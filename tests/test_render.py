"""Rendering: cell graphs of real published DARTS genotypes, the TMICS macro graph, files on disk."""

import logging
import shutil
from pathlib import Path

import graphviz
import matplotlib.image as mpimg
import pytest

from nas_restore import render
from nas_restore.graph import cell_graph, macro_graph
from nas_restore.genotype import CellGenotype, Edge, Genotype, parse_darts_genotypes

DATA = Path(__file__).parent / "data" / "darts_genotypes.txt"
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz 'dot' is not installed")

# (name, cell) -> (nodes, op edges, concat edges)
EXPECTED = {
    **{(name, cell): (7, 8, 4) for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "PDARTS")
       for cell in ("normal", "reduce")},
    ("NASNet", "normal"): (8, 10, 5),
    ("NASNet", "reduce"): (8, 10, 3),
    ("AmoebaNet", "normal"): (8, 10, 3),
    ("AmoebaNet", "reduce"): (8, 10, 3),
}


@pytest.fixture(scope="module")
def darts():
    """The CNN genotypes of the data file (the RNN section reuses the names DARTS_V1/V2: left out)."""
    text = DATA.read_text()
    cnn_text = text.split("# SOURCE 1b")[0] + text.split("# SOURCE 2:")[1]
    found = parse_darts_genotypes(cnn_text)
    assert set(found) == {"NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "PDARTS"}
    return found


def _tmics(alignment="tgm", cells_per_branch=4):
    heavy = ["Residualblocks_5_1", "SPAattention_3", "ECAattention_3", "Residualblocks_3_1"]
    light = ["Residualblocks_5_1", "SPAattention_3", "DilConv_3_2", "ECAattention_3"]

    def chain(ops):
        return CellGenotype(nodes=[[Edge(op, i) for i, op in enumerate(ops)]], concat=[], kind="chain", n_inputs=1)

    return Genotype(space="tmics", cells={"dna": chain(heavy), "cna": chain(light)}, macro={"alignment": alignment},
                    space_config={"channels": 96, "frames": 5, "cells_per_branch": cells_per_branch},
                    fusion={"type": "aas", "mode": "channel"})


def _counts(graph):
    ops = [d["op"] for *_, d in graph.edges(data=True)]
    return graph.number_of_nodes(), sum(op != "concat" for op in ops), ops.count("concat")


@pytest.mark.parametrize("name,cell", sorted(EXPECTED))
def test_published_cell_graph_counts(darts, name, cell):
    graph = cell_graph(darts[name].cells[cell])
    assert _counts(graph) == EXPECTED[(name, cell)]
    kinds = [d["kind"] for _, d in graph.nodes(data=True)]
    assert kinds.count("input") == 2 and kinds.count("output") == 1
    assert set(graph.predecessors("c_{k}")) == {str(c - 2) for c in darts[name].cells[cell].concat}


def test_cell_graph_edges_match_the_genotype(darts):
    normal = cell_graph(darts["DARTS_V2"].cells["normal"])
    assert normal.nodes["c_{k-2}"]["kind"] == "input" and normal.nodes["2"]["kind"] == "intermediate"
    assert [d["op"] for d in normal.get_edge_data("0", "3").values()] == ["dil_conv_3x3"]
    assert [d["op"] for d in normal.get_edge_data("c_{k-2}", "3").values()] == ["skip_connect"]
    # two edges between the same pair of nodes stay two edges (hence a MultiDiGraph)
    amoeba = cell_graph(darts["AmoebaNet"].cells["normal"])
    assert sorted(d["op"] for d in amoeba.get_edge_data("c_{k-1}", "3").values()) == ["sep_conv_3x3",
                                                                                    "skip_connect"]
    assert sorted(amoeba.predecessors("c_{k}")) == ["2", "3", "4"]


def test_chain_cell_and_single_input():
    graph = cell_graph(_tmics().cells["dna"])
    assert list(graph.successors("c_{k-1}")) == ["0", "c_{k}"]
    path = ["c_{k-1}", "0", "1", "2", "3"]
    assert [graph.get_edge_data(a, b)[0]["op"] for a, b in zip(path, path[1:])] == _tmics().cells["dna"].ops
    assert graph.get_edge_data("c_{k-1}", "c_{k}")[0]["op"] == "residual"
    one = CellGenotype(nodes=[[Edge("SepConv_3", 0)], [Edge("skip_connect", 1), Edge("none", 0)]], concat=[1, 2],
                       n_inputs=1)
    graph = cell_graph(one)
    assert [n for n, d in graph.nodes(data=True) if d["kind"] == "input"] == ["c_{k-1}"]
    assert _counts(graph) == (4, 3, 2)


def test_bad_cell_input_is_a_clear_error():
    bad = CellGenotype(nodes=[[Edge("SepConv_3", 0), Edge("SepConv_3", 2)]], concat=[2])
    with pytest.raises(ValueError, match="node 0 .* input 2"):
        cell_graph(bad)


def test_tmics_macro_graph():
    graph = macro_graph(_tmics("ofm", cells_per_branch=3))
    expected = {"frames", "alignment", "rain_streak", "dna_1", "dna_2", "dna_3", "cna_1", "cna_2", "cna_3",
                "aas", "output"}
    assert set(graph.nodes) == expected
    assert "OFM" in graph.nodes["alignment"]["label"]
    assert "TGM" in macro_graph(_tmics("tgm")).nodes["alignment"]["label"]
    assert "no alignment" in macro_graph(_tmics("none")).nodes["alignment"]["label"]
    with pytest.raises(ValueError, match="cells_per_branch"):
        macro_graph(_tmics(cells_per_branch=0))
    assert graph.has_edge("rain_streak", "dna_1") and graph.has_edge("dna_3", "aas")
    assert graph.has_edge("cna_3", "aas") and graph.has_edge("aas", "output")
    assert not graph.has_edge("rain_streak", "cna_1")  # the rain estimate guides DNA only


def test_no_macro_graph_for_darts(darts):
    with pytest.raises(ValueError, match="no macro structure"):
        macro_graph(darts["DARTS_V2"])


@needs_dot
def test_render_all_published_genotypes(darts, tmp_path):
    for name, genotype in darts.items():
        out = tmp_path / name
        full = name == "NASNet"  # PNGs and the overview cost ~1 s per genotype: once is enough
        result = render.render_genotype(genotype, out, formats=("svg", "png") if full else ("svg",), overview=full)
        assert result.dot_available
        for cell in ("normal", "reduce"):
            source = (out / f"cell_{cell}.gv").read_text()
            assert all(edge.op in source for node in genotype.cells[cell].nodes for edge in node)
            assert "rankdir=LR" in source and "Legend" in source
            assert (out / f"cell_{cell}.svg").read_text().lstrip().startswith("<?xml")
        assert ((out / "overview.png") in result.paths) == full
        assert not (out / "network.gv").exists()
    image = mpimg.imread(tmp_path / "NASNet" / "cell_normal.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert mpimg.imread(tmp_path / "NASNet" / "overview.png").shape[1] > image.shape[1]


@needs_dot
def test_render_tmics_writes_cells_network_and_overview(tmp_path):
    result = render.render_genotype(_tmics(), tmp_path, formats=("png",))
    names = {p.name for p in result.paths}
    assert names == {"cell_dna.gv", "cell_dna.png", "cell_cna.gv", "cell_cna.png", "network.gv", "network.png",
                     "overview.png"}
    assert all(p.stat().st_size > 0 for p in result.paths)
    network = (tmp_path / "network.gv").read_text()
    assert "TGM" in network and "DNA 4" in network and "CNA 4" in network
    assert "DilConv_3_2" in (tmp_path / "cell_cna.gv").read_text()


def test_fallback_without_dot(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="nas_restore.render"):
        result = render.render_genotype(_tmics(), tmp_path)
    assert not result.dot_available
    assert any("Graphviz 'dot' not found" in m and "apt-get install graphviz" in m for m in result.messages)
    assert "Graphviz 'dot' not found" in caplog.text
    for stem in ("cell_dna", "cell_cna", "network"):
        assert "digraph" in (tmp_path / f"{stem}.gv").read_text()
        assert mpimg.imread(tmp_path / f"{stem}.png").shape[0] > 100
        assert (tmp_path / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert mpimg.imread(tmp_path / "overview.png").shape[1] > 500


def test_fallback_layout_boxes_do_not_overlap(darts):
    """The matplotlib layout: columns left to right by generation, inputs first, no two boxes touching."""
    from tests.test_genotype import tmics_genotype

    graphs = [cell_graph(g.cells[c]) for g in darts.values() for c in ("normal", "reduce")]
    graphs += [cell_graph(cell) for g in (_tmics(), tmics_genotype()) for cell in g.cells.values()]
    graphs += [macro_graph(_tmics("ofm", cells_per_branch=3))]
    for graph in graphs:
        layout = render._layout(graph)
        assert set(layout.pos) == set(graph.nodes)
        boxes = {n: (x - layout.half[n][0], y - layout.half[n][1], x + layout.half[n][0], y + layout.half[n][1])
                 for n, (x, y) in layout.pos.items()}
        for a in graph:
            for b in graph:
                if a < b:
                    (l1, b1, r1, t1), (l2, b2, r2, t2) = boxes[a], boxes[b]
                    assert r1 <= l2 or r2 <= l1 or t1 <= b2 or t2 <= b1, f"boxes {a} and {b} overlap"
                    assert (boxes[a][0] >= layout.xlim[0] and boxes[a][2] <= layout.xlim[1]
                            and boxes[a][1] >= layout.ylim[0] and boxes[a][3] <= layout.ylim[1])
        for u, v in graph.edges():  # every edge points to the right, as rankdir=LR
            assert layout.pos[u][0] < layout.pos[v][0]
    darts_v2 = render._layout(cell_graph(darts["DARTS_V2"].cells["normal"])).pos
    assert darts_v2["c_{k-2}"][1] > darts_v2["c_{k-1}"][1]  # c_{k-2} above c_{k-1}, as in the paper


def test_fallback_when_dot_fails_to_run(darts, monkeypatch, tmp_path):
    """``dot`` on PATH but not runnable (graphviz.ExecutableNotFound): same fallback."""
    def missing(self, *args, **kwargs):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz.Digraph, "pipe", missing)
    result = render.render_genotype(darts["AmoebaNet"], tmp_path, formats=("png",), use_dot=True)
    assert not result.dot_available and render.NO_DOT_MESSAGE in result.messages
    assert {p.name for p in result.paths} == {"cell_normal.gv", "cell_normal.png", "cell_reduce.gv",
                                             "cell_reduce.png", "overview.png"}
    assert "conv_7x1_1x7" in (tmp_path / "cell_reduce.gv").read_text()


def test_unknown_format_is_rejected(darts, tmp_path):
    with pytest.raises(ValueError, match="format"):
        render.render_genotype(darts["DARTS_V2"], tmp_path, formats=("bogus",), use_dot=False)


def test_legend_says_what_the_cell_output_is_per_space(darts, tmp_path):
    from tests.test_genotype import tmics_genotype

    render.render_genotype(tmics_genotype(), tmp_path / "t", formats=(), overview=False)
    tmics_dag = (tmp_path / "t" / "cell_dna.gv").read_text()
    assert "1×1 conv" in tmics_dag and "(residual)" in tmics_dag and "concat of its inputs" not in tmics_dag
    render.render_genotype(darts["DARTS_V2"], tmp_path / "d", formats=(), overview=False)
    darts_gv = (tmp_path / "d" / "cell_normal.gv").read_text()
    assert "cell output: concat of its inputs" in darts_gv and "1×1 conv" not in darts_gv
    assert "input + chain" in (render.cell_digraph(cell_graph(_tmics().cells["dna"]))).source
    assert render.output_meaning("tmics", chain=False).startswith("concat → 1×1 conv")


def test_diff_drawing_styles_edges_by_status_and_falls_back_without_dot(darts, tmp_path, caplog):
    from nas_restore.analysis import diff_genotypes

    diff = diff_genotypes(darts["DARTS_V1"], darts["DARTS_V2"], "V1", "V2")
    # DARTS_V1 vs V2 normal cells: three edges keep their nodes but change op
    assert sorted(diff.cells["normal"].changed) == [("0", "3", "skip_connect", "dil_conv_3x3"),
                                                    ("c_{k-2}", "1", "skip_connect", "sep_conv_3x3"),
                                                    ("c_{k-2}", "3", "sep_conv_3x3", "skip_connect")]
    assert not diff.cells["normal"].only_a and not diff.cells["normal"].only_b
    with caplog.at_level(logging.WARNING, logger="nas_restore.render"):
        result = render.render_diff(diff, tmp_path, formats=("png",), use_dot=False)
    assert render.NO_DOT_MESSAGE in result.messages
    source = (tmp_path / "diff_normal.gv").read_text()
    assert source.count(render.DIFF_COLORS["changed"]) >= 3 and "skip_connect / dil_conv_3x3" in source
    reduce = (tmp_path / "diff_reduce.gv").read_text()
    assert "dashed" in reduce and render.DIFF_COLORS["only_b"] in reduce  # a moved max_pool edge
    assert mpimg.imread(tmp_path / "diff_normal.png").shape[1] > 500
    assert "cell normal: 3 op edge(s) differ" in (tmp_path / "diff.txt").read_text()
