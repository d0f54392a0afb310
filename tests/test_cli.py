"""The command line as a user meets it: listings, rendering, and clear errors for bad input."""

import json

import pytest

from nas_restore.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_spaces_and_strategies_and_ops_list_as_text_and_json(capsys):
    code, out, _ = run(capsys, "spaces", "--json")
    assert code == 0 and "tmics" in [s["name"] for s in json.loads(out)]
    code, out, _ = run(capsys, "strategies", "--json")
    darts = {s["name"]: s for s in json.loads(out)}["darts"]
    assert darts["family"] == "differentiable" and "arc_learning_rate" in darts["defaults"]
    code, out, _ = run(capsys, "ops")
    assert code == 0 and "Residualblocks_5_1" in out and "SPAattention_3" in out


def test_search_config_typo_is_named_and_nothing_runs(capsys, tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text("epochs: 1\nbatch_sise: 4\n")
    code, out, err = run(capsys, "search", "--config", str(config), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "search.batch_sise (did you mean search.batch_size?)" in err
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_unknown_strategy_are_clear(capsys, tmp_path):
    code, _, err = run(capsys, "search", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r"))
    assert code == 2 and "nope.yaml does not exist" in err
    code, _, err = run(capsys, "search", "--strategy", "gdarts", "--out", str(tmp_path / "r"), "--epochs", "1")
    assert code == 2 and "unknown strategy 'gdarts'" in err


def test_render_a_published_darts_genotype_from_text(capsys, tmp_path):
    text = (tmp_path / "v2.txt")
    text.write_text("DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
                    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
                    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
                    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])\n")
    code, out, _ = run(capsys, "render", str(text), "--out", str(tmp_path / "r"), "--format", "svg")
    assert code == 0
    gv = (tmp_path / "r" / "cell_normal.gv").read_text()
    assert "dil_conv_3x3" in gv and "sep_conv_3x3" in gv
    assert (tmp_path / "r" / "cell_reduce.svg").exists()


def test_render_of_a_genotype_with_an_unknown_op_fails_clearly(capsys, tmp_path):
    from tests.test_genotype import tmics_genotype

    data = tmics_genotype().to_dict()
    data["cells"]["cna"]["nodes"][1][1]["op"] = "Resblock_9_9"
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "render", str(path))
    assert code == 2 and "cells.cna.nodes[1][1].op: unknown operation 'Resblock_9_9'" in err


def test_search_retrain_evaluate_on_a_folder_of_pairs(capsys, tmp_path):
    """The user's journey on their own image pairs, through the CLI only."""
    from nas_restore.data.synthetic import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "pairs", kind="images", count=10, size=32, seed=3)
    config = tmp_path / "search.yaml"
    config.write_text(
        "preset: demo\n"
        "space_settings: {channels: 6, frames: 1, cells_per_branch: 1, nodes_per_cell: 2,\n"
        "                 operations: [Residualblocks_3_1, DilConv_3_2, skip_connect]}\n"
        "epochs: 1\nbatch_size: 2\n")
    code, out, _ = run(capsys, "search", "--config", str(config), "--data", str(data), "--patch-size", "16",
                       "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress")
    assert code == 0 and "genotype" in out
    genotype = tmp_path / "run" / "genotype.json"
    assert json.loads(genotype.read_text())["macro"] == {"alignment": "none"}  # images: nothing to align

    code, out, _ = run(capsys, "retrain", str(genotype), "--out", str(tmp_path / "model"), "--data", str(data),
                       "--patch-size", "16", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                       "--no-progress")
    assert code == 0 and "best val PSNR" in out

    code, out, _ = run(capsys, "evaluate", str(tmp_path / "model" / "model.pt"), "--data", str(data), "--json",
                       "--save-outputs", str(tmp_path / "derained"))
    summary = json.loads(out)
    assert code == 0 and summary["count"] == 10
    assert {"psnr", "ssim", "psnr_input", "ssim_input"} <= set(summary)
    assert len(list((tmp_path / "derained").glob("*.png"))) == 10


def test_evaluate_a_missing_folder_or_a_corrupt_image_is_clear(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err
    from nas_restore.data.synthetic import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "pairs", kind="images", count=2, size=16, seed=1)
    victim = sorted((data / "input").glob("*.png"))[0]
    victim.write_bytes(b"not a png")
    code, _, err = run(capsys, "evaluate", "--data", str(data))
    assert code == 2 and victim.name in err


