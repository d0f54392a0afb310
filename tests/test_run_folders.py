"""Hostile input (issue 16): nothing is overwritten that the command did not write.

A retraining never writes into a search's run folder (or the other way round), two commands never share a
run folder at once, outputs never land among the data's inputs or targets, and a broken resume checkpoint
is one `error:` line naming the file.
"""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas_restore.errors import UserError
from nas_restore.outputs import (LOCK, MARKER, RunLock, check_not_inside, claim_run_folder, run_folder_kind)
from tests._tiny_model import tiny_genotype, write_model
from tests.test_user_errors import one_error_line, run


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to show that a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def search_folder(path: Path) -> Path:
    """A one-shot search run folder as `nas-restore search` leaves it (no marker: an older run)."""
    path.mkdir(parents=True)
    tiny_genotype().save(path / "genotype.json")
    (path / "config.yaml").write_text("space: tmics\nstrategy: darts\nepochs: 1\n")
    (path / "alphas.csv").write_text("step,epoch,label,choice,weight\n0,0,dna/2_0,skip_connect,0.5\n")
    (path / "metrics.csv").write_text("epoch,train_loss,val_psnr\n0,0.1,20.0\n")
    return path


def retrain_folder(path: Path) -> Path:
    """A retraining's folder as `nas-restore retrain` leaves it (no marker: an older run)."""
    write_model(path)
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    (path / "metrics.csv").write_text("epoch,train_loss\n0,0.1\n")
    return path


def finished_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, pid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "nas-restore retrain g.json",
                                "since": "2024-01-01T00:00:00"}))
    return lock


# ---------------------------------------------------------------- kinds


def test_folder_kinds_from_the_marker_and_from_older_folders_files(tmp_path):
    assert run_folder_kind(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert run_folder_kind(tmp_path / "empty") is None
    assert run_folder_kind(search_folder(tmp_path / "search")) == "search"
    assert run_folder_kind(retrain_folder(tmp_path / "retrain")) == "retrain"
    (tmp_path / "multi" / "trials").mkdir(parents=True)
    assert run_folder_kind(tmp_path / "multi") == "search"
    claimed = claim_run_folder(tmp_path / "new" / "run", "retrain", command="nas-restore retrain g.json")
    marker = json.loads((claimed / MARKER).read_text())
    assert marker["kind"] == "retrain" and marker["command"] == "nas-restore retrain g.json" and marker["created"]
    assert run_folder_kind(claimed) == "retrain"
    claim_run_folder(claimed, "retrain", command="again")  # same kind: allowed, the first marker is kept
    assert json.loads((claimed / MARKER).read_text()) == marker


def test_claim_refuses_a_file_or_a_folder_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "run"):
        with pytest.raises(UserError, match="is a file|which is a file") as info:
            claim_run_folder(out, "search")
        assert str(afile) in str(info.value)
    assert afile.read_text() == "keep me"


def test_retrain_into_a_search_run_folder_is_refused_and_changes_nothing(capsys, tmp_path):
    run_dir = search_folder(tmp_path / "runs" / "search1")
    before = snapshot(run_dir)
    genotype = tiny_genotype().save(tmp_path / "g.json")  # the same genotype: the old check let it through
    code, _, err = run(capsys, "retrain", str(genotype), "--out", str(run_dir), "--epochs", "1")
    message = one_error_line(err)
    assert code == 2
    assert f"--out {run_dir} is a search run folder" in message and "alphas.csv" in message
    assert "another --out" in message
    assert snapshot(run_dir) == before


def test_retrain_into_a_folder_marked_as_a_search_is_refused(capsys, tmp_path):
    run_dir = tmp_path / "marked"
    claim_run_folder(run_dir, "search", command="nas-restore search --out marked")
    genotype = tiny_genotype().save(tmp_path / "g.json")
    code, _, err = run(capsys, "retrain", str(genotype), "--out", str(run_dir), "--epochs", "1")
    message = one_error_line(err)
    assert code == 2 and "marks a search run" in message and "nas-restore search --out marked" in message
    assert sorted(p.name for p in run_dir.iterdir()) == [MARKER]


