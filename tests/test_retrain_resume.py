"""A retraining killed with kill -9 and re-run ends with the weights and metrics of one never killed: on synthetic
data and on an image folder, whose random crops and flips draw from torch's generator (seeded per epoch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from skimage import io

from search_spaces import find_space
from tests._kill_child import CHILD


def _retrain(tmp_path: Path, out: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAS_RESTORE_THREADS": "1", "PYTHONHASHSEED": "0"}
    if kill_at is not None:
        env["KILL_AT_EPOCH"] = str(kill_at)
    argv = ["retrain", str(tmp_path / "genotype.json"), "--out", str(out), "--config", str(tmp_path / "tiny.yaml"),
            "--device", "cpu", "--no-progress"]
    return subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _write_pairs(folder: Path, count: int = 6, size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("input", "target"):
        (folder / kind).mkdir(parents=True)
    for k in range(count):
        clean = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
        io.imsave(folder / "target" / f"{k}.png", clean, check_contrast=False)
        io.imsave(folder / "input" / f"{k}.png", clean + 40, check_contrast=False)
    return folder


@pytest.fixture(scope="module", params=["synthetic", "folder"])
def runs(tmp_path_factory, request):
    tmp_path = tmp_path_factory.mktemp("resume")
    rescnn = find_space("rescnn")
    rescnn.to_genotype({}, rescnn.config(channels=4, blocks=1, frames=1), {"name": "tiny"}).save(
        tmp_path / "genotype.json")
    data = {"train_items": 8, "val_items": 4, "patch_size": 16}
    if request.param == "folder":  # 24-px pairs cut to random 16-px crops, flipped at random
        data = {"folder": str(_write_pairs(tmp_path / "pairs")), "patch_size": 16, "val_fraction": 0.34}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 4, "batch_size": 2, "seed": 3}, "data": data}))
    whole = _retrain(tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = _retrain(tmp_path, tmp_path / "killed", kill_at=2)
    assert killed.returncode == -9, f"the child was not killed: {killed.returncode}\n{killed.stderr}"
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = _retrain(tmp_path, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    return tmp_path / "whole", tmp_path / "killed"


def test_resumed_retraining_ends_with_the_uninterrupted_weights(runs):
    whole, killed = runs
    a = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"


def test_resumed_retraining_has_the_uninterrupted_metrics_for_every_epoch(runs):
    whole, killed = runs
    a, b = pd.read_csv(whole / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    assert list(a["epoch"]) == list(b["epoch"]) == [0, 1, 2, 3]
    for column in ("train_loss", "val_psnr"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=0, abs=1e-9), column


def test_the_killed_run_left_a_stale_lock_that_the_rerun_took_over(runs):
    _, killed = runs
    assert not (killed / ".lock").exists()  # released by the resumed run
    assert json.loads((killed / "run.json").read_text())["kind"] == "retrain"
