"""`nas-restore rank`: genotypes retrained alike on a fit split, scored on a holdout split only; the guards."""

import pandas as pd
import pytest

import nas_restore.rank as rank_mod
from nas_restore.build import build_model
from nas_restore.cli import main
from nas_restore.data.folders import DataError
from nas_restore.datasets import DataConfig
from nas_restore.profiling import count_parameters
from nas_restore.rank import RankConfig, check_data, resolve_entries, run_rank
from nas_restore.retraining import RetrainRunConfig
from nas_restore.training import RetrainConfig

TINY_SPACE = {"channels": 6, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six synthetic image pairs with a fit / holdout split, like ../shared/data/rain100l."""
    from nas_restore.data.synthetic import write_synthetic_folder

    root = write_synthetic_folder(tmp_path_factory.mktemp("pairs"), kind="images", count=6, size=24, seed=3)
    (root / "SPLITS.txt").write_text("# test split\nfit: 1 2 3 4\nholdout: 5 6\n")
    return root


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny genotype file standing in for a search result."""
    from nas_restore.nni_layer import random_architecture
    from search_spaces import find_space

    spec = find_space("tmics")
    space_config = spec.config("demo", **TINY_SPACE)
    genotype = spec.to_genotype(random_architecture(spec.make_space(space_config), seed=11), space_config,
                                {"name": "searched", "strategy": "test"})
    return genotype.save(tmp_path_factory.mktemp("g") / "genotype.json")


def tiny_config(folder, **overrides):
    values = dict(retrain=RetrainRunConfig(train=RetrainConfig(epochs=1, batch_size=2, progress=False),
                                           data=DataConfig(folder=str(folder), split="fit", patch_size=16)),
                  eval_data=str(folder), eval_split="holdout", profile_size=[24, 32], latency_repeats=1,
                  device="cpu")
    values.update(overrides)
    return RankConfig(**values)


def test_rank_retrains_each_entry_and_scores_the_holdout_split_with_the_input_row(tmp_path, folder, searched,
                                                                                  monkeypatch):
    out = tmp_path / "rank"
    result = run_rank([str(searched), "random:1"], tiny_config(folder), out, command="nas-restore rank (test)",
                      say=lambda m: None)
    table = pd.read_csv(out / "results.csv")
    assert list(table["entry"]) == ["rainy input", "searched", "random-0"]
    assert list(table["kind"]) == ["input", "file", "random"]
    assert (table["status"] == "done").all()
    models = table[table["kind"] != "input"]
    assert (models["params"] > 0).all() and (models["flops"] > 0).all() and (models["fps"] > 0).all()
    assert sorted(models["rank"].astype(int)) == [1, 2] and models["genotype_id"].nunique() == 2
    assert pd.isna(table.loc[0, "params"]) and table.loc[0, "psnr"] > 0
    # the evaluation saw the two holdout pairs only
    for name in models["entry"]:
        folder_name = next(p for p in (out / "entries").iterdir() if p.name.startswith(name))
        per_item = pd.read_csv(folder_name / "evaluation" / "per_item.csv", dtype={"name": str})
        assert sorted(per_item["name"].astype(str)) == ["0005", "0006"]
    summary = result.summary_path.read_text()
    assert "rainy input" in summary and "frames/s @32x24" in summary and "split holdout" in summary
    assert "nas-restore rank (test)" in summary

    # re-running resumes: nothing is retrained again
    calls = []
    monkeypatch.setattr(rank_mod, "run_retrain", lambda *a, **k: calls.append(a) or pytest.fail("retrained"))
    again = run_rank([str(searched), "random:1"], tiny_config(folder), out, say=lambda m: None)
    assert again.ran == [] and calls == []
    assert list(pd.read_csv(out / "results.csv")["entry"]) == list(table["entry"])


def test_rank_refuses_training_on_holdout_and_evaluating_on_trained_data(folder):
    with pytest.raises(DataError, match="refusing to train on the split 'holdout'"):
        check_data(tiny_config(folder, retrain=RetrainRunConfig(data=DataConfig(folder=str(folder),
                                                                                  split="holdout"))))
    with pytest.raises(DataError, match="same split 'fit'"):
        check_data(tiny_config(folder, eval_split="fit"))
    with pytest.raises(DataError, match="--eval-split' is not given|--eval-split is not given"):
        check_data(tiny_config(folder, eval_split=None))
    with pytest.raises(DataError, match="defines the split.*holdout.*--train-split"):
        check_data(tiny_config(folder, retrain=RetrainRunConfig(data=DataConfig(folder=str(folder)))))
    check_data(tiny_config(folder))  # fit -> holdout is fine


def test_rank_refuses_overlapping_splits(tmp_path, folder):
    import shutil

    root = tmp_path / "overlap"
    shutil.copytree(folder, root)
    (root / "SPLITS.txt").write_text("fit: 1 2 3 4\ncheck: 4 5\n")
    with pytest.raises(DataError, match="share the ids \\[4\\]"):
        check_data(tiny_config(root, retrain=RetrainRunConfig(data=DataConfig(folder=str(root), split="fit")),
                               eval_split="check"))


def test_cli_rank_holdout_training_is_a_user_error(folder, searched, tmp_path, capsys):
    code = main(["rank", str(searched), "--train-data", str(folder), "--train-split", "holdout", "--eval-data",
                 str(folder), "--eval-split", "fit", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "refusing to train on the split 'holdout'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_references_can_be_rebuilt_at_the_searched_size(searched):
    entries = resolve_entries([str(searched), "tmics-heavy"], RankConfig(reference_size="like"))
    heavy = entries[1]
    assert heavy.label == "tmics-heavy@like" and heavy.kind == "reference"
    assert heavy.genotype.space_config["channels"] == TINY_SPACE["channels"]
    assert heavy.genotype.space_config["cell"] == "chain"  # the released cells, smaller
    assert count_parameters(build_model(heavy.genotype)) < 100_000


def test_random_entries_need_a_like_genotype():
    with pytest.raises(ValueError, match="random:2 needs a genotype"):
        resolve_entries(["random:2"], RankConfig())
    with pytest.raises(ValueError, match="random:N with N >= 1"):
        resolve_entries(["random:x"], RankConfig())


def test_reference_size_like_leaves_references_of_other_spaces_alone(searched):
    from search_spaces import list_spaces
    from search_spaces.reference import reference_names

    list_spaces()
    if "rescnn" not in reference_names():
        pytest.skip("no rescnn baseline registered")
    entries = resolve_entries([str(searched), "rescnn", "space:rescnn:demo"], RankConfig(reference_size="like"))
    assert [e.kind for e in entries] == ["file", "reference", "space"]
    assert entries[1].genotype.space == "rescnn"
    assert entries[1].genotype.genotype_id() == entries[2].genotype.genotype_id()