def test_the_kind_is_claimed_only_once_the_lock_is_held(tmp_path):
    with RunLock(tmp_path / "run", command="nas-restore search", kind="search"):
        assert json.loads((tmp_path / "run" / MARKER).read_text())["kind"] == "search"
    with pytest.raises(UserError, match="is a search run folder"):
        with RunLock(tmp_path / "run", kind="retrain"):
            pass
    assert not (tmp_path / "run" / LOCK).exists()


def test_search_into_a_retraining_folder_is_refused_and_changes_nothing(capsys, tmp_path):
    out = retrain_folder(tmp_path / "model")
    before = snapshot(out)
    code, _, err = run(capsys, "search", "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress")
    message = one_error_line(err)
    assert code == 2
    assert f"--out {out} is a retraining folder" in message and "model.pt" in message and "another --out" in message
    assert snapshot(out) == before


# ---------------------------------------------------------------- the lock


def test_a_live_lock_is_refused_naming_its_pid(capsys, tmp_path):
    out = tmp_path / "model"
    lock = write_lock(out, os.getppid())  # a live process that is not this one
    held = lock.read_bytes()
    with pytest.raises(UserError) as info:
        with RunLock(out):
            pass
    message = str(info.value)
    assert f"pid {os.getppid()}" in message and "2024-01-01T00:00:00" in message
    assert "wait for it" in message and "another --out" in message
    genotype = tiny_genotype().save(tmp_path / "g.json")
    code, _, err = run(capsys, "retrain", str(genotype), "--out", str(out), "--epochs", "1")
    assert code == 2 and f"{out} is in use: pid {os.getppid()}" in one_error_line(err)
    assert snapshot(out) == {LOCK: held}  # refused before the marker or anything else was written


def test_a_stale_lock_is_taken_over_with_a_warning_and_removed_on_exit(tmp_path, caplog):
    out = tmp_path / "model"
    pid = finished_pid()
    lock = write_lock(out, pid)
    with caplog.at_level(logging.WARNING, logger="nas_restore.outputs"):
        with RunLock(out, command="mine"):
            holder = json.loads(lock.read_text())
            assert holder["pid"] == os.getpid() and holder["command"] == "mine"
    assert any("stale lock" in r.getMessage() and f"pid {pid}" in r.getMessage() for r in caplog.records)
    assert not lock.exists() and not list(out.glob(".lock*"))


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    out = tmp_path / "model"
    with RunLock(out):
        with RunLock(out):  # run_retrain holds it, and the retrain it calls takes it again
            assert (out / LOCK).exists()
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert not (out / LOCK).exists()


# ---------------------------------------------------------------- outputs next to the data


def test_check_not_inside_names_both_paths(tmp_path):
    data = tmp_path / "data" / "input"
    data.mkdir(parents=True)
    with pytest.raises(UserError) as info:
        check_not_inside(data / "out", {"the data's input folder": data}, "--save-outputs")
    assert f"--save-outputs {data / 'out'} lies inside the data's input folder {data}" in str(info.value)
    check_not_inside(tmp_path / "elsewhere", {"the data's input folder": data})
    check_not_inside(data / "sub", {"the input file's folder": data}, inside=False)  # a subfolder will do


def test_evaluate_and_derain_outputs_that_are_files_are_refused(capsys, tmp_path):
    from nas_restore.data.synthetic import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "pairs", kind="images", count=2, size=16, seed=1)
    model = write_model(tmp_path / "m")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for argv, flag in ((["evaluate", str(model), "--data", str(data), "--out", str(notes)], "--out"),
                       (["evaluate", str(model), "--data", str(data), "--save-outputs", str(notes / "x")],
                        "--save-outputs"),
                       (["derain", str(model), str(data / "input"), "--out", str(notes)], "--out")):
        code, _, err = run(capsys, *argv, "--device", "cpu", "--no-progress")
        message = one_error_line(err)
        assert code == 2 and message.startswith(f"{flag} {notes}") and "file" in message, message
    assert notes.read_text() == "keep me"


