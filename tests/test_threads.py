"""Jobs that share the machine share its cores: threads follow the running jobs and DataLoader workers."""

import subprocess
import sys

import pytest
import torch

from nas_restore import threads


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    previous = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(previous)


def test_a_second_job_halves_the_threads_and_a_finished_one_gives_them_back(folder):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with threads.JobSlot(folder):
            assert threads.running_jobs(folder) == 1 and torch.get_num_threads() == 4
            (folder / f"{sleeper.pid}.pid").write_text("")  # another job starts
            assert threads.share_threads(folder=folder) == 2 and torch.get_num_threads() == 2
            sleeper.kill()
            sleeper.wait()
            assert threads.share_threads(folder=folder) == 4  # its stale pid file is cleared
            assert not (folder / f"{sleeper.pid}.pid").exists()
        assert threads.running_jobs(folder) == 0  # the slot is released on exit
        with threads.JobSlot(folder):
            with threads.JobSlot(folder):  # re-entrant: the CLI's slot around a training loop's own
                pass
            assert threads.running_jobs(folder) == 1  # the inner exit keeps the outer job counted
        assert threads.running_jobs(folder) == 0
    finally:
        sleeper.kill()


def test_workers_and_the_environment(folder, monkeypatch):
    assert threads.threads_per_job(jobs=1, workers=2) == 2
    assert threads.threads_per_job(jobs=8) == 1  # never zero
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.threads_per_job(jobs=2) == 3
