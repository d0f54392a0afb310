"""The genotype format: JSON round trips, NNI dicts, DARTS text, and clear validation errors."""

import json

import pytest

from nas_restore.genotype import (CellGenotype, Edge, Genotype, GenotypeError, cells_from_nni_arch,
                                  cells_to_nni_arch, parse_darts_genotype, parse_darts_genotypes)
from nas_restore.sources import load_genotype
from search_spaces import find_space

DARTS_V2 = ("DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
            "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), "
            "('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), "
            "('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def tmics_genotype(**config) -> Genotype:
    spec = find_space("tmics")
    cfg = spec.config("demo", **config)
    cell = CellGenotype(nodes=[[Edge("Residualblocks_3_1", 0), Edge("SPAattention_3", 1)],
                               [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    return Genotype(space="tmics", cells={"dna": cell, "cna": cell}, macro={"alignment": "tgm"},
                    space_config=cfg.to_dict(), fusion={"type": "aas", "mode": "channel"},
                    metadata={"strategy": "hand", "seed": 1})


def test_json_round_trip_keeps_everything_and_the_id(tmp_path):
    g = tmics_genotype()
    path = g.save(tmp_path / "g.json")
    back = load_genotype(path)
    assert back.to_dict() == g.to_dict()
    assert back.genotype_id() == g.genotype_id()
    assert json.loads(path.read_text())["version"] == 1


def test_id_ignores_metadata_but_not_architecture():
    a, b = tmics_genotype(), tmics_genotype()
    b.metadata["seed"] = 99
    assert a.genotype_id() == b.genotype_id()
    b.macro["alignment"] = "ofm"
    assert a.genotype_id() != b.genotype_id()


def test_nni_dict_round_trip():
    g = tmics_genotype()
    arch = cells_to_nni_arch(g.cells)
    assert arch["dna/op_2_0"] == "Residualblocks_3_1" and arch["dna/input_3_0"] == [2]
    cells, rest = cells_from_nni_arch({**arch, "alignment": "tgm"})
    assert rest == {"alignment": "tgm"}
    assert {k: c.to_dict() for k, c in cells.items()} == {k: c.to_dict() for k, c in g.cells.items()}
    spec = find_space("tmics")
    again = spec.to_genotype({**arch, "alignment": "tgm"}, spec.config("demo"), {})
    assert again.genotype_id() == g.genotype_id()


def test_unknown_op_is_named_with_a_suggestion(tmp_path):
    data = tmics_genotype().to_dict()
    data["cells"]["dna"]["nodes"][0][0]["op"] = "Residualblock_3_1"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=r"cells\.dna\.nodes\[0\]\[0\]\.op.*Residualblock_3_1.*did you mean 'Residualblocks_3_1'"):
        load_genotype(path)


def test_dangling_input_is_a_clear_error():
    cell = CellGenotype(nodes=[[Edge("skip_connect", 0), Edge("skip_connect", 3)]], concat=[2])
    with pytest.raises(GenotypeError, match=r"input is 3.*inputs 0\.\.1"):
        cell.validate("cells.dna")


def test_bad_macro_choice_and_missing_file(tmp_path):
    g = tmics_genotype()
    g.macro["alignment"] = "raft"
    with pytest.raises(GenotypeError, match="macro.alignment is 'raft'; allowed values: ofm, tgm"):
        find_space("tmics").validate_genotype(g)
    with pytest.raises(GenotypeError, match="does not exist"):
        load_genotype(tmp_path / "nope.json")


def test_darts_text_parses_without_eval():
    g = parse_darts_genotype(DARTS_V2)
    assert g.metadata["name"] == "DARTS_V2"
    assert g.cells["normal"].num_nodes == 4 and g.cells["normal"].concat == [2, 3, 4, 5]
    assert g.cells["reduce"].nodes[1][0] == Edge("skip_connect", 2)
    ranged = parse_darts_genotype(DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)"))
    assert ranged.cells["normal"].concat == [2, 3, 4, 5]
    with pytest.raises(GenotypeError, match="not a plain literal"):
        parse_darts_genotype("Genotype(normal=__import__('os').system('true'), normal_concat=[2])")


def test_tmics_style_chain_cells_and_many_blocks():
    text = ("heavy = Genotype(normal_1=[('aligned modules', 0)], normal_1_concat=[0], "
            "normal_2=[('Residualblocks_5_1', 0), ('SPAattention_3', 1), ('ECAattention_3', 3), "
            "('Residualblocks_3_1', 4)], normal_2_concat=[1])\n" + DARTS_V2)
    found = parse_darts_genotypes(text)
    assert set(found) == {"heavy", "DARTS_V2"}
    chain = found["heavy"].cells["normal_2"]
    assert chain.kind == "chain" and chain.ops == ["Residualblocks_5_1", "SPAattention_3", "ECAattention_3",
                                                     "Residualblocks_3_1"]