@pytest.mark.parametrize("flag", ["--save-outputs", "--out"])
@pytest.mark.parametrize("where", ["input", "target", "target/sub"])
def test_evaluate_outputs_into_the_data_are_refused_and_the_files_unchanged(capsys, tmp_path, flag, where):
    from nas_restore.data.synthetic import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "pairs", kind="images", count=2, size=16, seed=1)
    model = write_model(tmp_path / "m")
    before = snapshot(data)
    code, _, err = run(capsys, "evaluate", str(model), "--data", str(data), flag, str(data / where), "--device", "cpu",
                       "--no-progress")
    message = one_error_line(err)
    kind = where.split("/")[0]
    assert code == 2 and f"{flag} {data / where}" in message and f"the data's {kind} folder {data / kind}" in message
    assert snapshot(data) == before


def test_derain_into_the_input_folder_or_the_input_files_folder_is_refused(capsys, tmp_path):
    from nas_restore.data.synthetic import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "pairs", kind="images", count=2, size=16, seed=1)
    model = write_model(tmp_path / "m")
    inputs = data / "input"
    image = sorted(inputs.glob("*.png"))[0]
    before = snapshot(data)
    for source, out, expected in ((inputs, inputs, f"is the input folder {inputs}"),
                                  (inputs, inputs / "derained", f"lies inside the input folder {inputs}"),
                                  (image, inputs, f"is the input file's folder {inputs}")):
        code, _, err = run(capsys, "derain", str(model), str(source), "--out", str(out), "--device", "cpu",
                           "--no-progress")
        message = one_error_line(err)
        assert code == 2 and f"--out {out} {expected}" in message, message
    assert snapshot(data) == before


# ---------------------------------------------------------------- the resume checkpoint


def retrain_argv(tmp_path: Path, out: Path) -> list[str]:
    config = tmp_path / "retrain.yaml"
    config.write_text("train: {batch_size: 2}\ndata: {train_items: 4, val_items: 2, patch_size: 16}\n")
    genotype = tiny_genotype(frames=1, alignment="none").save(tmp_path / "g.json")
    return ["retrain", str(genotype), "--out", str(out), "--config", str(config), "--epochs", "1", "--device", "cpu",
            "--no-progress"]


def test_a_truncated_last_ckpt_is_one_error_line_naming_it(capsys, tmp_path):
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    whole = tmp_path / "whole.ckpt"
    torch.save({"epoch": 0, "global_step": 2, "state_dict": {"model.w": torch.zeros(64, 64)}}, whole)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a run killed while saving
    code, _, err = run(capsys, *retrain_argv(tmp_path, out))
    message = one_error_line(err)
    assert code == 2 and f"{last} cannot be read as a checkpoint" in message
    assert f"delete {last}" in message and "another --out" in message


def test_a_foreign_last_ckpt_is_refused_and_its_code_never_runs(capsys, tmp_path):
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.ckpt"
    ran = tmp_path / "code_ran"
    torch.save({"epoch": 0, "payload": _Payload(str(ran))}, last)
    code, _, err = run(capsys, *retrain_argv(tmp_path, out))
    message = one_error_line(err)
    assert code == 2 and str(last) in message and not ran.exists()
    torch.save({key: {} for key in ("epoch", "global_step", "optimizer_states", "lr_schedulers", "loops")}
               | {"state_dict": {"model.other.weight": torch.zeros(1)}}, last)
    code, _, err = run(capsys, *retrain_argv(tmp_path, out))
    message = one_error_line(err)
    assert code == 2 and f"{last} holds the weights of another network" in message


class _Payload:
    """Unpickling it would create a file: the proof that a checkpoint's pickled code was run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))
