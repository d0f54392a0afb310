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
                  device="cpu", match_tolerance=None)  # uniform draws unless a test matches them
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
    for name, unit in zip(models["entry"], models["unit"]):
        folder_name = next(p for p in (out / "entries").iterdir() if p.name.startswith(name))
        assert out / unit == folder_name / "seed-0"  # one unit per (entry, seed)
        per_item = pd.read_csv(out / unit / "evaluation" / "per_item.csv", dtype={"name": str})
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


def test_rank_with_two_seeds_gives_a_row_per_entry_and_seed_and_the_statistics(folder, searched, tmp_path, capsys,
                                                                               monkeypatch):
    out = tmp_path / "seeds"
    args = ["rank", str(searched), "random:1", "--train-data", str(folder), "--train-split", "fit", "--eval-data",
            str(folder), "--eval-split", "holdout", "--epochs", "1", "--batch-size", "2", "--patch-size", "16",
            "--profile-size", "32x24", "--device", "cpu", "--out", str(out)]
    assert main(args + ["--seeds", "2", "--match-size", "0.15"]) == 0
    printed = capsys.readouterr().out
    assert "searched (seed 1)" in printed and "to the random mean" in printed
    table = pd.read_csv(out / "results.csv")
    models = table[table["kind"] != "input"]
    assert models.groupby("entry")["seed"].apply(sorted).to_dict() == {"searched": [0, 1], "random-1": [0, 1]}
    assert (models["status"] == "done").all() and (models["macs"] == models["flops"] // 2).all()
    assert models.groupby("entry")["rank"].nunique().eq(1).all()  # one rank per entry, by its mean over seeds
    # the random row was matched: its recorded params and MACs are within 15 % of the searched genotype's
    like = models[models["entry"] == "searched"].iloc[0]
    drawn = models[models["kind"] == "random"]
    assert ((drawn["params"] / like["params"] - 1).abs() <= 0.15).all()
    assert ((drawn["macs"] / like["macs"] - 1).abs() <= 0.15).all()
    assert drawn["match_params_ratio"].between(0.85, 1.15).all()

    per_image = pd.read_csv(out / "per_image.csv", dtype={"name": str})
    assert len(per_image) == 2 * 2 * 2 + 2  # (entry, seed, image) + the rainy input's two images
    stats = pd.read_csv(out / "statistics.csv").set_index("entry")
    assert stats.loc["searched", "seeds"] == 2
    searched_psnr = models[models["entry"] == "searched"]["psnr"]
    assert stats.loc["searched", "psnr_mean"] == pytest.approx(searched_psnr.mean())
    assert stats.loc["searched", "psnr_std"] == pytest.approx(searched_psnr.std(ddof=1))
    assert stats.loc["searched", "psnr_diff_lo"] <= stats.loc["searched", "psnr_diff_random"] \
        <= stats.loc["searched", "psnr_diff_hi"]
    summary = (out / "summary.md").read_text()
    assert "## Seeds and chance" in summary and "2 retraining seeds per entry (0..1)" in summary
    assert f"{searched_psnr.mean():.2f} ± {searched_psnr.std(ddof=1):.2f}" in summary
    assert "separable from random" in summary and "2000 resamples" in summary
    assert "`random:1`: 1 draws within ±15%" in summary

    # a third seed trains only the new units; the first two are resumed
    calls = []
    real = rank_mod.run_retrain
    monkeypatch.setattr(rank_mod, "run_retrain", lambda g, c, o: calls.append(c.train.seed) or real(g, c, o))
    assert main(args + ["--seeds", "3"]) == 0
    assert calls == [2, 2]
    assert len(pd.read_csv(out / "results.csv")) == 1 + 2 * 3
    assert "3 retraining seeds per entry (0..2)" in (out / "summary.md").read_text()


def test_without_random_rows_the_summary_says_no_comparison_with_chance_is_possible(folder, searched, tmp_path):
    result = run_rank([str(searched)], tiny_config(folder), tmp_path / "alone", say=lambda m: None)
    summary = result.summary_path.read_text()
    assert "No random rows: no comparison with chance is possible" in summary and "`random:5`" in summary
    assert "one retraining seed per entry (0)" in summary
    assert pd.isna(result.statistics.set_index("entry").loc["searched", "psnr_diff_random"])


def test_a_ranking_of_the_one_seed_layout_is_resumed_for_its_first_seed(folder, searched, tmp_path, monkeypatch):
    out = tmp_path / "old"
    run_rank([str(searched)], tiny_config(folder), out, say=lambda m: None)
    unit = next((out / "entries").iterdir())
    for child in (unit / "seed-0").iterdir():  # as a ranking made before seeds: the unit is the entry folder
        child.rename(unit / child.name)
    (unit / "seed-0").rmdir()
    monkeypatch.setattr(rank_mod, "run_retrain", lambda *a, **k: pytest.fail("retrained"))
    again = run_rank([str(searched)], tiny_config(folder), out, say=lambda m: None)
    assert again.ran == [] and again.results["unit"].iloc[1] == f"entries/{unit.name}"
    assert len(pd.read_csv(out / "per_image.csv")) == 4  # the old unit's per-image scores are used


def test_random_draws_are_matched_to_the_searched_genotype_on_parameters_and_macs(searched):
    from nas_restore.sources import load_genotype, random_genotypes

    draws = []
    config = RankConfig(profile_size=[24, 32])  # the default tolerance, 15 %
    entries = resolve_entries([str(searched), "random:3"], config, draws)
    randoms = [e for e in entries if e.kind == "random"]
    like_params, like_macs = rank_mod.network_size(load_genotype(searched), [24, 32])
    assert len(randoms) == 3 and draws[0]["found"] == 3 and draws[0]["tried"] > 3  # some draws were refused
    for entry in randoms:
        params, macs = rank_mod.network_size(entry.genotype, [24, 32])
        assert abs(params / like_params - 1) <= 0.15 and abs(macs / like_macs - 1) <= 0.15
        assert (entry.match["params"], entry.match["macs"]) == (params, macs)
        assert "matched on parameters and MACs within 15%" in entry.source
    # the refused draws were out of tolerance
    kept = {e.genotype.metadata["seed"] for e in randoms}
    for seed in set(range(draws[0]["tried"])) - kept:
        params, macs = rank_mod.network_size(random_genotypes(load_genotype(searched), 1, seed)[0], [24, 32])
        assert abs(params / like_params - 1) > 0.15 or abs(macs / like_macs - 1) > 0.15
    # off: uniform draws, seeds 0..N-1
    unmatched = resolve_entries([str(searched), "random:2"], RankConfig(match_tolerance=None))
    assert [e.label for e in unmatched[1:]] == ["random-0", "random-1"]
    assert RankConfig.from_dict({"match_tolerance": None}).match_tolerance is None
    with pytest.raises(Exception, match="match_tolerance must be > 0"):
        RankConfig.from_dict({"match_tolerance": -1})
    with pytest.raises(Exception, match="seeds must be >= 1"):
        RankConfig.from_dict({"seeds": 0})


def test_too_few_matched_draws_are_said_in_the_summary_and_logged(folder, searched, tmp_path, monkeypatch, caplog):
    def fake_size(genotype, profile_size):  # only the seed-0 draw is of the searched genotype's size
        return (100, 100) if genotype.metadata.get("seed", 0) == 0 else (1000, 1000)

    monkeypatch.setattr(rank_mod, "network_size", fake_size)
    with caplog.at_level("WARNING", logger="nas_restore.rank"):
        result = run_rank([str(searched), "random:2"], tiny_config(folder, match_tolerance=0.15, match_tries=3),
                          tmp_path / "few",
                          say=lambda m: None)
    assert "only 1 of 2 random draws" in caplog.text
    assert list(result.results["entry"]) == ["rainy input", "searched", "random-0"]
    assert result.draws[0]["found"] == 1 and result.draws[0]["tried"] == 6  # match_tries x N
    summary = result.summary_path.read_text()
    assert "only 1 of the 2 random rows asked for" in summary and "after 6 tries" in summary


def test_cli_rank_refuses_bad_seeds_and_match_size(searched, tmp_path, capsys):
    assert main(["rank", str(searched), "--seeds", "0", "--out", str(tmp_path / "a")]) == 2
    assert "seeds must be >= 1" in capsys.readouterr().err
    assert main(["rank", str(searched), "--match-size", "lots", "--out", str(tmp_path / "b")]) == 2
    assert "--match-size expects a fraction" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
