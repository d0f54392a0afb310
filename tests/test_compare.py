"""`nas-restore compare`: a tiny real comparison (darts + a multi-trial strategy), its report, and resume."""

import importlib.util

import pandas as pd
import pytest

import nas_restore.compare as compare_mod
from nas_restore.cli import main
from nas_restore.sources import load_genotype
from nas_restore.compare import CompareConfig, HeldOutConfig, SearchRecipe, budget_settings, run_compare
from nas_restore.datasets import DataConfig
from nas_restore.retraining import RetrainRunConfig
from nas_restore.run_records import write_anytime
from nas_restore.search import SearchResult, run_search
from nas_restore.training import RetrainConfig

TINY_SPACE = {"channels": 6, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}


def _real_random_available() -> bool:
    from strategies import find_strategy

    try:
        find_strategy("random")
    except KeyError:
        return False
    return importlib.util.find_spec("nas_restore.multitrial") is not None


def _fake_random_search(config, run_dir):
    """Stand-in for multi-trial random search while `random` is not registered: uniform draws, no NNI engine."""
    from pathlib import Path

    from nas_restore.nni_layer import random_architecture
    from search_spaces import find_space

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = find_space(config.space)
    space_config = spec.config(config.preset, **config.space_settings)
    arch = random_architecture(spec.make_space(space_config), seed=config.seed)
    write_anytime([{"cost_seconds": 0.1 * (t + 1), "cost_epochs": config.trial_epochs * (t + 1),
                    "val_psnr": 10.0 + t + config.seed, "source": f"trial {t}"} for t in range(config.max_trials)],
                  run_dir / "anytime.csv")
    genotype = spec.to_genotype(arch, space_config, {"strategy": "random", "seed": config.seed, "search_seconds": 0.1,
                                                     "search_cost_epochs": config.max_trials * config.trial_epochs})
    path = genotype.save(run_dir / "genotype.json")
    return SearchResult(genotype=genotype, genotype_path=path, run_dir=run_dir, seconds=0.1)


@pytest.fixture
def multi_trial(monkeypatch):
    """The multi-trial strategy of the comparison: the real `random` when it exists, else a registered stand-in."""
    import strategies
    from strategies import StrategySpec, find_strategy

    find_strategy("darts")  # load the built-in registry first
    if _real_random_available():
        return "random"
    monkeypatch.setitem(strategies.STRATEGIES, "random", StrategySpec(
        name="random", family="multi-trial", description="test stand-in", make=lambda: None))

    def dispatch(config, run_dir):
        return (_fake_random_search if config.strategy == "random" else run_search)(config, run_dir)

    monkeypatch.setattr(compare_mod, "run_search", dispatch)
    return "random"


def tiny_config(strategies, seeds=2, budget=2.0):
    return CompareConfig(
        space="tmics", preset="demo", space_settings=dict(TINY_SPACE), strategies=list(strategies), seeds=seeds,
        budget=budget, strategy_options={"darts": {"arc_learning_rate": 3e-2}} if "darts" in strategies else {},
        search=SearchRecipe(batch_size=4, data=DataConfig(patch_size=16, train_items=8, val_items=8)),
        retrain=RetrainRunConfig(train=RetrainConfig(epochs=1, batch_size=4, progress=False),
                                 data=DataConfig(patch_size=16, train_items=8, val_items=4)),
        test=HeldOutConfig(clips=1, frames_per_clip=3, size=24), device="cpu")


def _counting(monkeypatch, calls, fail_for=None):
    """Wrap compare's current run_search / run_retrain to count calls (and fail one (strategy, seed))."""
    search, retrain = compare_mod.run_search, compare_mod.run_retrain

    def counted_search(config, run_dir):
        calls["search"].append((config.strategy, config.seed))
        if fail_for == (config.strategy, config.seed):
            raise RuntimeError("simulated crash in the search")
        return search(config, run_dir)

    def counted_retrain(genotype, config, out):
        calls["retrain"].append(str(out))
        return retrain(genotype, config, out)

    monkeypatch.setattr(compare_mod, "run_search", counted_search)
    monkeypatch.setattr(compare_mod, "run_retrain", counted_retrain)


