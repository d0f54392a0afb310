"""Tests for nas_restore.training and nas_restore.device on tiny synthetic data (CPU, a few seconds)."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from skimage.metrics import peak_signal_noise_ratio
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nas_restore.device import CUDA_MISSING, lightning_accelerator, resolve_device
from nas_restore.losses import LossConfig, RestorationLoss
from nas_restore.metrics import psnr_torch
from nas_restore.training import (METRICS_COLUMNS, OptimConfig, RestorationModule, RestorationSteps,
                                  RetrainConfig, retrain)
from nas_restore.build import load_weights


class TinyNet(nn.Module):
    """Two convs over the stacked frames plus a skip from the centre frame: [B,T,3,H,W] -> [B,3,H,W]."""

    def __init__(self, frames: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3 * frames, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2] + self.conv2(torch.relu(self.conv1(x.flatten(1, 2))))


def make_pairs(n: int = 16, frames: int = 1, size: int = 16, seed: int = 0) -> TensorDataset:
    """(frames [T,3,H,W] = target + noise, target [3,H,W]) pairs in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=g)
    noisy = target.unsqueeze(1) + 0.15 * torch.randn(n, frames, 3, size, size, generator=g)
    return TensorDataset(noisy.clamp(0, 1), target)


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- device


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_cuda_without_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError) as err:
        resolve_device(name)
    assert str(err.value) == CUDA_MISSING
    assert "--device cpu or auto" in CUDA_MISSING


def test_lightning_accelerator():
    assert lightning_accelerator(torch.device("cpu")) == ("cpu", 1)
    assert lightning_accelerator(torch.device("cuda", 1)) == ("gpu", [1])
    assert lightning_accelerator(torch.device("cuda"), devices=2) == ("gpu", 2)
    assert lightning_accelerator(torch.device("mps")) == ("mps", 1)
    with pytest.raises(ValueError, match="devices=2"):
        lightning_accelerator(torch.device("cuda", 0), devices=2)


# ---------------------------------------------------------------- steps


def test_psnr_torch_matches_skimage():
    data = make_pairs(4)
    frames, target = data.tensors
    pred = frames[:, 0]
    ours = psnr_torch(pred, target, y_channel=False, max_db=100.0)
    ref = [peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=1.0) for p, t in zip(pred, target)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4)
    assert psnr_torch(target, target, y_channel=False, max_db=100.0).max().item() == pytest.approx(100.0)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize("frames", [1, 3])
def test_training_steps_lower_the_loss(frames):
    torch.manual_seed(0)
    data = make_pairs(16, frames)
    module = RestorationModule(TinyNet(frames), LossConfig(), OptimConfig(lr=3e-3))
    fixed = data.tensors
    with torch.no_grad():
        before, _ = module.criterion(module(fixed[0]), fixed[1])
    trainer = quiet_trainer(max_steps=20, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=4, shuffle=True))
    assert trainer.global_step == 20
    with torch.no_grad():
        after, _ = module.criterion(module(fixed[0]), fixed[1])
    assert after < 0.9 * before, (before, after)
    assert {"train_loss", "train_l1", "train_ssim_loss", "lr"} <= set(trainer.callback_metrics)


def test_validation_logs_psnr_ssim_and_loss():
    data = make_pairs(8)
    module = RestorationModule(TinyNet())
    metrics = quiet_trainer().validate(module, DataLoader(data, batch_size=3), verbose=False)[0]
    assert set(metrics) == {"val_psnr", "val_ssim", "val_loss"}
    with torch.no_grad():
        pred = module(data.tensors[0]).clamp(0, 1)
    # Per-image mean over uneven batches (3, 3, 2): the same as one pass over all 8 images.
    assert metrics["val_psnr"] == pytest.approx(psnr_torch(pred, data.tensors[1], y_channel=False).mean().item(), rel=1e-5)


class NNIStyleHost(RestorationSteps, pl.LightningModule):
    """Mimics nni.nas.evaluator.pytorch.LightningModule: ``model`` is a read-only property set later."""

    def __init__(self) -> None:
        super().__init__()
        self.criterion = RestorationLoss(LossConfig())
        self.optim_config = OptimConfig()

    @property
    def model(self) -> nn.Module:
        return self._model

    def set_model(self, model: nn.Module) -> None:
        self._model = model


def test_mixin_works_when_the_model_is_set_later():
    host = NNIStyleHost()
    host.set_model(TinyNet())
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(host, DataLoader(make_pairs(8), batch_size=4), DataLoader(make_pairs(4, seed=1), batch_size=4))
    assert {"train_loss", "val_psnr", "val_ssim", "val_loss"} <= set(trainer.callback_metrics)


