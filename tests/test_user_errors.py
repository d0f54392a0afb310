"""A user's mistake is one `error:` line naming the problem and the fix (exit 2); a bug keeps its traceback."""

import json

import pytest
import torch

from nas_restore import cli
from nas_restore.build import ModelFileError, load_trained
from nas_restore.device import DeviceError, resolve_device
from nas_restore.errors import UnknownNameError, UserError
from nas_restore.inference import Derainer
from tests._tiny_model import tiny_genotype, write_model


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0][len("error: "):]


def test_retrain_a_folder_without_genotype_json_is_one_line_naming_the_fix(capsys, tmp_path):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    code, _, err = run(capsys, "retrain", str(folder), "--out", str(tmp_path / "model"), "--epochs", "1")
    message = one_error_line(err)
    assert code == 2
    assert f"{folder} is a folder without genotype.json" in message and "search run folder" in message
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flag, name, kind", [("--space", "tmicz", "search space"),
                                              ("--strategy", "gdarts", "strategy")])
def test_unknown_names_print_as_their_message_without_quotes(capsys, tmp_path, flag, name, kind):
    code, _, err = run(capsys, "search", flag, name, "--out", str(tmp_path / "r"), "--epochs", "1")
    message = one_error_line(err)
    assert code == 2
    assert message.startswith(f"unknown {kind} {name!r}; known: ")  # not "'unknown ...'" (a KeyError's repr)
    assert not message.endswith(("'", '"'))


def test_unknown_name_error_str_is_the_plain_message():
    err = UnknownNameError("strategy", "gdarts", ["darts", "gdas"])
    assert str(err) == err.message and not str(err).startswith(("'", '"')) and isinstance(err, KeyError)


def test_missing_config_file_names_the_config_command(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    for command, extra in (("search", []), ("retrain", ["g.json"]), ("compare", []), ("rank", ["g.json"])):
        code, _, err = run(capsys, command, *extra, "--config", str(missing), "--out", str(tmp_path / "r"))
        message = one_error_line(err)
        assert code == 2 and f"{missing} does not exist" in message
        assert f"`nas-restore config {command} > {missing}`" in message


def test_a_genotype_json_where_a_model_pt_is_expected_is_clear(capsys, tmp_path):
    genotype = tiny_genotype().save(tmp_path / "genotype.json")
    for argv in (["evaluate", str(genotype), "--data", str(tmp_path)],
                 ["derain", str(genotype), str(tmp_path), "--out", str(tmp_path / "o")],
                 ["export", str(genotype), "--out", str(tmp_path / "m.pt2")]):
        code, _, err = run(capsys, *argv)
        message = one_error_line(err)
        assert code == 2 and "JSON file (a genotype?" in message and "nas-restore retrain" in message


def test_a_model_pt_where_a_genotype_is_expected_is_clear(capsys, tmp_path):
    model = write_model(tmp_path / "m")
    for argv in (["retrain", str(model), "--out", str(tmp_path / "r")], ["inspect", str(model)]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "genotype" in one_error_line(err)


def test_model_files_missing_foreign_or_of_another_network(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="folder without model.pt"):
        load_trained(empty)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_trained(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(ModelFileError, match="not a torch weights file"):
        load_trained(tmp_path / "junk.pt")
    path = write_model(tmp_path / "m")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = {k: v[..., :1] for k, v in blob["state_dict"].items()}
    torch.save(blob, path)
    with pytest.raises(ModelFileError, match="weights of another network"):
        load_trained(path)


def test_bad_tiles_and_export_sizes_are_user_errors(capsys, tmp_path):
    model = write_model(tmp_path / "m")
    with pytest.raises(UserError, match="tile must be at least 8 px"):
        Derainer.from_checkpoint(model, tile=4, progress=False)
    code, _, err = run(capsys, "derain", str(model), str(tmp_path), "--out", str(tmp_path / "o"),
                       "--tile", "16", "--tile-overlap", "12")
    assert code == 2 and "--tile-overlap" in one_error_line(err)
    code, _, err = run(capsys, "export", str(model), "--out", str(tmp_path / "m.pt2"), "--height", "4")
    assert code == 2 and "--height/--width" in one_error_line(err)


def test_a_device_this_machine_lacks_is_a_user_error(capsys, tmp_path):
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        return
    model = write_model(tmp_path / "m")
    code, _, err = run(capsys, "evaluate", str(model), "--data", str(tmp_path), "--device", "cuda")
    assert code == 2 and "use --device cpu or auto" in one_error_line(err)


def test_retrain_out_that_is_a_file_is_clear(capsys, tmp_path):
    genotype = tiny_genotype().save(tmp_path / "genotype.json")
    code, _, err = run(capsys, "retrain", str(genotype), "--out", str(genotype), "--epochs", "1")
    assert code == 2 and "is a file: give a folder" in one_error_line(err)
    assert json.loads(genotype.read_text())["space"] == "tmics"


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch):
    """Only UserError prints as `error:`; a ValueError/KeyError from a bug keeps its traceback."""
    def broken(args):
        raise KeyError("internal")

    monkeypatch.setitem(cli.COMMANDS, "ops", broken)
    with pytest.raises(KeyError, match="internal"):
        cli.main(["ops"])