def test_budget_maps_epochs_to_one_shot_epochs_and_to_trials():
    config = CompareConfig(budget=4, trial_epochs=2)
    assert budget_settings(config, one_shot=True) == {"epochs": 4}
    assert budget_settings(config, one_shot=False) == {"max_trials": 2, "trial_epochs": 2}
    seconds = CompareConfig(budget=30, budget_unit="seconds", seconds_max_epochs=50)
    assert budget_settings(seconds, one_shot=True)["budget_seconds"] == 30.0
    assert budget_settings(seconds, one_shot=False)["max_trials"] == 50
    with pytest.raises(ValueError, match="buys no trial"):
        budget_settings(CompareConfig(budget=1, trial_epochs=2), one_shot=False)
    with pytest.raises(ValueError, match="budget_unit"):
        CompareConfig(budget_unit="hours")


def test_compare_writes_results_summary_plots_and_resumes_without_redoing(tmp_path, monkeypatch, multi_trial):
    out = tmp_path / "cmp"
    config = tiny_config(["darts", multi_trial])
    base_search, base_retrain = compare_mod.run_search, compare_mod.run_retrain
    calls = {"search": [], "retrain": []}
    _counting(monkeypatch, calls, fail_for=("darts", 1))  # the second darts run crashes
    first = run_compare(config, out, command="nas-restore compare (test)", say=lambda m: None)

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4
    failed = results[results["status"] == "failed"]
    assert list(zip(failed["strategy"], failed["seed"])) == [("darts", 1)]
    assert "simulated crash" in failed["error"].iloc[0]
    done = results[results["status"] == "done"]
    assert len(done) == 3 and first.ran == ["darts-seed0", "darts-seed1", "random-seed0", "random-seed1"]
    assert (done["params"] > 0).all() and (done["flops"] > 0).all() and done["psnr"].notna().all()
    assert done["ssim"].between(0, 1).all() and done["search_cost_epochs"].notna().all()
    assert (done[done["strategy"] == "darts"]["search_cost_epochs"] == 2).all()  # budget 2 -> 2 supernet epochs
    assert set(done[done["strategy"] == "darts"]["decided"]) <= {"yes", "no"}  # did the one-shot search decide?
    assert done[done["strategy"] != "darts"]["decided"].isna().all()  # multi-trial: nothing to decide
    assert results["psnr_input"].dropna().nunique() == 1  # one test set for all
    for name in ("summary.md", "anytime.png", "pareto.png", "box.png", "compare.yaml"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "**random**" in summary and "reference" in summary and "simulated crash" in summary
    assert "| decided |" in summary and "(margin " in summary  # the search-decided column
    assert "nas-restore compare (test)" in summary and "load average" in summary

    # resume: the crashed run is redone; a run whose done marker is gone only re-evaluates (its search and
    # retraining stages are recorded); finished runs are not touched
    (out / "runs" / "random-seed0" / "done.json").unlink()
    monkeypatch.setattr(compare_mod, "run_search", base_search)
    monkeypatch.setattr(compare_mod, "run_retrain", base_retrain)
    calls = {"search": [], "retrain": []}
    _counting(monkeypatch, calls)
    second = run_compare(config, out, say=lambda m: None)
    assert calls["search"] == [("darts", 1)]
    assert len(calls["retrain"]) == 1 and calls["retrain"][0].endswith("darts-seed1/retrain")
    assert second.ran == ["darts-seed1", "random-seed0"]
    results = pd.read_csv(out / "results.csv")
    assert (results["status"] == "done").all() and len(results) == 4
    assert not (out / "runs" / "darts-seed1" / "failed.json").exists()


def test_compare_refuses_changed_settings_and_unknown_strategies(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    from nas_restore import config as cfg

    cfg.save_yaml(tiny_config(["darts"]), out / "compare.yaml")
    with pytest.raises(ValueError, match="other settings.*budget"):
        run_compare(tiny_config(["darts"], budget=3.0), out, say=lambda m: None)
    with pytest.raises(KeyError, match="unknown strategy 'dart'"):
        run_compare(tiny_config(["dart"]), tmp_path / "other", say=lambda m: None)
    assert not (tmp_path / "other").exists()


def test_cli_compare_reports_a_bad_strategy_as_a_user_error(tmp_path, capsys):
    code = main(["compare", "--strategies", "darts,dart", "--seeds", "1", "--budget", "1", "--out",
                 str(tmp_path / "c")])
    assert code == 2
    assert "unknown strategy 'dart'" in capsys.readouterr().err


def test_config_files_keep_the_comparison_defaults_they_do_not_set():
    config = CompareConfig.from_dict({"retrain": {"train": {"epochs": 2}}, "strategies": ["darts"]})
    default = CompareConfig()
    assert config.retrain.train.epochs == 2 and config.strategies == ["darts"]
    assert config.retrain.train.lr == default.retrain.train.lr
    assert config.retrain.data.patch_size == default.retrain.data.patch_size == 32
    from nas_restore.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean compare.retrain"):
        CompareConfig.from_dict({"retrian": {}})


def test_the_same_genotype_is_retrained_from_the_same_start_whatever_ran_before(tmp_path, monkeypatch):
    """Pairing: a genotype's retraining depends on (genotype, seed) only, not on the search's RNG use."""
    import torch

    import strategies
    from strategies import StrategySpec, find_strategy

    find_strategy("darts")
    for name in ("fake-a", "fake-b"):
        monkeypatch.setitem(strategies.STRATEGIES, name, StrategySpec(
            name=name, family="multi-trial", description="test stand-in", make=lambda: None))

    def search(config, run_dir):
        torch.rand(1 if config.strategy == "fake-a" else 1000)  # strategies consume random numbers differently
        return _fake_random_search(config, run_dir)

    monkeypatch.setattr(compare_mod, "run_search", search)
    result = run_compare(tiny_config(["fake-a", "fake-b"], seeds=1), tmp_path / "c", say=lambda m: None)
    a, b = result.results.itertuples()
    assert a.status == b.status == "done" and a.genotype_id == b.genotype_id
    assert a.retrain_val_psnr == b.retrain_val_psnr and a.psnr == b.psnr


TINY_RDMC = {"channels": 4, "levels": 2, "dilations": [1, 2], "recursions": [1, 2],
             "upsamplings": ["bilinear", "pixelshuffle"]}


def two_space_config(strategies, seeds=1):
    config = tiny_config(strategies, seeds=seeds)
    config.space = ["tmics", "rdmc"]
    config.space_settings = {"tmics": dict(TINY_SPACE), "rdmc": dict(TINY_RDMC)}
    config.__post_init__()
    return config


def test_two_spaces_are_searched_alike_and_reported_per_space(tmp_path, monkeypatch, multi_trial):
    out = tmp_path / "cmp"
    config = two_space_config(["darts", multi_trial])
    calls = {"search": [], "retrain": []}
    _counting(monkeypatch, calls)
    first = run_compare(config, out, command="nas-restore compare --space tmics,rdmc (test)", say=lambda m: None)
    assert first.ran == ["tmics/darts-seed0", "tmics/random-seed0", "rdmc/darts-seed0", "rdmc/random-seed0"]
    for label in first.ran:
        assert (out / "runs" / label / "done.json").is_file(), label

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == ["space", *compare_mod.RESULT_COLUMNS]
    assert (results["status"] == "done").all(), results["error"].tolist()
    assert list(zip(results["space"], results["strategy"])) == [
        ("tmics", "darts"), ("tmics", "random"), ("rdmc", "darts"), ("rdmc", "random")]
    assert (results["params"] > 0).all() and (results["flops"] > 0).all()
    assert results["psnr_input"].nunique() == 1  # one test set for every space
    assert results["genotype"].str.startswith(tuple(f"runs/{s}/" for s in ("tmics", "rdmc"))).all()

    # each space searched and retrained with its own settings; the same test frames scored for both
    frames = {s: load_genotype(out / g).space_config.get("frames", 1)
              for s, g in zip(results["space"], results["genotype"])}
    assert frames == {"tmics": 3, "rdmc": 1}
    scored = [pd.read_csv(out / "runs" / label / "evaluation" / "per_item.csv")["name"].tolist()
              for label in first.ran]
    assert all(names == scored[0] for names in scored) and len(scored[0]) == 3  # 1 clip x 3 frames

    curves = compare_mod.anytime_curves(results, out, config)
    assert set(curves) == {"tmics/darts", "tmics/random", "rdmc/darts", "rdmc/random"}
    for name in ("summary.md", "anytime.png", "pareto.png", "box.png"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "across the `tmics`, `rdmc` spaces" in summary and "## Spaces" in summary
    assert "## Space `tmics`" in summary and "## Space `rdmc`" in summary
    assert summary.count("**random**") == 2 and "of the same space" in summary
    assert "centre frame" in summary and "tmics 3, rdmc 1" in summary
    assert "runs/<space>/<strategy>-seed<k>/" in summary

    # resume: nothing to redo; adding a space is allowed, changing a kept space's settings is not
    calls = {"search": [], "retrain": []}
    _counting(monkeypatch, calls)
    assert run_compare(config, out, say=lambda m: None).ran == [] and calls["search"] == []
    bigger = two_space_config(["darts", multi_trial])
    bigger.space = ["tmics", "rdmc", "rrgnet"]
    compare_mod._check_same_settings(out, bigger)
    changed = two_space_config(["darts", multi_trial])
    changed.space_settings["rdmc"]["channels"] = 6
    with pytest.raises(ValueError, match="preset/space_settings of rdmc"):
        compare_mod._check_same_settings(out, changed)
    with pytest.raises(ValueError, match="other settings.*space"):
        compare_mod._check_same_settings(out, tiny_config(["darts", multi_trial], seeds=1))
    # a space left out and named again with other settings: its old runs are not reused
    (out / "compare.yaml").unlink()
    with pytest.raises(ValueError, match="runs of space 'rdmc' made with other settings"):
        compare_mod._check_same_settings(out, changed)
    assert (out / "runs" / "rdmc" / "space.json").is_file()


def test_space_lists_presets_and_settings_are_read_per_space():
    from nas_restore.config import ConfigError

    config = CompareConfig.from_dict({"space": "tmics, rdmc", "preset": "demo",
                                      "space_settings": {"rdmc": {"channels": 4}}})
    assert config.spaces == ["tmics", "rdmc"] and config.multi_space
    assert config.settings_for("rdmc") == {"channels": 4} and config.settings_for("tmics") == {}
    assert compare_mod.search_config(config, "darts", 0, "rdmc").space_settings == {"channels": 4}
    single = CompareConfig.from_dict({"space": ["tmics"], "space_settings": {"channels": 6}})
    assert single.space == "tmics" and not single.multi_space  # one space: stored as before
    assert single.settings_for("tmics") == {"channels": 6}
    keyed = CompareConfig(space=["tmics", "rdmc"], preset={"tmics": "cpu", "rdmc": "demo"})
    assert keyed.preset_for("tmics") == "cpu" and keyed.preset_for("rdmc") == "demo"
    with pytest.raises(ConfigError, match="key space_settings by space name"):
        CompareConfig.from_dict({"space": ["tmics", "rdmc"], "space_settings": {"channels": 6}})
    with pytest.raises(ValueError, match="missing \\['rdmc'\\]"):
        CompareConfig(space=["tmics", "rdmc"], preset={"tmics": "demo"})
    with pytest.raises(ValueError, match="twice"):
        CompareConfig(space="tmics,tmics")
    assert compare_mod.check_spaces(CompareConfig(space="tmics,rrgnet,rdmc")) == {"tmics": 3, "rrgnet": 5, "rdmc": 1}
    short = CompareConfig(space="tmics,rrgnet", test=HeldOutConfig(frames_per_clip=3))
    with pytest.raises(ValueError, match="'rrgnet' takes 5 input frames.*frames_per_clip"):
        compare_mod.check_spaces(short)


def test_cli_compare_reports_an_unknown_space_among_several_as_a_user_error(tmp_path, capsys):
    code = main(["compare", "--space", "tmics,rdmcc", "--strategies", "darts", "--seeds", "1", "--budget", "1",
                 "--out", str(tmp_path / "c")])
    assert code == 2
    assert "unknown search space 'rdmcc'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
