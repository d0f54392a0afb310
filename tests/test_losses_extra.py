"""Tests for the extra loss terms: RDMC's contrastive prior, the temporal consistency term, and training
with each of them on (tiny synthetic data, CPU, seconds)."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from nas_restore.config import ConfigError, from_dict
from nas_restore.contrastive import ContrastivePrior, VGGFeatures
from nas_restore.data.synthetic import SyntheticRainDataset
from nas_restore.losses import LossConfig, RestorationLoss
from nas_restore.retraining import RetrainRunConfig
from nas_restore.temporal import TemporalPairs, temporal_loss, warping_errors
from nas_restore.training import OptimConfig, RestorationModule, trainer_strategy


class TinyNet(nn.Module):
    def __init__(self, frames: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3 * frames, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2] + self.conv2(torch.relu(self.conv1(x.flatten(1, 2))))


def rain_pair(seed=0, size=24):
    g = torch.Generator().manual_seed(seed)
    clean = torch.nn.functional.avg_pool2d(torch.rand(2, 3, size, size, generator=g), 3, 1, 1)
    streaks = (torch.rand(2, 1, size, size, generator=g) > 0.93).float()
    streaks = torch.nn.functional.conv2d(streaks, torch.ones(1, 1, 5, 1) / 2, padding=(2, 0)).clamp(0, 1)
    return (clean + 0.5 * streaks).clamp(0, 1), clean


# ---------------------------------------------------------------- contrastive prior


def test_contrastive_prior_prefers_the_clean_image():
    rainy, clean = rain_pair()
    prior = ContrastivePrior()
    halfway = 0.5 * (rainy + clean)
    at_clean, at_half = prior(clean, clean, rainy).item(), prior(halfway, clean, rainy).item()
    assert at_clean == pytest.approx(0.0, abs=1e-6)
    assert at_half > at_clean
    assert prior(rainy, clean, rainy).item() > at_half  # the rainy input itself is the worst


def test_contrastive_gradient_reaches_the_network():
    torch.manual_seed(0)
    rainy, clean = rain_pair()
    model = TinyNet()
    loss, parts = RestorationLoss(LossConfig(l1_weight=0, ssim_weight=0, mse_weight=1e-9,
                                             contrastive_weight=1.0))(model(rainy.unsqueeze(1)), clean, rainy)
    assert "contrastive" in parts
    parts["contrastive"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_vgg_features_load_a_torchvision_state_dict(tmp_path):
    full = VGGFeatures("vgg19", taps=(36,))
    convs = sorted(int(k.split(".")[1]) for k in full.state_dict() if k.endswith(".weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # torchvision's vgg19 layout
    state = {k: torch.randn_like(v) for k, v in full.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys of a full VGG are ignored
    torch.save(state, tmp_path / "vgg19.pth")
    prior = ContrastivePrior("vgg19", weights_path=tmp_path / "vgg19.pth")
    assert torch.equal(prior.extractor.features[12].weight, state["features.12.weight"])
    assert not any(p.requires_grad for p in prior.extractor.parameters())
    rainy, clean = rain_pair(size=16)
    out = (0.5 * (rainy + clean)).requires_grad_(True)
    prior(out, clean, rainy).backward()
    assert out.grad.abs().sum() > 0
    state["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features.2.weight has shape"):
        ContrastivePrior("vgg16", weights_path=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="needs weights_path"):
        ContrastivePrior("vgg19")


def test_loss_config_typos_and_bad_values_are_clear():
    with pytest.raises(ConfigError, match="did you mean retrain.train.loss.contrastive_weight"):
        from_dict(RetrainRunConfig, {"train": {"loss": {"contrastiv_weight": 0.1}}}, "retrain")
    with pytest.raises(ValueError, match="contrastive_weights"):
        LossConfig(contrastive_weight=0.1, contrastive_features="vgg19")
    with pytest.raises(ValueError, match="temporal_weight"):
        LossConfig(temporal_weight=-1)


# ---------------------------------------------------------------- temporal term


def test_temporal_loss_is_zero_for_outputs_that_move_like_the_clean_frames():
    data = TemporalPairs(SyntheticRainDataset(length=2, frames=3, size=32, seed=0, clip_length=5), frames=1)
    frames, targets = data[0]
    assert frames.shape == (2, 3, 32, 32) and targets.shape == (2, 3, 32, 32)
    prev, cur = targets[0:1], targets[1:2]
    assert temporal_loss(prev, cur, prev, cur).item() < 0.01
    rainy_prev, rainy_cur = frames[0:1], frames[1:2]
    assert temporal_loss(rainy_prev, rainy_cur, prev, cur).item() > temporal_loss(prev, cur, prev, cur).item()
    errors = warping_errors({"clean": prev, "input": rainy_prev}, {"clean": cur, "input": rainy_cur})
    assert errors["input"] > errors["clean"] >= 0


def test_temporal_pairs_are_the_shifted_windows():
    source = SyntheticRainDataset(length=2, frames=5, size=16, seed=1, clip_length=7)
    data = TemporalPairs(source, frames=3)
    frames, targets = data[1]
    rainy, clean = source.render(1)   # 5 frames: centre 2; windows of 3 around 1 and 2 = frames 0..3
    assert torch.equal(frames, torch.from_numpy(rainy[:4]).permute(0, 3, 1, 2))
    assert torch.equal(targets, torch.from_numpy(clean[1:3]).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="frames=5"):
        TemporalPairs(SyntheticRainDataset(length=2, frames=3, size=16), frames=3)


# ---------------------------------------------------------------- a few steps lower the loss


def _fit(module, data, steps):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=steps)
    trainer.fit(module, DataLoader(data, batch_size=len(data), shuffle=False))


@pytest.mark.parametrize("terms", [{"temporal_weight": 1.0}, {"contrastive_weight": 0.1},
                                   {"temporal_weight": 1.0, "contrastive_weight": 0.1}])
def test_a_few_steps_lower_the_loss_with_each_term_on(terms):
    torch.manual_seed(0)
    data = TemporalPairs(SyntheticRainDataset(length=4, frames=3, size=24, seed=2, clip_length=5), frames=1)
    items = [data[i] for i in range(len(data))]
    batch = (torch.stack([f for f, _ in items]), torch.stack([t for _, t in items]))
    module = RestorationModule(TinyNet(), LossConfig(**terms), OptimConfig(lr=3e-3))
    with torch.no_grad():
        before, parts, _ = module.batch_loss(batch)
    for name in ("temporal", "contrastive"):
        assert (name in parts) == (f"{name}_weight" in terms)
    _fit(module, data, steps=8)
    with torch.no_grad():
        after, _, _ = module.batch_loss(batch)
    assert after.item() < before.item()


def test_ddp_strategy_only_for_several_devices_or_nodes():
    assert trainer_strategy(1, 1) == "auto"
    assert trainer_strategy(2, 1) == "ddp"
    assert trainer_strategy(1, 3) == "ddp"


def test_retrain_cli_with_every_term_from_a_yaml_config(tmp_path, capsys):
    from nas_restore.cli import main
    from tests._tiny_model import tiny_genotype

    genotype = tiny_genotype(frames=3)
    genotype.save(tmp_path / "genotype.json")
    config = tmp_path / "retrain.yaml"
    config.write_text(
        "train:\n  epochs: 1\n  batch_size: 2\n  device: cpu\n  progress: false\n"
        "  loss: {l1_weight: 0.75, ssim_weight: 1.1, ssim_padding: reflect, temporal_weight: 1.0,"
        " contrastive_weight: 0.1, contrastive_features: filterbank}\n"
        "data: {patch_size: 16, train_items: 4, val_items: 2}\n")
    out = tmp_path / "run"
    assert main(["retrain", str(tmp_path / "genotype.json"), "--config", str(config), "--out", str(out)]) == 0
    assert "best val PSNR" in capsys.readouterr().out
    logged = (next((out / "logs").glob("version_*/metrics.csv"))).read_text().splitlines()[0]
    assert "train_temporal" in logged and "train_contrastive" in logged
    assert torch.load(out / "model.pt", weights_only=True)["genotype"]["space"] == "tmics"
    config.write_text(config.read_text().replace("temporal_weight", "temporal_weigth"))
    assert main(["retrain", str(tmp_path / "genotype.json"), "--config", str(config), "--out", str(out)]) == 2
    assert "did you mean retrain.train.loss.temporal_weight" in capsys.readouterr().err
