"""`nas-restore study`: searches, trust, rank, profile and findings from one config, resumable, on tiny data."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

import nas_restore.evidence as evidence
import nas_restore.rank as rank_mod
from nas_restore.cli import main
from nas_restore.config import ConfigError
from nas_restore.errors import UserError
from nas_restore.evidence import (StudyConfig, changed_settings, difference_to, findings, run_study,
                                  searched_vs_random)
from nas_restore.statistics import DifferenceCI

TINY_SPACE = {"channels": 4, "frames": 1, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "skip_connect"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Ten synthetic image pairs with a fit / holdout split, like ../shared/data/rain100l."""
    from nas_restore.data.synthetic import write_synthetic_folder

    root = write_synthetic_folder(tmp_path_factory.mktemp("pairs"), kind="images", count=10, size=24, seed=3)
    (root / "SPLITS.txt").write_text("# test split\nfit: 1 2 3 4 5 6 7 8\nholdout: 9 10\n")
    return root


def tiny_settings(folder, **overrides):
    """Two tiny searches (one one-shot, one multi-trial), the trust check, 2 random rows, one reference, 2 seeds."""
    settings = {
        "data": {"folder": str(folder), "split": "fit", "patch_size": 16, "val_fraction": 0.25, "items_per_epoch": 4},
        "searches": [
            {"name": "darts", "space": "tmics", "preset": "demo", "space_settings": TINY_SPACE, "strategy": "darts",
             "epochs": 1, "batch_size": 2, "seeds": [0]},
            {"name": "rand", "space": "tmics", "preset": "demo", "space_settings": TINY_SPACE, "strategy": "random",
             "max_trials": 2, "trial_epochs": 1, "batch_size": 2, "seeds": [0]},
        ],
        "trust": {"samples": 3, "standalone_epochs": 1, "standalone_steps_per_epoch": 1},
        "entries": ["random:2", "rescnn"],
        "rank": {"seeds": 2, "match_tolerance": None, "latency_repeats": 1,
                 "retrain": {"train": {"epochs": 1, "batch_size": 2}, "data": {"patch_size": 16, "items_per_epoch": 4}},
                 "eval_data": str(folder), "eval_split": "holdout"},
        "profile": {"size": [24, 32], "precisions": ["fp32", "bf16"], "repeats": 1, "warmup": 0},
        "device": "cpu",
    }
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def study(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("study") / "report"
    settings = tiny_settings(folder)
    result = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), out, command="nas-restore study (test)",
                       say=lambda m: None)
    return out, settings, result


