"""A multi-trial search resumes from its ledger: killed with SIGKILL (or given a larger budget) and run again,
it trains only what is missing, and with the same seed it ends as an uninterrupted run does (the same trial
list, the same genotype); a changed setting is refused by name, --fresh starts over, a damaged ledger is named."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nas_restore import multitrial, run_records
from nas_restore.config import ConfigError
from nas_restore.run_records import RunRecordError
from nas_restore.nni_layer.space import random_architecture
from nas_restore.search import run_search
from nas_restore.training import RestorationModule
from search_spaces import find_space
from tests.test_multitrial import TINY_SPACE, tiny_config, tiny_job

EVOLUTION = {"population_size": 2, "sample_size": 2, "mutation_prob": 0.5}  # mutations from trial 3 on
COMPARED = ["trial", "status", "genotype_id", "val_psnr", "val_ssim", "params", "flops", "arch"]


def _table(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / run_records.TRIALS)[COMPARED]


def _ledger(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / run_records.LEDGER).read_text().splitlines()]


def _trial_lines(run_dir: Path) -> list[dict]:
    return [r for r in _ledger(run_dir) if r["kind"] == "trial"]


def _row_archs(run_dir: Path) -> list[str]:
    """The architecture of every row a trial wrote: one per training, so a repeat means a trial trained twice."""
    return [json.dumps(json.loads(p.read_text())["arch"], sort_keys=True) for p in (run_dir / "trials").glob("*.json")]


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    real = multitrial.train_and_score

    def counted(network, job, **kwargs):
        calls.append(1)
        return real(network, job, **kwargs)

    monkeypatch.setattr(multitrial, "train_and_score", counted)
    return calls


@pytest.mark.parametrize("strategy, options", [("evolution", EVOLUTION), ("tpe", {"n_startup_jobs": 2})])
def test_a_resumed_search_answers_its_past_from_the_ledger_and_ends_as_an_uninterrupted_one(
        tmp_path, count_training, strategy, options):
    whole = run_search(tiny_config(strategy, max_trials=5, strategy_options=options), tmp_path / "whole")
    count_training.clear()
    run_search(tiny_config(strategy, max_trials=3, strategy_options=options), tmp_path / "run")
    assert len(count_training) == 3
    count_training.clear()
    resumed = run_search(tiny_config(strategy, max_trials=5, strategy_options=options), tmp_path / "run")
    assert len(count_training) == 2  # only the missing trials trained
    # the strategy's population (evolution) or history (tpe) was rebuilt from the ledger: the same next picks
    pd.testing.assert_frame_equal(_table(tmp_path / "run"), _table(tmp_path / "whole"))
    assert resumed.genotype.genotype_id() == whole.genotype.genotype_id()
    meta = resumed.genotype.metadata
    assert meta["nni_arch"] == whole.genotype.metadata["nni_arch"] and meta["trials_run"] == 5
    assert meta["resumed_trials"] == 3 and meta["sessions"] == 2
    lines = _trial_lines(tmp_path / "run")
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4] and [line["session"] for line in lines] == [1, 1, 1, 2, 2]
    anytime = pd.read_csv(tmp_path / "run" / run_records.ANYTIME)
    assert list(anytime["cost_epochs"]) == [1, 2, 3, 4, 5] and anytime["cost_seconds"].is_monotonic_increasing
    # the second session's seconds count on from the first's: the budget is the whole search's
    second = [r for r in _ledger(tmp_path / "run") if r["kind"] == "session"][1]
    assert second["offset_s"] == max(line["at_s"] for line in lines[:3])
    assert all(line["row"]["start_s"] >= second["offset_s"] for line in lines[3:])


class _Model:
    """What LedgerReplay needs of NNI's frozen model: a sample, a status, metrics."""

    def __init__(self, name):
        from nni.nas.space import ModelStatus

        self.sample, self.status = {"k": name}, ModelStatus.Frozen
        self.metrics = type("Metrics", (), {"final": None})()

    @property
    def metric(self):
        return self.metrics.final


