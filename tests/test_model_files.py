"""Hostile model files: model.pt carries its genotype and fingerprints, so edits and damage are refused
with one clear error; --frames is checked against the model; export checks its size and --out first."""

import json
import logging
import os

import pytest
import torch

from nas_restore import export, outputs
from nas_restore.build import (ModelFileError, build_model, genotype_digest, layout_digest, load_trained, load_weights,
                               save_weights, store_genotype)
from nas_restore.data.synthetic import write_synthetic_folder
from nas_restore.errors import UserError
from nas_restore.evaluation import evaluate_folder
from nas_restore.genotype import Genotype
from nas_restore.inference import Derainer
from tests._tiny_model import tiny_genotype, write_model
from tests.test_user_errors import one_error_line, run


def swapped_genotype(blob_genotype: dict) -> dict:
    """The genotype with node 1's first edge reading the cell input 0 instead of node 0: same ops, same
    tensor shapes, another network."""
    edited = json.loads(json.dumps(blob_genotype))
    edge = edited["cells"]["dna"]["nodes"][1][0]
    assert edge["input"] == 2
    edge["input"] = 0
    return edited


# --------------------------------------------------------------------------------------------------
# fingerprints


def test_a_new_model_pt_stores_both_fingerprints_and_loads_without_warning(tmp_path, caplog):
    path = write_model(tmp_path / "m")
    blob = torch.load(path, weights_only=True)
    assert blob["layout_digest"] == layout_digest(blob["state_dict"])
    assert blob["genotype_digest"] == genotype_digest(blob["genotype"])
    with caplog.at_level(logging.WARNING, logger="nas_restore.build"):
        model, genotype = load_trained(path)
    assert genotype == tiny_genotype() and not caplog.records


def test_an_edited_genotype_with_the_same_weight_shapes_is_refused(tmp_path, caplog):
    path = write_model(tmp_path / "m")
    blob = torch.load(path, weights_only=True)
    blob["genotype"] = swapped_genotype(blob["genotype"])
    # the edit alone would load: the edited network takes exactly these tensors
    build_model(Genotype.from_dict(blob["genotype"])).load_state_dict(blob["state_dict"])
    torch.save(blob, path)
    with pytest.raises(ModelFileError) as info:
        load_trained(path)
    message = str(info.value)
    assert str(path) in message and "stored genotype was changed after training" in message
    assert "weights belong to another network" in message and "retrain" in message and "original" in message
    # without the fingerprint it is an unverifiable old-style file: it loads, with a warning
    del blob["genotype_digest"]
    torch.save(blob, path)
    with caplog.at_level(logging.WARNING, logger="nas_restore.build"):
        load_trained(path)
    assert "genotype_digest" in caplog.text


