"""Rendering a search run folder: weight heatmaps, macro plot, derived-by-epoch, metrics; render --diff via CLI.

The run folder is written here in the exact format of nas_restore.search (alphas.csv, derived.jsonl,
metrics.csv, genotype.json), with a known story: the genotype changes after epoch 0 and settles at
epoch 1, and OFM overtakes TGM.
"""

import copy
import json

import matplotlib.image as mpimg
import pandas as pd
import pytest

from nas_restore.cli import main
from nas_restore.sources import load_genotype
from nas_restore.genotype import Edge, cells_to_nni_arch
from nas_restore.render_run import derived_genotypes, epoch_changes, render_run
from tests.test_genotype import tmics_genotype

OPS = ["Residualblocks_3_1", "Denseblocks_3_1", "DilConv_3_2", "SPAattention_3", "ECAattention_3", "skip_connect"]
EDGES = ["2_0", "2_1", "3_0", "3_1", "3_2"]


def _write_run(run, final):
    """Three epochs, four recorded steps each; epoch 0's genotype differs from the final one in one op."""
    rows = []
    for step in range(12):
        epoch, t = step // 4, step / 11
        rows += [(step * 5, epoch, "alignment", "ofm", 0.4 + 0.2 * t), (step * 5, epoch, "alignment", "tgm", 0.6 - 0.2 * t)]
        for cell in ("dna", "cna"):
            for edge in EDGES:
                weights = [1.0] * len(OPS) + [1.0]
                weights[OPS.index("DilConv_3_2")] += 2 * t
                total = sum(weights)
                rows += [(step * 5, epoch, f"{cell}/{edge}", op, w / total) for op, w in zip(OPS + ["none"], weights)]
    pd.DataFrame(rows, columns=["step", "epoch", "label", "choice", "weight"]).to_csv(run / "alphas.csv", index=False)
    early = final.copy()
    early.macro["alignment"] = "tgm"
    early.cells["dna"] = copy.deepcopy(final.cells["dna"])  # tmics_genotype() shares one cell object
    early.cells["dna"].nodes[0][1] = Edge("ECAattention_3", 1)
    with (run / "derived.jsonl").open("w") as fh:
        for epoch, genotype in enumerate([early, final, final]):
            arch = {"alignment": genotype.macro["alignment"], **cells_to_nni_arch(genotype.cells)}
            fh.write(json.dumps({"epoch": epoch, "arch": arch}) + "\n")
    pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [0.5, 0.4, 0.35], "val_psnr": [20.0, 21.0, 21.5],
                  "seconds": [3.0, 2.9, 2.8]}).to_csv(run / "metrics.csv", index=False)
    final.save(run / "genotype.json")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    final = tmics_genotype()
    final.macro["alignment"] = "ofm"
    _write_run(run, final)
    return run


def test_render_run_writes_heatmaps_macro_derived_and_metrics(run_folder, tmp_path):
    result = render_run(run_folder, tmp_path, formats=("png",), overview=False)
    names = {p.name for p in result.paths}
    expected = {"cell_dna.png", "cell_cna.png", "network.png", "alphas_dna.png", "alphas_cna.png",
                "alphas_final.png", "macro.png", "derived_by_epoch.md", "derived_changes.png", "metrics.png"}
    assert expected <= names
    for name in expected - {"derived_by_epoch.md"}:
        image = mpimg.imread(tmp_path / name)
        assert image.shape[0] > 300 and image.shape[1] > 500, name
    table = (tmp_path / "derived_by_epoch.md").read_text()
    assert "| 1 | alignment=ofm | 2 | 0 |" in table  # epoch 1: one op and the alignment changed, then final
    assert "dna c_{k-1} -> 0: ECAattention_3 => SPAattention_3" in table and "macro alignment: tgm -> ofm" in table
    assert "settled (matched the final genotype from then on) at epoch 1" in table


def test_epoch_changes_count_edges_against_the_previous_and_the_final(run_folder):
    final = load_genotype(run_folder)
    changes = epoch_changes(derived_genotypes(run_folder, final), final)
    assert [c.changed_edges for c in changes] == [None, 1, 0]
    assert [c.edges_from_final for c in changes] == [2, 0, 0]  # one edge + the alignment
    assert changes[1].macro_changes == ["alignment: tgm -> ofm"]


def test_broken_alphas_csv_is_named(run_folder, tmp_path):
    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("genotype.json", "derived.jsonl", "metrics.csv"):
        (broken / name).write_bytes((run_folder / name).read_bytes())
    (broken / "alphas.csv").write_text("step,label,weight\n1,dna/2_0,0.5\n")
    with pytest.raises(ValueError, match="alphas.csv lacks the column\\(s\\) \\['epoch', 'choice'\\]"):
        render_run(broken, tmp_path / "out", formats=("png",), overview=False)


def test_cli_render_run_folder_and_diff(run_folder, tmp_path, capsys):
    code = main(["render", str(run_folder), "--out", str(tmp_path / "r"), "--format", "png"])
    assert code == 0 and (tmp_path / "r" / "alphas_final.png").exists() and (tmp_path / "r" / "macro.png").exists()
    capsys.readouterr()

    other = tmics_genotype()  # alignment tgm
    other.cells["cna"] = copy.deepcopy(other.cells["cna"])
    other.cells["cna"].nodes[1][0] = Edge("ECAattention_3", 2)
    b = other.save(tmp_path / "b.json")
    code = main(["render", "--diff", str(run_folder), str(b), "--out", str(tmp_path / "d"), "--format", "png"])
    out = capsys.readouterr().out
    assert code == 0 and "macro alignment: A ofm, B tgm" in out
    assert "cell dna: same" in out and "0 -> 1: A DilConv_3_2 / B ECAattention_3" in out
    gv = (tmp_path / "d" / "diff_cna.gv").read_text()
    assert "DilConv_3_2 / ECAattention_3" in gv and "#d62728" in gv
    assert (tmp_path / "d" / "diff_cna.png").exists() and (tmp_path / "d" / "diff.txt").exists()