def _fake_engine():
    """An engine that only notes what it was given to train (no trial ever ends on it)."""
    from nni.nas.execution import ExecutionEngine

    class Engine(ExecutionEngine):
        def __init__(self):
            super().__init__()
            self.submitted = []

        def submit_models(self, *models):
            self.submitted.extend(m.sample["k"] for m in models)

        def idle_worker_available(self):
            return True

        def budget_available(self):
            return True

        def list_models(self, status=None):
            return []

    return Engine()


def _replay(finished, **kwargs):
    from nas_restore.nni_layer.runner import LedgerReplay
    from nni.nas.execution.event import ModelEventType

    seen, replayed = [], []
    replay = LedgerReplay(finished, max_trials=6, key_of=lambda sample: sample["k"], on_end=lambda *a: None,
                          on_replay=lambda trial, index, after, sample: replayed.append((sample["k"], index, after)),
                          **kwargs)
    engine = _fake_engine()
    replay.set_engine(engine)
    replay.register_model_event_callback(ModelEventType.TrainingEnd, lambda event: seen.append(event.model.sample["k"]))
    return replay, engine, seen, replayed


def test_the_replay_hands_the_strategy_each_recorded_end_at_its_recorded_moment():
    """Two at once: a and b submitted together, b ended first, c was picked having seen b's end only, d having
    seen a's too. Replayed, the strategy sees exactly that before each pick; then the search goes live."""
    from nas_restore.nni_layer.runner import FinishedTrial

    finished = [FinishedTrial("b", "trained", 20.0, index=1, after=0, position=0, token=0),
                FinishedTrial("a", "trained", 19.0, index=0, after=0, position=1, token=1),
                FinishedTrial("c", "failed", None, index=2, after=1, position=2, token=2),
                FinishedTrial("d", "trained", 21.0, index=3, after=2, position=3, token=3)]
    replay, engine, seen, replayed = _replay(finished)
    picks = {}
    for name in ("a", "b", "c", "d", "e"):
        assert replay.budget_available() and replay.idle_worker_available()
        picks[name] = list(seen)
        model = _Model(name)
        replay.submit_models(model)
    assert picks == {"a": [], "b": [], "c": ["b"], "d": ["b", "a"], "e": ["b", "a", "c", "d"]}
    assert engine.submitted == ["e"]  # only the new one trains
    assert [index for _, index, _ in replayed] == [0, 1, 2, 3]


def test_a_strategy_that_picks_otherwise_goes_live_but_finished_architectures_are_still_answered():
    from nas_restore.nni_layer.runner import FinishedTrial

    finished = [FinishedTrial("a", "trained", 19.0, index=0, after=0, position=0, token=0),
                FinishedTrial("b", "trained", 20.0, index=1, after=1, position=1, token=1),
                FinishedTrial("x", "trained", 18.0, position=2, token=("row.json", {}))]  # known by its row only
    replay, engine, seen, replayed = _replay(finished)
    for name in ("a", "z", "b", "x"):
        assert replay.idle_worker_available()
        replay.submit_models(_Model(name))
    assert engine.submitted == ["z"] and [r[0] for r in replayed] == ["a", "b", "x"] and seen == ["a", "b", "x"]
    assert [(index, after) for _, index, after in replayed][1:] == [(2, 1), (3, 2)]  # recorded where they now stand


def test_a_trial_whose_end_the_search_did_not_record_is_taken_from_its_row(tmp_path, count_training):
    """A kill between a trial writing its row and the search recording its end (or in the middle of that line)."""
    config = tiny_config("random", max_trials=3)
    run_search(config, tmp_path)
    before = _table(tmp_path)
    ledger = tmp_path / run_records.LEDGER
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]) + lines[-1][:40])  # the last line cut short, as by a kill mid-write
    count_training.clear()
    result = run_search(config, tmp_path)
    assert count_training == []  # the third trial's own row answered it: nothing trained again
    pd.testing.assert_frame_equal(_table(tmp_path), before)
    assert result.genotype.metadata["resumed_trials"] == 3
    assert all(line.endswith("\n") for line in ledger.read_text().splitlines(keepends=True))
    assert len(_trial_lines(tmp_path)) == 3  # the recovered trial is on record now