def test_a_study_searches_checks_trust_ranks_and_profiles_into_one_table(study):
    out, _, result = study
    table = pd.read_csv(out / "results.csv", dtype={"search": str})
    for column in ("entry", "kind", "seed", "params", "macs", "psnr", "ssim", "fps_fp32", "fps_bf16"):
        assert column in table, column
    assert "warping_error" not in table  # image pairs: no temporal columns
    assert set(table["kind"]) == {"searched", "random", "reference", "input"}
    counts = table.groupby("entry")["kind"].agg(["first", "size"])
    assert counts.loc["darts-seed0"].tolist() == ["searched", 2]
    assert counts.loc["rand-seed0"].tolist() == ["searched", 2]
    assert counts.loc["random-0"].tolist() == ["random", 2] and counts.loc["random-1"].tolist() == ["random", 2]
    assert counts.loc["rescnn"].tolist() == ["reference", 2] and counts.loc["rainy input"].tolist() == ["input", 1]
    assert sorted(table.loc[table["kind"] == "searched", "search"].unique()) == ["darts-seed0", "rand-seed0"]
    models = table[table["kind"] != "input"]
    assert (models["status"] == "done").all() and sorted(models["seed"].unique()) == [0, 1]
    assert (models["params"] > 0).all() and (models["macs"] > 0).all()
    assert (models["fps_fp32"] > 0).all() and (models["fps_bf16"] > 0).all()
    # scored on the holdout split only
    for unit in models["unit"]:
        per_item = pd.read_csv(out / "rank" / unit / "evaluation" / "per_item.csv", dtype={"name": str})
        assert sorted(per_item["name"]) == ["0009", "0010"]
    # the stages' folders: a search run per (spec, seed), a trust check for the one-shot search only
    assert (out / "searches" / "darts-seed0" / "genotype.json").is_file()
    assert (out / "searches" / "rand-seed0" / "genotype.json").is_file()
    assert (out / "trust" / "darts-seed0" / "done.json").is_file() and not (out / "trust" / "rand-seed0").exists()
    [trust] = result.trust
    assert -1 <= trust["tau_lo"] <= trust["kendall_tau"] <= trust["tau_hi"] <= 1
    summary = (out / "summary.md").read_text()
    for heading in ("## Findings", "## Searches", "## Seeds and chance", "## Profile", "## Protocol", "## Machine",
                    "## Regenerate"):
        assert heading in summary, heading
    assert "nas-restore study (test)" in summary and "load average" in summary
    assert f"{trust['kendall_tau']:.2f} [{trust['tau_lo']:.2f}, {trust['tau_hi']:.2f}]" in summary
    darts = next(s for s in result.searches if s["search"] == "darts-seed0")
    assert darts["decided"] in (True, False) and darts["median_margin"] is not None  # "did it decide" figures
    assert "| darts-seed0 | darts | tmics | done |" in summary
    assert "| rand-seed0 | searched | 2 |" in summary  # rank's chance table, with the study's kinds
    assert "separable from random" in summary
    assert "2 optimiser steps per network" in summary  # 1 epoch x (4 items per epoch / batch 2)
    assert result.findings and all(line in summary for line in result.findings)


def test_a_rerun_skips_every_finished_unit(study, monkeypatch):
    out, settings, first = study
    monkeypatch.setattr(evidence, "run_search", lambda *a, **k: pytest.fail("searched again"))
    monkeypatch.setattr(rank_mod, "run_retrain", lambda *a, **k: pytest.fail("retrained again"))
    monkeypatch.setattr(evidence, "profile_network", lambda *a, **k: pytest.fail("profiled again"))
    import nas_restore.trust as trust_mod
    monkeypatch.setattr(trust_mod, "run_trust", lambda *a, **k: pytest.fail("trust checked again"))
    again = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), out, say=lambda m: None)
    assert again.ran == []
    pd.testing.assert_frame_equal(again.results.reset_index(drop=True), first.results.reset_index(drop=True))


def test_a_changed_setting_is_refused_naming_the_field(study):
    out, settings, _ = study
    before = (out / "study.yaml").read_text()
    changed = copy.deepcopy(settings)
    changed["rank"]["retrain"]["train"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"rank\.retrain\.train\.epochs"):
        run_study(StudyConfig.from_dict(changed), out, say=lambda m: None)
    changed = copy.deepcopy(settings)
    changed["searches"][0]["epochs"] = 3
    with pytest.raises(ConfigError, match=r"searches\.darts\.epochs"):
        run_study(StudyConfig.from_dict(changed), out, say=lambda m: None)
    changed = copy.deepcopy(settings)
    changed["data"]["patch_size"] = 12
    with pytest.raises(ConfigError, match=r"data\.patch_size"):
        evidence.plan(StudyConfig.from_dict(changed), out)
    assert (out / "study.yaml").read_text() == before  # refused before anything was written


def test_seeds_searches_and_entries_may_be_added():
    base = evidence.cfg.to_dict(StudyConfig())
    grown = copy.deepcopy(base)
    grown["searches"][0]["seeds"] = [0, 1, 2]
    grown["searches"].append({"name": "spos", "strategy": "spos", "epochs": 2, "seeds": [0]})
    grown["entries"] = [*base["entries"], "tmics-light"]
    grown["rank"]["seeds"] = 5
    grown["progress"] = True
    assert changed_settings(base, grown) == []
    grown["searches"][0]["epochs"] = 9
    grown["rank"]["eval_split"] = "other"
    assert changed_settings(base, grown) == ["rank.eval_split", "searches.darts.epochs"]


