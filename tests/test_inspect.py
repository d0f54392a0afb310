"""Inspecting genotypes: depth, histograms, longest paths and parameters; differences; the inspect CLI."""

import json
from pathlib import Path

import pytest

from nas_restore.build import build_model
from nas_restore.cli import main
from nas_restore.genotype import CellGenotype, Edge, GenotypeError, parse_darts_genotypes
from nas_restore.analysis import diff_genotypes, inspect_genotype
from nas_restore.graph import genotype_graph
from nas_restore.sources import load_genotype
from nas_restore.profiling import count_parameters
from tests.test_genotype import tmics_genotype

DATA = Path(__file__).parent / "data" / "darts_genotypes.txt"


@pytest.fixture(scope="module")
def darts():
    return parse_darts_genotypes(DATA.read_text())


def test_darts_v2_depth_histogram_and_longest_path(darts):
    report = inspect_genotype(darts["DARTS_V2"])
    normal = report.cells["normal"]
    assert normal.histogram == {"sep_conv_3x3": 5, "skip_connect": 2, "dil_conv_3x3": 1}
    assert normal.depth == 2 and normal.longest_path == ["sep_conv_3x3", "dil_conv_3x3"]
    assert normal.longest_path_nodes == ["c_{k-2}", "0", "3", "c_{k}"]
    reduce = report.cells["reduce"]
    assert reduce.histogram == {"max_pool_3x3": 5, "skip_connect": 3} and reduce.depth == 2
    assert report.histogram == {"sep_conv_3x3": 5, "max_pool_3x3": 5, "skip_connect": 5, "dil_conv_3x3": 1}
    # a foreign space: no channel width, no network, every op's parameters unknown
    assert report.channels is None and report.total_params is None and report.network_depth is None
    assert all(op.params is None for cell in report.cells.values() for op in cell.ops)
    assert any("channel width unknown" in n for n in report.notes)


def test_nasnet_depth_counts_ops_not_the_concat(darts):
    # normal: every node reads the cell inputs (depth 1); reduce: nodes 5 and 6 read nodes 2 and 3, themselves
    # fed by the inputs (depth 2); nodes 2 and 3 are not concatenated but feed node 5: not unused
    report = inspect_genotype(darts["NASNet"])
    assert report.cells["normal"].num_ops == 10 and report.cells["normal"].depth == 1
    reduce = report.cells["reduce"]
    assert reduce.depth == 2 and reduce.longest_path_nodes[-2] in ("3", "4") and reduce.unused_nodes == []


def test_a_node_that_reaches_nothing_is_reported(darts):
    cell = CellGenotype(nodes=[[Edge("sep_conv_3x3", 0), Edge("sep_conv_3x3", 1)],
                               [Edge("skip_connect", 0), Edge("sep_conv_3x3", 1)]], concat=[3])
    genotype = darts["DARTS_V2"].copy()
    genotype.cells = {"normal": cell}
    assert inspect_genotype(genotype).cells["normal"].unused_nodes == ["0"]


def test_foreign_ops_are_none_and_ours_are_counted_with_explicit_channels(darts):
    report = inspect_genotype(darts["DARTS_V2"], channels=8)
    ops = report.cells["normal"].ops
    assert {op.params for op in ops if op.op == "sep_conv_3x3"} == {None}
    assert {op.params for op in ops if op.op == "skip_connect"} == {0}
    assert report.cells["normal"].op_params is None  # one unknown op makes the sum unknown


def test_tmics_parameters_match_the_built_network():
    genotype = tmics_genotype(channels=6, cells_per_branch=2)
    report = inspect_genotype(genotype)
    net = build_model(genotype)
    assert report.total_params == count_parameters(net) > 0
    assert report.params_by_module["dna_cells"] == count_parameters(net.dna_cells)
    for name in ("dna", "cna"):
        cell = report.cells[name]
        assert cell.instances == 2 and all(op.params is not None for op in cell.ops)
        assert {op.op: op.params for op in cell.ops}["skip_connect"] == 0
        assert all(op.params > 0 for op in cell.ops if op.op != "skip_connect")
        ops_in_net = sum(count_parameters(c.node_ops) for c in getattr(net, f"{name}_cells"))
        assert cell.op_params * cell.instances == ops_in_net
    assert report.cell_op_params == sum(count_parameters(c.node_ops) for c in [*net.dna_cells, *net.cna_cells])
    # cell: node 0 <- Residualblocks(c_{k-2}), SPAattention(c_{k-1}); node 1 <- DilConv(node 0), skip(c_{k-1})
    assert report.cells["dna"].depth == 2
    assert report.cells["dna"].longest_path == ["Residualblocks_3_1", "DilConv_3_2"]
    # two cells deep per branch, each 2 ops deep: the whole network is 4 searched ops deep
    assert report.network_depth == 4 and len(report.network_longest_path) == 4
    data = json.loads(json.dumps(report.to_dict()))
    assert data["cells"]["dna"]["histogram"]["DilConv_3_2"] == 1 and data["graph"]["op_edges"] == 16