def test_retrain_refuses_a_folder_that_holds_another_genotype(capsys, tmp_path):
    from tests.test_genotype import tmics_genotype

    first, second = tmics_genotype(), tmics_genotype()
    second.macro["alignment"] = "ofm"
    out = tmp_path / "model"
    out.mkdir()
    first.save(out / "genotype.json")
    second.save(tmp_path / "second.json")
    code, _, err = run(capsys, "retrain", str(tmp_path / "second.json"), "--out", str(out), "--epochs", "1")
    assert code == 2 and f"holds the retraining of genotype {first.genotype_id()}" in err
    assert (out / "genotype.json").read_text() == first.to_json() + "\n"


def test_search_flag_errors_name_the_flag_and_the_fix(capsys, tmp_path):
    out = str(tmp_path / "r")
    code, _, err = run(capsys, "search", "--strategy-option", "arc_learning_rate", "--out", out, "--epochs", "1")
    assert code == 2 and "--strategy-option takes KEY=VALUE" in err
    code, _, err = run(capsys, "search", "--strategy-option", "arc_lr=0.1", "--out", out, "--epochs", "1")
    assert code == 2 and "no option(s) ['arc_lr']" in err and "arc_learning_rate=" in err
    code, _, err = run(capsys, "search", "--skip-cap", "two", "--out", out, "--epochs", "1")
    assert code == 2 and "--skip-cap takes a whole number >= 0 or 'off'" in err
    code, _, err = run(capsys, "search", "--objectives", "psnr,params", "--strategy", "darts", "--out", out,
                       "--epochs", "1", "--device", "cpu")
    assert code == 2 and "need a multi-trial strategy" in err


def test_search_flags_reach_the_run_config(capsys, tmp_path):
    """--strategy-option, --skip-cap off and the multi-trial flags land in the run's config.yaml."""
    import yaml

    config = tmp_path / "search.yaml"
    config.write_text("preset: cpu\nspace_settings: {channels: 4, frames: 1, cells_per_branch: 1, nodes_per_cell: 2,"
                      " rain_kernels: 2, operations: [DilConv_3_2, skip_connect]}\nepochs: 1\nbatch_size: 2\n"
                      "data: {patch_size: 16, train_items: 2, val_items: 2}\n")
    code, _, _ = run(capsys, "search", "--config", str(config), "--strategy", "random", "--max-trials", "2",
                     "--trial-epochs", "1", "--objectives", "psnr,params", "--skip-cap", "off",
                     "--strategy-option", "seed=3", "--out", str(tmp_path / "run"), "--device", "cpu",
                     "--no-progress")
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["strategy_options"] == {"seed": 3} and saved["skip_cap"] is None
    assert saved["max_trials"] == 2 and saved["objectives"] == ["psnr", "params"]
    assert (tmp_path / "run" / "pareto.csv").is_file()


@pytest.mark.parametrize("kind", ["search", "retrain", "compare", "rank", "continual"])
def test_config_prints_the_defaults_as_yaml_that_load_back(capsys, tmp_path, kind):
    """`nas-restore config KIND > FILE` writes a file that the command's --config loader reads as the defaults."""
    from nas_restore import config as cfg
    from nas_restore.cli import config_class

    code, out, _ = run(capsys, "config", kind)
    assert code == 0 and out.startswith(f"# nas-restore {kind} --config FILE")
    assert run(capsys, "config", kind, "--print")[1] == out   # --print: an alias
    path = tmp_path / f"{kind}.yaml"
    path.write_text(out)
    cls = config_class(kind)
    loaded = cfg.from_dict(cls, cfg.load_yaml(path, kind), kind)
    assert loaded == cls()
    assert cfg.to_dict(loaded) == cfg.to_dict(cls())


def test_config_file_from_the_config_command_drives_a_search(capsys, tmp_path):
    """The printed defaults, edited, run through `search --config` (a typo'd strategy stops it before any work)."""
    code, out, _ = run(capsys, "config", "search")
    path = tmp_path / "search.yaml"
    path.write_text(out.replace("strategy: darts", "strategy: gdarts"))
    code, _, err = run(capsys, "search", "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and err.startswith("error: unknown strategy 'gdarts'")
