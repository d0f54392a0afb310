"""What a killed `--parallel` search leaves running (NNI's node manager with its port on 127.0.0.1, its trial
processes, its entry in NNI's manifest) is found through the run's pid file and stopped by the next start of
that run, and only what belongs to the run; a search that ends normally leaves none of it either."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from nas_restore import run_records
from nas_restore.nni_layer.runner import PROCESS_FORMAT, forget_experiment, stop_recorded
from nas_restore.threads import process_alive, process_started
from tests.test_multitrial import TINY_SPACE


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _manifest(home: Path) -> dict:
    path = home / "nni-experiments" / ".experiment"
    return json.loads(path.read_text()) if path.exists() else {}


# a stand-in for NNI's node manager: named by its experiment on its command line, listening on a port, with a
# child process (its "trial")
FAKE_MANAGER = textwrap.dedent("""
    import socket, subprocess, sys, time
    server = socket.socket()
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _sleeper(env_experiment: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={**os.environ, "NNI_EXP_ID": env_experiment})


def test_stop_recorded_stops_the_runs_processes_only_frees_the_port_and_drops_the_manifest_entry(tmp_path):
    from nni.tools.nnictl.config_utils import Experiments

    port = _free_port()
    manager = subprocess.Popen([sys.executable, "-c", FAKE_MANAGER, str(port), "--experiment-id", "exp1"],
                               stdout=subprocess.PIPE, text=True)
    child = int(manager.stdout.readline())
    trial = _sleeper("exp1")              # a trial of the run that is no child of the manager (any more)
    stranger = _sleeper("another")        # recorded by mistake: not the run's (its environment says so)
    reused = _sleeper("exp1")             # its pid recorded with another start time: a different process
    everyone = [manager, trial, stranger, reused]
    try:
        deadline = time.time() + 30
        while not _listening(port) and time.time() < deadline:
            time.sleep(0.1)
        assert _listening(port)
        manifest_dir = tmp_path / "home" / "nni-experiments"
        Experiments(home_dir=str(manifest_dir)).add_experiment("exp1", port, 0, "local", None)
        Experiments(home_dir=str(manifest_dir)).add_experiment("exp0", 1, 0, "local", None)  # another run's
        record = {"format": PROCESS_FORMAT, "version": 1, "experiment": "exp1", "manifest": str(manifest_dir),
                  "manager": {"pid": manager.pid, "start": process_started(manager.pid)}, "ports": [port],
                  "trials": [{"pid": p.pid, "start": process_started(p.pid)} for p in (trial, stranger)]
                  + [{"pid": reused.pid, "start": 1.0}]}
        path = tmp_path / run_records.PROCESSES
        path.write_text(json.dumps(record))
        done = stop_recorded(path)
        assert set(done["stopped"]) == {manager.pid, child, trial.pid}
        for process in (manager, trial):
            assert process.wait(timeout=30) is not None
        assert not process_alive(child) and not _listening(port) and done["ports_busy"] == []
        assert stranger.poll() is None and reused.poll() is None  # not the run's: left alone
        assert done["manifest_removed"] and set(_manifest(tmp_path / "home")) == {"exp0"}
        assert not path.exists()
        assert stop_recorded(path) == {"stopped": [], "ports_busy": [], "manifest_removed": False}  # nothing left
        assert not forget_experiment("exp9", str(manifest_dir))
    finally:
        for process in everyone:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_foreign_or_damaged_pid_file_stops_nothing(tmp_path):
    sleeper = _sleeper("exp1")
    try:
        path = tmp_path / run_records.PROCESSES
        for text in ("{not json", json.dumps({"format": "other", "trials": [{"pid": sleeper.pid}]})):
            path.write_text(text)
            assert stop_recorded(path)["stopped"] == [] and not path.exists()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------------------------------
# kill -9 of a real `nas-restore search --parallel 2`, then the same command again

MAX_TRIALS = 3  # two at once, then a third once one of them has ended