def test_a_file_from_before_fingerprints_loads_with_a_warning(tmp_path, caplog):
    genotype = tiny_genotype()
    model = build_model(genotype)
    path = tmp_path / "old.pt"  # exactly what save_weights wrote before this change
    torch.save({"state_dict": model.state_dict(), "format": "nas-restore-weights", "version": 1,
                "genotype": genotype.to_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="nas_restore.build"):
        _, loaded = load_trained(path)
    assert loaded == genotype
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "cannot be detected" in warnings[0].getMessage() and "retrain" in warnings[0].getMessage()


def test_weights_edited_without_changing_names_or_shapes_are_refused(tmp_path):
    path = write_model(tmp_path / "m")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = {k: v.double() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    build_model(tiny_genotype()).load_state_dict(blob["state_dict"])  # torch would cast them silently
    torch.save(blob, path)
    with pytest.raises(ModelFileError, match="layout fingerprint saved with them") as info:
        load_trained(path)
    assert "weights of another network" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ModelFileError, match="layout fingerprint"):
        load_weights(build_model(tiny_genotype()), path)


def test_store_genotype_makes_a_weights_only_file_verifiable(tmp_path, caplog):
    genotype = tiny_genotype()
    path = tmp_path / "model.pt"
    save_weights(build_model(genotype), path, best_epoch=0)  # the training core: no genotype yet
    store_genotype(path, genotype)
    with caplog.at_level(logging.WARNING, logger="nas_restore.build"):
        assert load_trained(path)[1] == genotype
    assert not caplog.records
    blob = torch.load(path, weights_only=True)
    blob["genotype"] = swapped_genotype(blob["genotype"])
    torch.save(blob, path)
    with pytest.raises(ModelFileError, match="changed after training"):
        load_trained(path)


@pytest.mark.parametrize("entry", ["not a genotype", {"space": "tmics", "cells": 5}, ["a", "list"]])
def test_a_genotype_entry_that_is_not_a_genotype_is_a_model_file_error(tmp_path, entry):
    path = write_model(tmp_path / "m")
    blob = torch.load(path, weights_only=True)
    blob["genotype"] = entry
    del blob["genotype_digest"]  # an unverifiable file: the entry itself must still be checked
    torch.save(blob, path)
    with pytest.raises(ModelFileError, match="holds a genotype that is not valid") as info:
        load_trained(path)
    assert str(path) in str(info.value) and "retrain" in str(info.value)


# --------------------------------------------------------------------------------------------------
# damaged and foreign files


def test_zero_byte_truncated_text_random_and_pickled_files_are_refused(tmp_path):
    good = write_model(tmp_path / "m").read_bytes()
    cases = {"empty.pt": (b"", "is empty (0 bytes)"),
             "truncated.pt": (good[: len(good) // 2], "damaged or truncated torch file"),
             "notes.pt": (b"these are not weights\njust some text\n" * 20, "a text file, not torch weights"),
             "random.pt": (bytes(range(256)) * 8, "not a torch weights file")}
    for name, (data, what) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for load in (load_trained, lambda p: load_weights(build_model(tiny_genotype()), p)):
            with pytest.raises(ModelFileError) as info:
                load(path)
            message = str(info.value)
            assert what in message and str(path) in message, (name, message)
            assert "nas-restore retrain" in message or "retrain" in message


def test_a_whole_pickled_module_is_refused_by_the_safe_load(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Conv2d(3, 3, 1), path)
    with pytest.raises(ModelFileError, match="weights_only=True") as info:
        load_trained(path)
    assert str(path) in str(info.value)


def test_folders_where_a_file_is_wanted(tmp_path, capsys):
    folder = tmp_path / "model.pt"  # a folder named like the file
    folder.mkdir()
    with pytest.raises(ModelFileError, match="is a folder without model.pt"):
        load_trained(folder)
    with pytest.raises(ModelFileError, match="is a folder without model.pt"):
        load_weights(build_model(tiny_genotype()), folder)
    code, _, err = run(capsys, "derain", folder, tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "is a folder without model.pt" in one_error_line(err)
    # a retrain folder holding its model.pt is accepted by both loaders
    path = write_model(tmp_path / "run")
    load_weights(build_model(tiny_genotype()), path.parent)


def test_a_dict_without_weights_or_of_another_format_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"genotype": tiny_genotype().to_dict()}, path)
    with pytest.raises(ModelFileError, match="holds a genotype but no weights"):
        load_trained(path)
    torch.save({"state_dict": {"w": "not a tensor"}, "genotype": tiny_genotype().to_dict()}, path)
    with pytest.raises(ModelFileError, match="not a mapping of names to tensors"):
        load_trained(path)
    torch.save({"state_dict": {}, "format": "someone-else", "genotype": {}}, path)
    with pytest.raises(ModelFileError, match="written by another tool"):
        load_trained(path)


# --------------------------------------------------------------------------------------------------
# --frames against the model


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return write_synthetic_folder(root / "data", kind="video", count=1, frames_per_clip=5, size=24, seed=0)


def test_evaluate_frames_other_than_the_models_is_one_error_line(tmp_path, clips, capsys):
    model = write_model(tmp_path / "m", frames=3)
    code, _, err = run(capsys, "evaluate", model, "--data", clips, "--frames", "5", "--device", "cpu",
                       "--no-progress")
    message = one_error_line(err)
    assert code == 2 and "--frames 5" in message and "takes 3 input frame(s)" in message
    assert "omit --frames" in message and "retrain" in message
    code, out, err = run(capsys, "evaluate", model, "--data", clips, "--frames", "3", "--device", "cpu",
                         "--no-progress")
    assert code == 0 and "PSNR" in out, err


@pytest.mark.parametrize("frames", ["4", "0", "-1"])
def test_even_or_non_positive_frames_are_one_error_line(tmp_path, clips, capsys, frames):
    model = write_model(tmp_path / "m", frames=3)
    for argv in (["evaluate", model, "--data", clips, "--frames", frames, "--device", "cpu"],
                 ["evaluate", "--data", clips, "--frames", frames]):
        code, _, err = run(capsys, *argv)
        message = one_error_line(err)
        assert code == 2 and "--frames must be odd and >= 1" in message and f"got {frames}" in message


def test_the_library_checks_frames_before_running_the_model(tmp_path, clips):
    path = write_model(tmp_path / "m", frames=3)
    with pytest.raises(UserError, match=r"--frames 5 does not match the model, which takes 3"):
        Derainer.from_checkpoint(path, frames=5, progress=False)
    assert Derainer.from_checkpoint(path, frames=3, progress=False).frames == 3

    calls = []

    def never(x):
        calls.append(x.shape)
        raise AssertionError("the model ran")

    with pytest.raises(UserError, match="frames 5 does not match the model, which takes 3"):
        evaluate_folder(clips, never, frames=5, model_frames=3, progress=False)
    with pytest.raises(UserError, match="frames must be odd"):
        evaluate_folder(clips, None, frames=2, progress=False)
    assert not calls


def test_an_image_network_takes_one_frame(tmp_path, clips):
    path = write_model(tmp_path / "m", frames=1, alignment="none")
    with pytest.raises(UserError, match="takes 1 input frame"):
        Derainer.from_checkpoint(path, frames=3, progress=False)


# --------------------------------------------------------------------------------------------------
# export: size and --out before any work


@pytest.fixture
def no_loading(monkeypatch):
    """Fails a test whose export got as far as loading the model."""
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(export, "load_trained", boom)


@pytest.mark.parametrize("size", [["--height", "0"], ["--width", "-32"], ["--height", "8"]])
def test_export_bad_sizes_are_refused_before_loading(tmp_path, capsys, no_loading, size):
    model = write_model(tmp_path / "m")
    code, _, err = run(capsys, "export", model, "--out", tmp_path / "m.pt2", *size)
    message = one_error_line(err)
    assert code == 2 and "at least 16x16 px" in message and "--height/--width" in message
    assert not (tmp_path / "m.pt2").exists()


def test_export_out_that_cannot_be_written_is_refused_before_loading(tmp_path, capsys, no_loading, monkeypatch):
    model = write_model(tmp_path / "m")
    code, _, err = run(capsys, "export", model, "--out", tmp_path)
    message = one_error_line(err)
    assert code == 2 and f"--out {tmp_path} is an existing folder" in message and "model.pt2" in message
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run(capsys, "export", model, "--out", blocker / "sub" / "m.pt2")
    message = one_error_line(err)
    assert code == 2 and f"{blocker} is a file, not a folder" in message
    monkeypatch.setattr(outputs.os, "access", lambda *args, **kwargs: False)  # root may write anywhere
    code, _, err = run(capsys, "export", model, "--out", tmp_path / "new" / "m.pt2")
    message = one_error_line(err)
    assert code == 2 and "no permission to write" in message and str(tmp_path) in message
    assert not (tmp_path / "new").exists()


def test_export_over_the_model_itself_is_refused(tmp_path, capsys, no_loading):
    model = write_model(tmp_path / "m")
    before = model.read_bytes()
    code, _, err = run(capsys, "export", model.parent, "--out", model)
    assert code == 2 and "is the model file being exported" in one_error_line(err)
    assert model.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_export_into_a_read_only_folder_is_refused(tmp_path, capsys, no_loading):
    model = write_model(tmp_path / "m")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "export", model, "--out", locked / "m.pt2")
        assert code == 2 and "no permission to write" in one_error_line(err)
    finally:
        locked.chmod(0o700)