def test_changed_settings_are_refused_by_name_and_fresh_starts_over(tmp_path, count_training):
    run_search(tiny_config("random", max_trials=2), tmp_path)
    with pytest.raises(ConfigError, match=r"\(lr, trial_epochs: not as in .*ledger.jsonl\).*--fresh"):
        run_search(tiny_config("random", max_trials=2, lr=5e-4, trial_epochs=2), tmp_path)
    with pytest.raises(ConfigError, match=r"\(strategy_options: "):  # an explicit default is no change ...
        run_search(tiny_config("random", max_trials=2, strategy_options={"dedup": False}), tmp_path)
    count_training.clear()
    run_search(tiny_config("random", max_trials=2, strategy_options={"dedup": True}, parallel=1), tmp_path)
    assert count_training == []  # ... and max_trials, parallel, budget may change
    result = run_search(tiny_config("random", max_trials=2, lr=5e-4), tmp_path, fresh=True)
    assert len(count_training) == 2 and result.genotype.metadata["sessions"] == 1
    assert len(_trial_lines(tmp_path)) == 2 and len(list((tmp_path / "trials").glob("*.json"))) == 2


def test_a_damaged_ledger_is_an_error_naming_the_file_and_the_fix(tmp_path):
    run_search(tiny_config("random", max_trials=2), tmp_path)
    ledger = tmp_path / run_records.LEDGER
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text(lines[0] + "not json\n" + "".join(lines[1:]))
    with pytest.raises(RunRecordError, match=r"ledger.jsonl is damaged \(line 2 is not JSON.*--fresh"):
        run_search(tiny_config("random", max_trials=2), tmp_path)
    ledger.write_text(lines[0] + json.dumps({"kind": "trial", "index": "x"}) + "\n")
    with pytest.raises(RunRecordError, match="line 2 is neither"):
        run_search(tiny_config("random", max_trials=2), tmp_path)
    ledger.write_text(json.dumps({"format": "something else"}) + "\n")
    with pytest.raises(RunRecordError, match="header"):
        run_search(tiny_config("random", max_trials=2), tmp_path)


# --------------------------------------------------------------------------------------------------
# a trial of several epochs keeps its last epoch: a killed trial continues from it


class _CountingModule(RestorationModule):
    """Counts the optimiser steps it takes; with ``stop_at`` it fails as that epoch starts (a kill between
    epochs: the epochs before it are checkpointed, nothing of it is)."""

    steps: list[int] = []
    stop_at: int | None = None

    def training_step(self, batch, batch_idx):
        type(self).steps.append(self.current_epoch)
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self):
        if self.current_epoch == type(self).stop_at:
            raise RuntimeError("killed between epochs")


def _trial_network(job):
    spec = find_space("tmics")
    arch = random_architecture(spec.make_space(job.space_config), seed=0)
    genotype = spec.to_genotype(arch, job.space_config, {})
    torch.manual_seed(job.config.seed)  # as run_trial builds it
    return spec.make_network(genotype)