def _command(folder: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NAS_RESTORE_THREADS": "1",
           "HOME": str(folder / "home")}  # NNI's manifest in the test's own folder
    argv = [sys.executable, "-m", "nas_restore.cli", "search", "--config", str(folder / "tiny.yaml"), "--preset",
            "demo", "--strategy", "random", "--max-trials", str(MAX_TRIALS), "--parallel", "2", "--batch-size", "4",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    return argv, env


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the search ended (rc {process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _running_trials(path: Path) -> dict | None:
    """The pid file once a trial has ended and a trial process started after that end still runs (it imports
    for several seconds before it trains): the moment to kill the search with work done and work going on."""
    try:
        record = json.loads(path.read_text())
        ends = [json.loads(line) for line in (path.parent / run_records.LEDGER).read_text().splitlines()]
    except (OSError, json.JSONDecodeError):
        return None
    ended = [line["row"]["ended"] for line in ends if line["kind"] == "trial" and line["row"]]
    later = [t for t in record.get("trials", []) if ended and t["start"] > min(ended)
             and process_alive(t["pid"], t["start"])]
    return record if record.get("manager") and later else None


def _processes_of(experiments: set[str], folder: Path) -> list[psutil.Process]:
    """Every process on the machine that belongs to these experiments or runs in the test's folder."""
    found = []
    for process in psutil.process_iter():
        try:
            line = " ".join(process.cmdline())
            env = process.environ().get("NNI_EXP_ID")
        except psutil.Error:
            continue
        if env in experiments or any(f"--experiment-id {e}" in line for e in experiments) or str(folder) in line:
            found.append(process)
    return found


def test_a_parallel_search_killed_with_sigkill_is_cleaned_up_and_resumed_by_the_next_start(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"space_settings": TINY_SPACE, "data": {"train_items": 8, "val_items": 4, "patch_size": 16}}))
    out = tmp_path / "run"
    argv, env = _command(tmp_path, out)
    search = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    left: list[psutil.Process] = []
    try:
        record = _wait_for(lambda: _running_trials(out / run_records.PROCESSES), 300,
                           "a trial ended and another was running", search)
        search.send_signal(signal.SIGKILL)
        search.wait(timeout=30)
        experiment, port, manager = record["experiment"], record["ports"][0], record["manager"]
        # what the kill left: NNI's manager with its port, its trial processes, the manifest entry
        assert process_alive(manager["pid"], manager["start"]) and _listening(port)
        left = _processes_of({experiment}, out)
        assert len(left) >= 2, [p.cmdline() for p in left]  # the manager and at least one trial
        assert experiment in _manifest(tmp_path / "home")
        finished_before = [json.dumps(line["arch"], sort_keys=True) for line in map(json.loads,
                           (out / run_records.LEDGER).read_text().splitlines()) if line["kind"] == "trial"]

        again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        log = (out / run_records.LOG).read_text()
        assert f"(experiment {experiment})" in log and "left running by an earlier, interrupted run" in log
        assert not process_alive(manager["pid"], manager["start"]) and not _listening(port)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left)
        lines = [json.loads(line) for line in (out / run_records.LEDGER).read_text().splitlines()]
        experiments = {experiment} | {p.name for p in (out / "nni").iterdir() if p.is_dir() and p.name != "_latest"}
        assert _processes_of(experiments, out) == []      # none of either run's processes is left
        assert _manifest(tmp_path / "home") == {}         # neither run's manifest entry
        assert not (out / run_records.PROCESSES).exists()
        # the trials that had finished were not trained again, and the search ran to its end
        rows = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
        archs = [json.dumps(r["arch"], sort_keys=True) for r in rows]
        assert len(archs) == len(set(archs)) and set(finished_before) <= set(archs)
        assert sum(line["kind"] == "trial" for line in lines) == MAX_TRIALS
        meta = json.loads((out / run_records.GENOTYPE).read_text())["metadata"]
        assert meta["engine"] == "training_service" and meta["trials_run"] == MAX_TRIALS
        assert meta["resumed_trials"] >= len(finished_before) and meta["sessions"] == 2
    finally:
        if search.poll() is None:
            search.kill()
        for process in left:
            if process.is_running():
                process.kill()
