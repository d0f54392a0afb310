"""Two processes on one study folder: a unit in progress holds ``claim.json``, so a second worker takes the next
free unit, a killed worker's claim is taken over, and the study stops before a stage that needs held units."""

import copy
import json
import os
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest

import nas_restore.evidence as evidence
import nas_restore.rank as rank_mod
from nas_restore.evidence import StudyConfig, run_study
from nas_restore.study import CLAIM, HELD, claim_unit, read_json, release_unit, run_unit
from nas_restore.threads import process_started

from tests.test_evidence import folder, study, tiny_settings  # noqa: F401  (module fixtures reused)


@pytest.fixture
def other_process():
    """A live process that is not this one, and its claim record."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield sleeper, {"pid": sleeper.pid, "host": socket.gethostname(), "started": process_started(sleeper.pid)}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_claim_is_ours_until_released_and_a_live_holder_keeps_its_unit(tmp_path, other_process):
    assert claim_unit(tmp_path) is None
    assert read_json(tmp_path / CLAIM)["pid"] == os.getpid()
    release_unit(tmp_path)
    assert not (tmp_path / CLAIM).exists()

    _, theirs = other_process
    (tmp_path / CLAIM).write_text(json.dumps(theirs))
    assert claim_unit(tmp_path) == theirs
    release_unit(tmp_path)  # not ours: left alone
    assert read_json(tmp_path / CLAIM) == theirs


def test_a_held_unit_is_skipped_without_running_and_reported_as_running(tmp_path, other_process):
    _, theirs = other_process
    (tmp_path / CLAIM).write_text(json.dumps(theirs))
    said = []
    row, worked = run_unit(tmp_path, "[1/2] u", "[1/2] u: work", lambda: pytest.fail("ran a held unit"),
                           {"entry": "u", "status": "failed"}, str, said.append)
    assert not worked and row["status"] == HELD and str(theirs["pid"]) in row["error"]
    assert said == [f"[1/2] u: in progress in process {theirs['pid']} on {theirs['host']}, skipped"]
    assert not (tmp_path / "done.json").exists() and not (tmp_path / "failed.json").exists()


def test_the_claim_of_an_ended_process_is_taken_over_and_dropped_when_the_unit_ends(tmp_path, other_process):
    sleeper, theirs = other_process
    sleeper.kill()
    sleeper.wait()
    (tmp_path / CLAIM).write_text(json.dumps(theirs))
    row, worked = run_unit(tmp_path, "[1/1] u", "[1/1] u: work", lambda: {"status": "done"}, {}, str, lambda m: None)
    assert worked and row == {"status": "done"} and not (tmp_path / CLAIM).exists()


def test_a_reused_pid_or_a_torn_claim_does_not_hold_a_unit(tmp_path):
    mine = {"pid": os.getppid(), "host": socket.gethostname(), "started": 1.0}  # alive, but started at another time
    (tmp_path / CLAIM).write_text(json.dumps(mine))
    assert claim_unit(tmp_path) is None and read_json(tmp_path / CLAIM)["pid"] == os.getpid()
    (tmp_path / CLAIM).write_text('{"pid": 12')  # its writer killed mid-write
    assert claim_unit(tmp_path) is None


def test_a_claim_from_another_host_is_honoured(tmp_path):
    theirs = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "started": 1.0}
    (tmp_path / CLAIM).write_text(json.dumps(theirs))
    assert claim_unit(tmp_path) == theirs


def test_a_study_stops_before_profiling_while_another_process_retrains_and_the_last_one_finishes(
        study, tmp_path, monkeypatch, other_process):  # noqa: F811
    out, settings, first = study
    copy_out = tmp_path / "report"
    shutil.copytree(out, copy_out)
    (copy_out / "summary.md").unlink()
    models = first.results[first.results["kind"] != "input"]
    unit = str(models["unit"].iloc[-1])
    (copy_out / "rank" / unit / "done.json").unlink()
    shutil.rmtree(copy_out / "profile")
    sleeper, theirs = other_process
    (copy_out / "rank" / unit / CLAIM).write_text(json.dumps(theirs))

    monkeypatch.setattr(rank_mod, "run_retrain", lambda *a, **k: pytest.fail("retrained a held or finished unit"))
    monkeypatch.setattr(evidence, "profile_network", lambda *a, **k: pytest.fail("profiled while another trains"))
    said = []
    waiting = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), copy_out, say=said.append)
    assert waiting.waiting == [unit] and waiting.summary_path is None and waiting.ran == []
    assert not (copy_out / "summary.md").exists() and not (copy_out / "profile").exists()
    assert any("in progress in other processes" in line for line in said)

    # the other worker was killed: its unit is taken over, then the profiles and the summary follow
    sleeper.kill()
    sleeper.wait()
    monkeypatch.undo()
    done = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), copy_out, say=lambda m: None)
    assert not done.waiting and done.ran[0] == f"rank/{unit}" and (copy_out / "summary.md").is_file()
    table = pd.read_csv(copy_out / "results.csv")
    assert (table["status"] == "done").all() and not (copy_out / "rank" / unit / CLAIM).exists()


def test_a_worker_goes_on_when_the_units_it_skipped_finished_meanwhile(study, tmp_path, monkeypatch,
                                                                      other_process):  # noqa: F811
    out, settings, first = study
    copy_out = tmp_path / "report"
    shutil.copytree(out, copy_out)
    (copy_out / "summary.md").unlink()
    unit = str(first.results[first.results["kind"] != "input"]["unit"].iloc[0])
    record = copy_out / "rank" / unit / "done.json"
    finished = record.read_text()
    record.unlink()
    sleeper, theirs = other_process
    (copy_out / "rank" / unit / CLAIM).write_text(json.dumps(theirs))

    def say(line: str) -> None:  # the other worker ends its unit while this one works through the rest
        if "in progress in process" in line:
            record.write_text(finished)
            (copy_out / "rank" / unit / CLAIM).unlink()

    monkeypatch.setattr(rank_mod, "run_retrain", lambda *a, **k: pytest.fail("retrained a finished unit"))
    result = run_study(StudyConfig.from_dict(copy.deepcopy(settings)), copy_out, say=say)
    assert not result.waiting and (copy_out / "summary.md").is_file()
    table = pd.read_csv(copy_out / "results.csv")
    assert (table["status"] == "done").all()
