"""A study unit interrupted mid-training continues where it stopped, and its record counts the whole run.

`compare` and `rank` continue an interrupted retraining from its `last.ckpt` (a crash inside the stage, and a
real `kill -9` of `nas-restore rank`); `continual` continues an interrupted stage from its `stage.ckpt`. In
each case the epochs (steps) finished before the interruption are not trained again, the result equals an
uninterrupted run's, and the records (results.csv, retrain.json, row.json) give the whole run's epochs and
seconds, not those of the last call.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import nas_restore.compare as compare_mod
import nas_restore.continual as continual_mod
import nas_restore.training as training_mod
from nas_restore.compare import CompareConfig, HeldOutConfig, SearchRecipe, run_compare
from nas_restore.continual import STAGE_CHECKPOINT, ContinualConfig, run_continual
from nas_restore.datasets import DataConfig
from nas_restore.genotype import CellGenotype, Edge, Genotype
from nas_restore.retraining import RetrainRunConfig
from nas_restore.search import SearchResult
from nas_restore.training import RetrainConfig
from search_spaces import find_space
from tests._kill_child import CHILD


def _tiny_rescnn() -> Genotype:
    rescnn = find_space("rescnn")
    return rescnn.to_genotype({}, rescnn.config(channels=4, blocks=1, frames=1), {"name": "tiny"})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class _EpochCounter:
    """Counts the retraining epochs started (Lightning's epoch index) and raises at one of them when armed."""

    def __init__(self, monkeypatch, crash_at: int | None = None):
        self.started: list[int] = []
        self.crash_at = crash_at
        original = training_mod._EpochTimer.on_train_epoch_start

        def counted(timer, trainer, module):
            if trainer.current_epoch == self.crash_at:
                self.crash_at = None  # once
                raise RuntimeError(f"simulated crash at the start of epoch {trainer.current_epoch}")
            self.started.append(trainer.current_epoch)
            return original(timer, trainer, module)

        monkeypatch.setattr(training_mod._EpochTimer, "on_train_epoch_start", counted)


# ---------------------------------------------------------------- compare: a crash inside the retraining


def _compare_config() -> CompareConfig:
    return CompareConfig(
        space="rescnn", preset=None, space_settings={"channels": 4, "blocks": 1, "frames": 1}, strategies=["darts"],
        seeds=1, budget=1.0, search=SearchRecipe(batch_size=2, data=DataConfig(patch_size=16, train_items=4,
                                                                               val_items=4)),
        retrain=RetrainRunConfig(train=RetrainConfig(epochs=3, batch_size=2, progress=False),
                                 data=DataConfig(patch_size=16, train_items=8, val_items=4)),
        test=HeldOutConfig(clips=1, frames_per_clip=3, size=24), device="cpu")


def _fake_search(config, run_dir):
    """The search stage stands aside (it is not what is tested): a fixed tiny genotype, written at once."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    genotype = _tiny_rescnn()
    genotype.metadata.update({"strategy": config.strategy, "seed": config.seed, "search_seconds": 0.1,
                              "search_cost_epochs": 1.0})
    path = genotype.save(run_dir / "genotype.json")
    return SearchResult(genotype=genotype, genotype_path=path, run_dir=run_dir, seconds=0.1)


def test_compare_continues_an_interrupted_retraining_and_records_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_mod, "run_search", _fake_search)
    whole = run_compare(_compare_config(), tmp_path / "whole", say=lambda m: None).results.iloc[0]

    counter = _EpochCounter(monkeypatch, crash_at=2)  # epochs 0 and 1 finish (and are checkpointed), then a crash
    out = tmp_path / "killed"
    first = run_compare(_compare_config(), out, say=lambda m: None).results.iloc[0]
    assert first["status"] == "failed" and "simulated crash" in first["error"]
    unit = out / "runs" / "darts-seed0"
    assert not (unit / "done.json").exists() and (unit / "retrain" / "checkpoints" / "last.ckpt").is_file()
    assert counter.started == [0, 1]

    counter.started.clear()
    again = run_compare(_compare_config(), out, say=lambda m: None)
    assert again.ran == ["darts-seed0"]
    assert counter.started == [2], "the epochs finished before the crash were trained again"
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "done" and row["retrain_epochs"] == 3 == whole["retrain_epochs"]
    metrics = pd.read_csv(unit / "retrain" / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert row["retrain_seconds"] == pytest.approx(metrics["seconds"].sum(), abs=0.01)
    assert row["retrain_seconds"] > metrics["seconds"].iloc[2] + 0.005  # more than the last call's epoch
    record = json.loads((unit / "retrain.json").read_text())
    assert record["epochs"] == 3 and record["seconds"] == pytest.approx(metrics["seconds"].sum())
    # the continued retraining ends where the uninterrupted one did
    assert _same_weights(unit / "retrain" / "model.pt", tmp_path / "whole" / "runs" / "darts-seed0" / "retrain" /
                         "model.pt")
    assert row["psnr"] == pytest.approx(whole["psnr"], abs=1e-9)


def test_compare_continues_an_interrupted_search_instead_of_starting_it_again(tmp_path, monkeypatch):
    """A one-shot search killed after its first epoch continues from its checkpoint (nas_restore.search_checkpoint)
    when compare runs again: the first epoch is not searched again and the genotype is the uninterrupted one."""
    tiny = {"channels": 6, "frames": 1, "cells_per_branch": 1, "nodes_per_cell": 2,
            "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}

    def config() -> CompareConfig:
        return CompareConfig(
            space="tmics", preset="demo", space_settings=tiny, strategies=["darts"], seeds=1, budget=2.0,
            strategy_options={"darts": {"arc_learning_rate": 3e-2}},
            search=SearchRecipe(batch_size=4, data=DataConfig(patch_size=16, train_items=8, val_items=8)),
            retrain=RetrainRunConfig(train=RetrainConfig(epochs=1, batch_size=4, progress=False),
                                     data=DataConfig(patch_size=16, train_items=8, val_items=4)),
            test=HeldOutConfig(clips=1, frames_per_clip=3, size=24), device="cpu")

    started: list[int] = []
    crash = {"at": None}
    original = training_mod.ShareThreads.on_train_epoch_start  # a callback of every search and retraining

    def counted(self, trainer, module):
        if trainer.current_epoch == crash["at"]:
            crash["at"] = None
            raise RuntimeError("simulated crash in the search")
        started.append(trainer.current_epoch)
        return original(self, trainer, module)

    monkeypatch.setattr(training_mod.ShareThreads, "on_train_epoch_start", counted)
    whole = run_compare(config(), tmp_path / "whole", say=lambda m: None).results.iloc[0]
    assert started == [0, 1, 0]  # two search epochs, one retraining epoch

    started.clear()
    crash["at"] = 1  # the search's second epoch: its first is finished and checkpointed
    out = tmp_path / "killed"
    first = run_compare(config(), out, say=lambda m: None).results.iloc[0]
    assert first["status"] == "failed" and "simulated crash in the search" in first["error"]
    assert started == [0] and not (out / "runs" / "darts-seed0" / "search.json").exists()

    started.clear()
    run_compare(config(), out, say=lambda m: None)
    assert started == [1, 0], "the search started again from its first epoch"  # search epoch 1, retraining 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "done" and row["search_cost_epochs"] == 2 == whole["search_cost_epochs"]
    assert row["genotype_id"] == whole["genotype_id"]


# ---------------------------------------------------------------- rank: a real kill -9 of the command


def _rank(tmp_path: Path, out: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAS_RESTORE_THREADS": "1", "PYTHONHASHSEED": "0"}
    if kill_at is not None:
        env["KILL_AT_EPOCH"] = str(kill_at)
    argv = ["rank", str(tmp_path / "genotype.json"), "--out", str(out), "--config", str(tmp_path / "rank.yaml")]
    return subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_rank_killed_mid_retraining_continues_from_last_ckpt_and_records_the_whole_run(tmp_path):
    _tiny_rescnn().save(tmp_path / "genotype.json")
    (tmp_path / "rank.yaml").write_text(yaml.safe_dump({
        "retrain": {"train": {"epochs": 3, "batch_size": 2, "seed": 3},
                    "data": {"train_items": 8, "val_items": 4, "patch_size": 16}},
        "test": {"clips": 1, "frames_per_clip": 3, "size": 24}, "profile_size": [24, 32], "latency_repeats": 1,
        "device": "cpu"}))
    whole = _rank(tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = _rank(tmp_path, tmp_path / "killed", kill_at=2)
    assert killed.returncode == -9, f"the child was not killed: {killed.returncode}\n{killed.stderr}"
    (retrain,) = (tmp_path / "killed" / "entries").glob("*/seed-3/retrain")
    unit = retrain.parent
    assert (retrain / "checkpoints" / "last.ckpt").is_file()
    assert not (unit / "done.json").exists() and not (retrain / "model.pt").exists()
    resumed = _rank(tmp_path, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr

    # the second call trained epoch 2 only (its own CSV log version), the first call's epochs 0 and 1 stand
    versions = sorted((retrain / "logs").glob("version_*/metrics.csv"))
    assert len(versions) == 2
    second = pd.read_csv(versions[1])
    assert set(second["epoch"].dropna().astype(int)) == {2}
    # the record gives the whole run: 3 epochs, every epoch's seconds
    rows = pd.read_csv(tmp_path / "killed" / "results.csv")
    row = rows[rows["kind"] != "input"].iloc[0]
    metrics = pd.read_csv(retrain / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2] and row["retrain_epochs"] == 3
    assert row["retrain_seconds"] == pytest.approx(metrics["seconds"].sum(), abs=0.01)
    assert row["retrain_seconds"] > second["epoch_seconds"].dropna().sum() + 0.005
    # ... and ends with the uninterrupted run's weights and scores
    (whole_retrain,) = (tmp_path / "whole" / "entries").glob("*/seed-3/retrain")
    assert _same_weights(retrain / "model.pt", whole_retrain / "model.pt")
    reference = pd.read_csv(tmp_path / "whole" / "results.csv")
    reference = reference[reference["kind"] != "input"].iloc[0]
    assert reference["retrain_epochs"] == 3
    assert row["psnr"] == pytest.approx(reference["psnr"], abs=1e-9)
    assert row["retrain_val_psnr"] == pytest.approx(reference["retrain_val_psnr"], abs=1e-9)


# ---------------------------------------------------------------- continual: a crash inside a stage


def _tiny_tmics() -> Genotype:
    """A 1-frame TMICS network with 8 channels and one 2-node cell per branch (as tests/test_continual.py)."""
    config = find_space("tmics").config("demo", channels=8, frames=1, rain_kernels=4)
    cell = CellGenotype(nodes=[[Edge("Residualblocks_3_1", 0), Edge("skip_connect", 1)],
                               [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    return Genotype(space="tmics", cells={"dna": cell, "cna": cell}, macro={"alignment": "none"},
                    space_config=config.to_dict(), fusion={"type": "aas", "mode": "channel"}, metadata={})


def _continual_config(**kwargs) -> ContinualConfig:
    settings = dict(tasks=["light", "accumulation"], schemes=["distill+replay"], steps_per_task=8,
                    checkpoint_every=3, batch_size=2, patch_size=16, train_items=4, test_items=2, test_size=16,
                    replay={"size": 4, "per_batch": 2}, device="cpu", progress=False)
    settings.update(kwargs)
    return ContinualConfig(**settings)


class _StepCounter:
    """Counts the training steps (one loss per step) and raises at one of them when armed."""

    def __init__(self, monkeypatch, crash_at: int | None = None):
        self.steps = 0
        self.crash_at = crash_at
        counter = self

        class Counted(continual_mod.RestorationLoss):
            def forward(self, *args, **kwargs):
                counter.steps += 1
                if counter.steps == counter.crash_at:
                    raise RuntimeError(f"simulated crash at training step {counter.steps}")
                return super().forward(*args, **kwargs)

        monkeypatch.setattr(continual_mod, "RestorationLoss", Counted)


def test_continual_continues_an_interrupted_stage_bit_for_bit_and_records_its_whole_seconds(tmp_path, monkeypatch):
    steps = _StepCounter(monkeypatch)
    whole = run_continual(_tiny_tmics(), _continual_config(), tmp_path / "whole")
    assert steps.steps == 16  # 2 stages x 8 steps
    assert not list((tmp_path / "whole").rglob(STAGE_CHECKPOINT))  # removed once each stage was saved

    # stage 1 runs whole; stage 2 crashes in its 7th step: its checkpoint holds 6 finished steps
    steps = _StepCounter(monkeypatch, crash_at=8 + 7)
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_continual(_tiny_tmics(), _continual_config(), out)
    stage = out / "distill_replay" / "02_accumulation"
    assert not (stage / "row.json").exists()
    saved = torch.load(stage / STAGE_CHECKPOINT, weights_only=True)
    assert saved["step"] == 6 and saved["seconds"] > 0

    steps = _StepCounter(monkeypatch)
    resumed = run_continual(_tiny_tmics(), _continual_config(checkpoint_every=5), out)  # the interval may change
    assert steps.steps == 2, "the steps finished before the crash were trained again"
    assert resumed.stages_run == 1 and resumed.stages_skipped == 1
    assert not (stage / STAGE_CHECKPOINT).exists()
    row = json.loads((stage / "row.json").read_text())
    reference = json.loads((tmp_path / "whole" / "distill_replay" / "02_accumulation" / "row.json").read_text())
    assert row["resumed_at_step"] == 6 and reference["resumed_at_step"] is None
    assert row["train_steps"] == 8 and row["train_seconds"] > saved["seconds"]
    # bit for bit: the weights, the mean losses over the stage and the scores of an uninterrupted run
    assert _same_weights(stage / "model.pt", tmp_path / "whole" / "distill_replay" / "02_accumulation" / "model.pt")
    assert row["train"] == reference["train"]
    assert resumed.matrices == whole.matrices


def test_a_damaged_stage_checkpoint_is_named_with_the_fix(tmp_path):
    from nas_restore.errors import UserError

    out = tmp_path / "run"
    config = _continual_config(tasks=["light"], steps_per_task=4, checkpoint_every=2)
    stage = out / "distill_replay" / "01_light"
    stage.mkdir(parents=True)
    (stage / STAGE_CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"delete .*{STAGE_CHECKPOINT} to train this stage again"):
        run_continual(_tiny_tmics(), config, out)
    torch.save({"format": 1, "stage": 1, "steps_per_task": 4, "step": 2, "model": {}, "optimizer": {},
                "scheduler": {}, "batches": torch.zeros(1), "replays": torch.zeros(1), "torch_rng": torch.zeros(1),
                "sums": {}, "seconds": 1.0}, stage / STAGE_CHECKPOINT)
    with pytest.raises(UserError, match="another stage"):
        run_continual(_tiny_tmics(), config, out)