def test_a_trial_stopped_between_epochs_continues_from_its_checkpoint_and_scores_as_an_uninterrupted_one(
        tmp_path, monkeypatch):
    monkeypatch.setattr(multitrial, "RestorationModule", _CountingModule)
    config = tiny_config("random", trial_epochs=3)
    whole_job = tiny_job(tmp_path / "whole", config=config)
    _CountingModule.steps, _CountingModule.stop_at = [], None
    whole = multitrial.train_and_score(_trial_network(whole_job), whole_job, checkpoint_dir=tmp_path / "w-ckpt")
    whole_steps = list(_CountingModule.steps)
    assert sorted(set(whole_steps)) == [0, 1, 2]

    job = tiny_job(tmp_path / "killed", config=config)
    ckpt_dir = tmp_path / "k-ckpt"
    _CountingModule.steps, _CountingModule.stop_at = [], 2
    with pytest.raises(RuntimeError, match="killed between epochs"):
        multitrial.train_and_score(_trial_network(job), job, checkpoint_dir=ckpt_dir)
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 1  # epochs 0 and 1 were kept

    _CountingModule.steps, _CountingModule.stop_at = [], None
    resumed = multitrial.train_and_score(_trial_network(job), job, checkpoint_dir=ckpt_dir)
    assert set(_CountingModule.steps) == {2}  # only the missing epoch trained
    assert len(_CountingModule.steps) == whole_steps.count(2)
    assert (whole["epochs_resumed"], resumed["epochs_resumed"]) == (0, 2)
    for score in ("val_psnr", "val_ssim"):  # same weights, optimiser, schedule and data order: the same scores
        assert resumed[score] == whole[score]


def test_a_damaged_trial_checkpoint_is_dropped_and_the_trial_starts_over(tmp_path, monkeypatch):
    monkeypatch.setattr(multitrial, "RestorationModule", _CountingModule)
    job = tiny_job(tmp_path, config=tiny_config("random", trial_epochs=2))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"torn by a kill")
    _CountingModule.steps, _CountingModule.stop_at = [], None
    scores = multitrial.train_and_score(_trial_network(job), job, checkpoint_dir=tmp_path / "ckpt")
    assert sorted(set(_CountingModule.steps)) == [0, 1] and scores["val_psnr"] > 0


def test_a_search_removes_each_trial_checkpoint_once_the_trial_row_is_written(tmp_path, monkeypatch):
    real, kept = multitrial.train_and_score, []

    def watched(network, job, checkpoint_dir=None):
        scores = real(network, job, checkpoint_dir=checkpoint_dir)
        kept.append((checkpoint_dir / "last.ckpt").is_file())
        return scores

    monkeypatch.setattr(multitrial, "train_and_score", watched)
    run_search(tiny_config("random", max_trials=2, trial_epochs=2), tmp_path)
    assert kept == [True, True]  # each trial kept its last epoch while it ran ...
    assert not any((tmp_path / run_records.TRIAL_CHECKPOINTS_DIR).glob("*/last.ckpt"))  # ... and none is left


# --------------------------------------------------------------------------------------------------
# kill -9 of `nas-restore search` (sequential engine), in a process of its own

# the child: `nas-restore search` as a user runs it, SIGKILLing its own process at a chosen point of a chosen
# trial (counted in this process): while it trains, after it wrote its row but before the search recorded its
# end, or halfway through writing that ledger line
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from nas_restore import multitrial

    kill_at = int(os.environ.get("KILL_AT_TRIAL", "-1"))
    phase = os.environ.get("KILL_PHASE", "training")
    seen = [0]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    if phase == "training":
        real_train = multitrial.train_and_score

        def train(network, job, **kwargs):
            if seen[0] == kill_at:
                kill()
            seen[0] += 1
            return real_train(network, job, **kwargs)

        multitrial.train_and_score = train
    else:
        real_append = multitrial.Ledger.append

        def append(self, record):
            if record.get("kind") == "trial":
                if seen[0] == kill_at:
                    if phase == "torn":
                        with self.path.open("ab") as handle:
                            handle.write(json.dumps(record).encode()[:60])
                    kill()
                seen[0] += 1
            return real_append(self, record)

        multitrial.Ledger.append = append
    from nas_restore.cli import main
    sys.exit(main(sys.argv[1:]))