def test_bad_batch_is_a_clear_error():
    module = RestorationModule(TinyNet())
    with pytest.raises(ValueError, match=r"frames \[B, T, 3, H, W\]"):
        module.training_step((torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)), 0)


def test_training_does_not_import_nni():
    code = "import sys, nas_restore.training, nas_restore.losses, nas_restore.device; print('nni' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- retrain


def tiny_config(**kwargs) -> RetrainConfig:
    return RetrainConfig(**{"batch_size": 4, "lr": 3e-3, "device": "cpu", "progress": False, **kwargs})


@pytest.mark.parametrize("frames", [1, 3])
def test_retrain_writes_checkpoints_metrics_and_plain_weights(tmp_path, frames):
    model = TinyNet(frames)
    result = retrain(model, make_pairs(16, frames), make_pairs(8, frames, seed=1), tiny_config(epochs=3), tmp_path)
    assert result.epochs_run == 3
    assert result.best_checkpoint == tmp_path / "checkpoints" / "best.ckpt" and result.best_checkpoint.is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

    rows = read_rows(result.metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == list(METRICS_COLUMNS)
    for row in rows:
        assert all(np.isfinite(float(row[c])) for c in METRICS_COLUMNS), row
    psnrs = [float(r["val_psnr"]) for r in rows]
    assert result.best_val_psnr == pytest.approx(max(psnrs))
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine annealing

    blob = torch.load(result.model_path, weights_only=True)  # plain tensors: no Lightning, no pickled classes
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    assert blob["state_dict"].keys() == model.state_dict().keys()
    for key, value in blob["state_dict"].items():
        assert torch.equal(value, best[f"model.{key}"]), key  # model.pt holds the best epoch's weights
    fresh = TinyNet(frames)
    fresh.load_state_dict(blob["state_dict"])
    x = make_pairs(2, frames, seed=5).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))  # `model` was left holding the best weights
    assert load_weights(TinyNet(frames), result.model_path)["best_val_psnr"] == pytest.approx(result.best_val_psnr)


def test_retrain_keeps_the_best_epoch_not_the_last(tmp_path):
    # Training pulls towards inverted images while validation wants the input back: val PSNR falls
    # every epoch, so the best epoch is the first and the last weights are worse.
    frames, target = make_pairs(16).tensors
    train = TensorDataset(frames, 1 - target)
    val = make_pairs(8, seed=1)
    torch.manual_seed(0)
    model = TinyNet()
    nn.init.zeros_(model.conv2.weight)  # start as the identity on the centre frame
    nn.init.zeros_(model.conv2.bias)
    result = retrain(model, train, val, tiny_config(epochs=3), tmp_path)
    psnrs = [float(r["val_psnr"]) for r in read_rows(result.metrics_csv)]
    assert psnrs.index(max(psnrs)) == 0 and psnrs[-1] < psnrs[0], psnrs
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(best["model.conv2.weight"], last["model.conv2.weight"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[f"model.{key}"]), key
    assert load_weights(TinyNet(), result.model_path)["best_epoch"] == 0


def test_retrain_resumes_from_last_checkpoint(tmp_path):
    train, val = make_pairs(16), make_pairs(8, seed=1)
    first = retrain(TinyNet(), train, val, tiny_config(epochs=1), tmp_path)
    assert first.epochs_run == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    second = retrain(TinyNet(), train, val, tiny_config(epochs=2), tmp_path)
    assert second.epochs_run == 1  # only the remaining epoch
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    logged = [sorted({int(r["epoch"]) for r in read_rows(p)})
              for p in sorted((tmp_path / "logs").glob("version_*/metrics.csv"))]
    assert logged == [[0], [1]]
    rows = read_rows(second.metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    # The resumed epoch follows the new 2-epoch cosine (halfway), not the finished 1-epoch schedule.
    config = tiny_config(epochs=2)
    assert float(rows[1]["lr"]) == pytest.approx(0.5 * (config.lr + config.min_lr), rel=1e-5)

    third = retrain(TinyNet(), train, val, tiny_config(epochs=2), tmp_path)  # already finished
    assert third.epochs_run == 0
    assert third.best_val_psnr == pytest.approx(second.best_val_psnr)


def test_retrain_config_errors_name_the_field():
    with pytest.raises(ValueError, match="retrain.epochs"):
        RetrainConfig(epochs=0)
    with pytest.raises(ValueError, match="min_lr"):
        RetrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="val_data is empty"):
        retrain(TinyNet(), make_pairs(4), make_pairs(0), tiny_config(), "unused")