def test_dry_run_lists_the_units_with_their_cost_and_what_is_done(study, tmp_path, capsys):
    out, settings, _ = study
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    assert main(["study", "--config", str(config_file), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "done  search  searches/darts-seed0: darts: 1 supernet epoch(s) x 2 batches = 2 steps" in printed
    assert "done  search  searches/rand-seed0: random: 2 trial(s) x 1 epoch(s) x 2 batches = 4 steps" in printed
    assert ("done  trust   trust/darts-seed0: 3 architectures scored by the supernet and trained alone for 1 "
            "epoch(s) x 1 batches = 3 steps") in printed
    assert "done  rank    rank/ (5 entries x 2 seeds): 10 retrainings of 1 epoch(s) x 2 batches" in printed
    fresh = tmp_path / "fresh"
    assert main(["study", "--config", str(config_file), "--out", str(fresh), "--dry-run"]) == 0
    assert "todo  search  searches/darts-seed0" in capsys.readouterr().out and not fresh.exists()


def test_config_study_prints_defaults_that_load_back(capsys):
    assert main(["config", "study"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    config = StudyConfig.from_dict(data)
    assert config == StudyConfig()
    assert [s["name"] for s in config.searches] == ["darts", "evolution"]
    assert config.rank.seeds == 3 and config.profile.precisions == ["fp32", "bf16"]


@pytest.mark.parametrize("search, message", [
    ({"name": "a", "strategy": "darts", "data": {"folder": "x"}}, r"searches\[a\] sets data"),
    ({"name": "a", "strategy": "darts", "epoch": 3}, r"searches\[a\]\.epoch \(did you mean searches\[a\]\.epochs"),
    ({"name": "a b", "strategy": "darts"}, r"searches\[0\] needs a name"),
    ({"name": "a", "strategy": "darts", "seeds": 2}, r"searches\[a\]\.seeds must be a list"),
])
def test_bad_search_specs_are_config_errors(search, message):
    with pytest.raises(ConfigError, match=message):
        StudyConfig.from_dict({"searches": [search]})


def test_other_bad_settings_are_config_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="used twice"):
        StudyConfig.from_dict({"searches": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="like: 'nope' names no search"):
        StudyConfig.from_dict({"like": "nope"})
    with pytest.raises(ConfigError, match="a study retrains on its searches' data"):
        StudyConfig.from_dict({"data": {"folder": str(folder), "split": "fit"},
                               "rank": {"retrain": {"data": {"folder": str(folder), "split": "other"}}}})
    holdout = StudyConfig.from_dict(tiny_settings(folder, data={"folder": str(folder), "split": "holdout"}))
    with pytest.raises(Exception, match="refusing to train on the split 'holdout'"):
        run_study(holdout, tmp_path / "never", say=lambda m: None)
    assert not (tmp_path / "never").exists()
    code = main(["study", "--out", str(tmp_path / "x"), "--config", str(tmp_path / "missing.yaml")])
    assert code == 2


# --------------------------------------------------------------------------------------------------
# the findings follow the figures


def _figures(searched_psnr, random_psnr, reference_psnr, searched_macs=1e6, reference_macs=2e6):
    rows = [("s-0", "searched", searched_psnr, 0.1, searched_macs),
            ("s-1", "searched", searched_psnr - 0.5, 0.1, searched_macs),
            ("r-0", "random", random_psnr, 0.2, 1e6), ("r-1", "random", random_psnr - 0.2, 0.2, 1e6),
            ("prn", "reference", reference_psnr, 0.3, reference_macs)]
    return pd.DataFrame(rows, columns=["entry", "kind", "psnr_mean", "psnr_std", "macs"]).assign(seeds=3)


def _ci(difference, lo, hi):
    return DifferenceCI(difference=difference, lo=lo, hi=hi, confidence=0.95, resamples=2000, images=40, seeds=3,
                        baseline_rows=2)


def test_findings_say_search_beats_chance_and_the_reference_when_the_figures_do():
    text = findings(_figures(34.0, 32.0, 33.0), _ci(1.9, 1.2, 2.6), _ci(1.0, 0.4, 1.6), target_psnr=33.0,
                    diagnosis="The search diagnostics: 2 of 2 decided.")
    assert text[0].startswith("**Search beats chance here**") and "[+1.20, +2.60]" in text[0]
    assert "excludes 0" in text[0]
    assert all("diagnostics" not in line for line in text)  # no excuse needed when search won
    assert "beats the best hand-designed reference, prn" in text[1] and "at equal or lower MACs (0.50x" in text[1]
    assert text[1].endswith("is met.")
    assert text[2] == ("The best searched PSNR is 34.00 ± 0.10 dB (s-0, over 3 seed(s)), at or above the target of "
                       "33 dB.")


def test_findings_say_search_does_not_beat_chance_and_why_when_the_figures_do():
    text = findings(_figures(30.5, 30.6, 31.0, searched_macs=3e6), _ci(-0.2, -0.9, 0.5), _ci(-0.5, -1.1, -0.1),
                    target_psnr=33.0, diagnosis="The search diagnostics: 0 of 2 one-shot search(es) decided.")
    assert text[0].startswith("**Search is not separable from chance here**") and "includes 0" in text[0]
    assert text[1] == "The search diagnostics: 0 of 2 one-shot search(es) decided."
    assert "falls short of the best hand-designed reference, prn" in text[2]
    assert "but at higher MACs (1.50x the reference's)" in text[2] and text[2].endswith("is not met.")
    assert text[3].endswith("below the target of 33 dB.")
    worse = findings(_figures(29.0, 31.0, 31.0), _ci(-2.0, -2.5, -1.5), _ci(0.1, -0.3, 0.5))
    assert worse[0].startswith("**Search does worse than chance here**")
    assert "matches the best hand-designed reference" in worse[1] and worse[1].endswith("is met.")


def test_findings_never_state_figures_that_are_missing():
    figures = _figures(30.0, 30.0, 30.0)
    no_random = findings(figures[figures["kind"] != "random"], None, None)
    assert "no random rows" in no_random[0] and "not measured" in no_random[0]
    no_interval = findings(figures, None, None)
    assert "not computed and no verdict is given" in no_interval[0] and "no paired interval" in no_interval[1]
    nothing = findings(figures[figures["kind"] != "searched"], None, None)
    assert nothing == ["No searched genotype finished retraining and scoring, so the study has no finding on search "
                       "yet."]


def test_the_searched_mean_interval_follows_the_per_image_scores():
    rng = np.random.default_rng(0)
    images = [f"{i:03d}" for i in range(30)]
    difficulty = rng.normal(30, 2, len(images))

    def table(gain):
        rows = []
        for entry, kind, offset in (("s-0", "searched", gain), ("s-1", "searched", gain), ("r-0", "random", 0.0),
                                    ("r-1", "random", 0.0), ("prn", "reference", 0.3)):
            for seed in (0, 1, 2):
                noise = rng.normal(0, 0.2, len(images))
                rows += [{"entry": entry, "kind": kind, "seed": seed, "name": n, "psnr": d + offset + e, "ssim": 0.9}
                         for n, d, e in zip(images, difficulty, noise)]
        return pd.DataFrame(rows)

    kinds = {"s-0": "searched", "s-1": "searched", "r-0": "random", "r-1": "random", "prn": "reference"}
    better = searched_vs_random(table(1.0), kinds)
    assert better.lo > 0 and math.isclose(better.difference, 1.0, abs_tol=0.15)
    alike = searched_vs_random(table(0.0), kinds)
    assert alike.lo < 0 < alike.hi
    assert searched_vs_random(table(1.0), {**kinds, "r-0": "reference", "r-1": "reference"}) is None
    versus = difference_to(table(1.0), "s-0", "prn")
    assert versus.lo > 0 and math.isclose(versus.difference, 0.7, abs_tol=0.15)


# --------------------------------------------------------------------------------------------------
# video clips: frames, alignment and warping error


def test_on_video_clips_results_have_frames_alignment_and_warping_error(tmp_path, folder):
    settings = tiny_settings(folder, trust=None, entries=[],
                             searches=[{"name": "rand", "space": "tmics", "preset": "demo",
                                        "space_settings": TINY_SPACE, "strategy": "random", "max_trials": 1,
                                        "trial_epochs": 1, "batch_size": 2, "seeds": [0]}],
                             profile={"size": [16, 16], "precisions": ["fp32"], "repeats": 1, "warmup": 0})
    settings["rank"] = {**settings["rank"], "seeds": 1, "eval_data": None, "eval_split": None,
                        "test": {"clips": 1, "frames_per_clip": 3, "size": 16}}
    result = run_study(StudyConfig.from_dict(settings), tmp_path / "video", say=lambda m: None)
    table = pd.read_csv(tmp_path / "video" / "results.csv")
    assert list(table["kind"]) == ["input", "searched"]
    assert {"frames", "alignment", "warping_error", "fps_fp32"} <= set(table.columns)
    searched = table.iloc[1]
    assert searched["frames"] == 1 and searched["alignment"] == "none" and searched["warping_error"] > 0
    assert table.iloc[0]["warping_error"] > 0  # the rainy input's own
    assert "## Temporal consistency" in result.summary_path.read_text()
    assert "There are no random rows" in result.findings[0]


# --------------------------------------------------------------------------------------------------
# a synth section: the study makes its own clips first, with a holdout split it scores on


def test_a_synth_section_makes_the_clips_first_and_scores_on_their_holdout(tmp_path):
    from tests.test_synth import make_frames, write_frame_folder

    video = write_frame_folder(tmp_path / "clean_video", make_frames(n=20, cut=20))
    data = tmp_path / "out" / "data"
    settings = tiny_settings(tmp_path, trust=None, entries=[],
                             synth={"inputs": [str(video)], "rain": ["light", "heavy"], "frames": 3, "stride": 2,
                                    "holdout": 0.3},
                             searches=[{"name": "rand", "space": "tmics", "preset": "demo",
                                        "space_settings": {**TINY_SPACE, "frames": 3}, "strategy": "random",
                                        "max_trials": 1, "trial_epochs": 1, "batch_size": 2, "seeds": [0]}],
                             profile={"size": [16, 16], "precisions": ["fp32"], "repeats": 1, "warmup": 0})
    settings["data"] = {"folder": str(data), "split": "fit", "patch_size": 16, "val_fraction": 0.25,
                        "items_per_epoch": 4}
    settings["rank"] = {**settings["rank"], "seeds": 1, "eval_data": str(data), "eval_split": "holdout"}
    config = StudyConfig.from_dict(copy.deepcopy(settings))
    assert [u.stage for u in evidence.plan(config, tmp_path / "out")] == ["synth"]  # nothing to count yet
    result = run_study(config, tmp_path / "out", say=lambda m: None)
    assert result.ran[0] == "synth" and (data / "synth.json").is_file() and (data / "SPLITS.txt").is_file()
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["kind"]) == ["input", "searched"] and table.iloc[1]["frames"] == 3
    assert "nas-restore synth" in result.summary_path.read_text()
    again = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), tmp_path / "out", say=lambda m: None)
    assert "synth" not in again.ran  # made once


@pytest.mark.parametrize("synth, message", [({"rain": ["light"]}, "synth.inputs must list"),
                                            ({"inputs": ["v.avi"], "rain": ["drizzle"]}, "drizzle")])
def test_a_bad_synth_section_is_refused_before_any_stage(tmp_path, synth, message):
    settings = tiny_settings(tmp_path, synth=synth)
    settings["data"]["folder"] = str(tmp_path / "data")
    with pytest.raises((UserError, ValueError), match=message):  # the CLI prints either as one error line
        StudyConfig.from_dict(settings)