""")
MAX_TRIALS = 5


def _search(folder: Path, out: Path, kill_at: int | None = None, phase: str = "training"
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NAS_RESTORE_THREADS": "1",
           "PYTHONHASHSEED": "0", "HOME": str(folder / "home")}  # NNI's manifest in the test's own folder
    if kill_at is not None:
        env.update(KILL_AT_TRIAL=str(kill_at), KILL_PHASE=phase)
    argv = ["search", "--config", str(folder / "tiny.yaml"), "--preset", "demo", "--strategy", "evolution",
            "--max-trials", str(MAX_TRIALS), "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)]
    for key, value in EVOLUTION.items():
        argv += ["--strategy-option", f"{key}={value}"]
    return subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("killed")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(
        {"space_settings": TINY_SPACE, "data": {"train_items": 8, "val_items": 4, "patch_size": 16}}))
    done = _search(folder, folder / "whole")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def _killed_and_resumed(folder: Path, name: str, kill_at: int, phase: str) -> Path:
    out = folder / name
    killed = _search(folder, out, kill_at, phase)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / run_records.GENOTYPE).exists()
    manifest = folder / "home" / "nni-experiments" / ".experiment"
    assert json.loads(manifest.read_text()) != {}  # the killed run's entry in NNI's manifest ...
    resumed = _search(folder, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(manifest.read_text()) == {} and not (out / run_records.PROCESSES).exists()  # ... is gone
    return out


def _same_as_uninterrupted(folder: Path, out: Path) -> None:
    pd.testing.assert_frame_equal(_table(out), _table(folder / "whole"))
    ours, theirs = (json.loads((p / run_records.GENOTYPE).read_text()) for p in (out, folder / "whole"))
    assert ours["metadata"]["nni_arch"] == theirs["metadata"]["nni_arch"]
    assert ours["metadata"]["best_trial"] == theirs["metadata"]["best_trial"]
    archs = _row_archs(out)
    assert len(archs) == MAX_TRIALS == len(set(archs))  # every trial trained once: none lost twice, none redone


def test_a_sequential_search_killed_with_sigkill_and_run_again_equals_an_uninterrupted_one(uninterrupted):
    out = _killed_and_resumed(uninterrupted, "killed", kill_at=3, phase="training")  # in the 4th trial
    _same_as_uninterrupted(uninterrupted, out)
    sessions = [line["session"] for line in _trial_lines(out)]
    assert sessions == [1, 1, 1, 2, 2]  # the three finished trials were not trained again


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, phase", [(0, "training"), (1, "recorded"), (2, "torn"), (4, "training"),
                                            (4, "recorded")])
def test_kill_nine_at_five_points_resumes_to_the_same_search(uninterrupted, kill_at, phase):
    """kill -9 before a trial trains, after its row but before its end is recorded, or mid-way through the line."""
    out = _killed_and_resumed(uninterrupted, f"killed-{kill_at}-{phase}", kill_at, phase)
    _same_as_uninterrupted(uninterrupted, out)
    kept = sum(1 for line in _trial_lines(out) if line["session"] == 1)
    assert kept == kill_at  # every trial recorded before the kill was kept (and, above, none trained twice)


def test_an_end_reported_without_its_metric_takes_the_row_the_trial_writes_just_after(tmp_path, monkeypatch):
    """NNI's training-service engine can report a trial's end before the trial wrote its row, without a metric."""
    monkeypatch.setattr(multitrial, "ROW_GRACE_S", 10.0)
    ledger = multitrial.Ledger.create(tmp_path / run_records.LEDGER, {"seed": 0})
    trials = tmp_path / run_records.TRIALS_DIR
    trials.mkdir()
    started = time.time()
    session = multitrial._Session(ledger, trials, {}, started, 0.0, 1)
    arch = {"dna/op_2_0": "skip_connect"}

    def write_row_late():
        time.sleep(0.5)
        row = {"status": "ok", "arch": arch, "val_psnr": 27.5, "val_ssim": 0.9, "nni_trial": "abcde",
               "started": started, "ended": time.time(), "seconds": 0.5}
        (trials / "late.json").write_text(json.dumps(row))

    writer = threading.Thread(target=write_row_late)
    writer.start()
    session.on_end(0, 0, arch, "trained", None)
    writer.join()
    line = _trial_lines(tmp_path)[0]
    assert line["metric"] == 27.5 and line["row_file"] == "late.json" and line["row"]["val_psnr"] == 27.5