def test_genotype_graph_expands_the_cells_into_the_macro_structure():
    graph = genotype_graph(tmics_genotype(cells_per_branch=2))
    assert graph.has_edge("alignment", "dna_1/c_{k-1}") and graph.has_edge("rain_streak", "dna_1/c_{k-1}")
    assert graph.has_edge("dna_1/c_{k}", "dna_2/c_{k-1}") and graph.has_edge("dna_1/c_{k-1}", "dna_2/c_{k-2}")
    assert graph.has_edge("alignment", "dna_1/c_{k-2}")  # the first cell reads the features on both inputs
    assert graph.has_edge("dna_2/c_{k}", "aas") and graph.has_edge("cna_2/c_{k}", "aas")
    assert graph.nodes["cna_2/1"]["cell"] == "cna"


def test_unknown_op_and_dangling_input_are_genotype_errors():
    bad = tmics_genotype()
    bad.cells["dna"] = CellGenotype(nodes=[[Edge("Resblock_9_9", 0), Edge("skip_connect", 1)],
                                           [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    with pytest.raises(GenotypeError, match="cells.dna.nodes\\[0\\]\\[0\\].op: unknown operation 'Resblock_9_9'"):
        inspect_genotype(bad)
    dangling = tmics_genotype()
    dangling.cells["cna"] = CellGenotype(nodes=[[Edge("DilConv_3_2", 0), Edge("skip_connect", 3)],
                                                [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    with pytest.raises(GenotypeError, match="cells.cna.nodes\\[0\\]\\[1\\].input is 3"):
        inspect_genotype(dangling)


def test_diff_marks_exactly_the_differing_edges():
    a, b = tmics_genotype(), tmics_genotype()
    b.macro["alignment"] = "ofm"
    b.cells["dna"] = CellGenotype(nodes=[[Edge("Residualblocks_3_1", 0), Edge("ECAattention_3", 1)],   # op changed
                                         [Edge("DilConv_3_2", 2), Edge("skip_connect", 0)]],          # input moved
                                  concat=[2, 3])
    diff = diff_genotypes(a, b)
    assert diff.cells["cna"].identical and not diff.identical
    dna = diff.cells["dna"]
    assert dna.changed == [("c_{k-1}", "0", "SPAattention_3", "ECAattention_3")]
    assert dna.only_a == [("c_{k-1}", "1", "skip_connect")] and dna.only_b == [("c_{k-2}", "1", "skip_connect")]
    assert dna.num_changed == 2 and diff.macro == {"alignment": ("tgm", "ofm")}
    statuses = {(u, v, d["op"]): d["status"] for u, v, d in dna.graph.edges(data=True)}
    assert statuses[("c_{k-1}", "0", "SPAattention_3 / ECAattention_3")] == "changed"
    assert statuses[("c_{k-2}", "0", "Residualblocks_3_1")] == "common"
    assert statuses[("0", "1", "DilConv_3_2")] == "common"
    assert sum(s != "common" for s in statuses.values()) == 3
    assert "alignment: A tgm, B ofm" in diff.summary()


def test_load_picks_a_named_genotype_of_a_text_file():
    assert load_genotype(DATA, name="PDARTS").metadata["name"] == "PDARTS"
    with pytest.raises(GenotypeError, match="pick one with --name"):
        load_genotype(DATA)
    with pytest.raises(GenotypeError, match="no genotype named 'DARTS_V9'"):
        load_genotype(DATA, name="DARTS_V9")


def test_cli_inspect_json_text_and_errors(capsys, tmp_path):
    code = main(["inspect", str(DATA), "--name", "DARTS_V2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["cells"]["normal"]["histogram"]["sep_conv_3x3"] == 5
    assert data["cells"]["normal"]["depth"] == 2

    path = tmics_genotype(channels=6).save(tmp_path / "g.json")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameters of the built network" in out and "depth 2" in out

    broken = tmics_genotype().to_dict()
    broken["cells"]["cna"]["nodes"][1][0]["input"] = 7
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    code = main(["inspect", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert code == 2 and "cells.cna.nodes[1][0].input is 7" in err and "bad.json" in err
    code = main(["inspect", str(DATA)])
    assert code == 2 and "--name" in capsys.readouterr().err
