"""A real (tiny) DARTS search through NNI: the run folder, the moving alphas, the genotype it yields."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.datasets import DataConfig
from nas_restore.search import SearchConfig, run_search

TINY_SPACE = {"channels": 6, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("search")
    config = SearchConfig(preset="demo", space_settings=TINY_SPACE, epochs=2, batch_size=4,
                          strategy_options={"arc_learning_rate": 3e-2},
                          data=DataConfig(patch_size=16, train_items=8, val_items=8), device="cpu",
                          progress=False)
    return run_search(config, run_dir)


def test_run_folder_holds_config_log_genotype_history_and_metrics(search_run):
    names = {p.name for p in search_run.run_dir.iterdir()}
    assert {"config.yaml", "search.log", "genotype.json", "alphas.csv", "derived.jsonl", "metrics.csv"} <= names
    metrics = pd.read_csv(search_run.run_dir / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1] and metrics["val_psnr"].notna().all()
    derived = [json.loads(line) for line in (search_run.run_dir / "derived.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in derived] == [0, 1]


def test_darts_steps_move_the_architecture_weights(search_run):
    alphas = pd.read_csv(search_run.run_dir / "alphas.csv")
    assert {"alignment", "dna/2_0", "cna/3_2"} <= set(alphas["label"])
    assert "none" in set(alphas["choice"])  # DARTS's zero op is kept in the history
    first = alphas[alphas["step"] == alphas["step"].min()].set_index(["label", "choice"])["weight"]
    last = alphas[alphas["step"] == alphas["step"].max()].set_index(["label", "choice"])["weight"]
    assert (last - first).abs().max() > 1e-4
    # probabilities of every edge sum to one
    sums = alphas[alphas["step"] == alphas["step"].max()].groupby("label")["weight"].sum()
    assert ((sums - 1).abs() < 1e-4).all()


def test_genotype_names_alignment_and_both_branches_and_builds(search_run):
    genotype = load_genotype(search_run.genotype_path)
    assert genotype.macro["alignment"] in ("ofm", "tgm")
    assert set(genotype.cells) == {"dna", "cna"}
    for cell in genotype.cells.values():
        assert cell.num_nodes == 2 and all(len(node) == 2 for node in cell.nodes)
        assert set(cell.ops) <= set(TINY_SPACE["operations"])
    meta = genotype.metadata
    assert meta["strategy"] == "darts" and meta["search_seconds"] > 0 and meta["seed"] == 0
    net = build_model(genotype)
    assert net(torch.rand(1, 3, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_unknown_strategy_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(KeyError, match="unknown strategy 'dart'.*Did you mean darts"):
        run_search(SearchConfig(strategy="dart"), tmp_path)


def test_a_one_shot_search_leaves_no_entry_in_nnis_experiment_manifest(search_run):
    from nas_restore.nni_layer.runner import nni_manifest_dir

    ids = [p.name for p in (search_run.run_dir / "nni").iterdir() if p.is_dir()]
    assert ids, "NNI wrote no experiment folder: the test cannot see the run's experiment id"
    manifest = Path(nni_manifest_dir()) / ".experiment"
    known = json.loads(manifest.read_text()) if manifest.is_file() else {}
    assert not set(ids) & set(known)


def test_a_rerun_removes_the_manifest_entry_a_killed_one_shot_search_left(tmp_path):
    """kill -9 skips run_oneshot's clean-up: the next call of that run removes the earlier experiments' entries."""
    from nni.tools.nnictl.config_utils import Experiments

    from nas_restore.nni_layer.runner import _forget_earlier_experiments, nni_manifest_dir

    (tmp_path / "nni" / "killed01").mkdir(parents=True)
    (tmp_path / "nni" / "_latest").mkdir()
    manifest = Experiments(home_dir=nni_manifest_dir())
    manifest.add_experiment("killed01", 1, 0, "local", None)
    manifest.add_experiment("other0001", 2, 0, "local", None)   # another run's: not in this run's folder
    try:
        _forget_earlier_experiments(tmp_path / "nni", keep="current1")
        known = Experiments(home_dir=nni_manifest_dir()).get_all_experiments()
        assert "killed01" not in known and "other0001" in known
    finally:
        Experiments(home_dir=nni_manifest_dir()).remove_experiment("other0001")
