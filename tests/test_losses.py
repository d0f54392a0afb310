"""Tests for nas_restore.losses: the torch SSIM against scikit-image, and the restoration loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from nas_restore.losses import LossConfig, RestorationLoss, ssim_map, ssim_torch


def smooth_pair(seed: int = 0, shape=(2, 3, 40, 48), noise: float = 0.1):
    """Smooth random images and a noisy copy, both in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    clean = F.avg_pool2d(torch.rand(*shape, generator=g), 5, stride=1, padding=2)
    noisy = (clean + noise * torch.randn(shape, generator=g)).clamp(0, 1)
    return noisy, clean


def skimage_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    scores = [
        structural_similarity(p.permute(1, 2, 0).numpy(), t.permute(1, 2, 0).numpy(), gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False, channel_axis=2, data_range=1.0)
        for p, t in zip(pred, target)
    ]
    return float(np.mean(scores))


@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_ssim_of_identical_images_is_one(padding):
    _, clean = smooth_pair()
    assert ssim_torch(clean, clean, padding=padding).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_valid_padding_matches_skimage(seed):
    pred, target = smooth_pair(seed)
    assert ssim_torch(pred, target, padding="valid").item() == pytest.approx(skimage_ssim(pred, target), abs=1e-4)


def test_reflect_padding_differs_at_the_border_only():
    pred, target = smooth_pair()
    full = ssim_map(pred, target, padding="reflect")
    valid = ssim_map(pred, target, padding="valid")
    assert full.shape == pred.shape and valid.shape == (2, 3, 30, 38)
    torch.testing.assert_close(full[..., 5:-5, 5:-5], valid, atol=1e-5, rtol=0)


def test_ssim_drops_with_more_noise():
    _, clean = smooth_pair()
    light, _ = smooth_pair(noise=0.02)
    heavy, _ = smooth_pair(noise=0.3)
    assert ssim_torch(heavy, clean) < ssim_torch(light, clean) < 1.0


def test_valid_padding_rejects_images_smaller_than_the_window():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="padding='reflect'"):
        ssim_torch(x, x)
    assert ssim_torch(x, x, padding="reflect").item() == pytest.approx(1.0, abs=1e-5)


def test_loss_is_the_weighted_sum_of_its_parts():
    pred, target = smooth_pair()
    cfg = LossConfig(l1_weight=0.75, ssim_weight=1.1, mse_weight=0.5)
    total, parts = RestorationLoss(cfg)(pred, target)
    assert set(parts) == {"l1", "ssim_loss", "mse"}
    expected = (0.75 * (pred - target).abs().mean() + 1.1 * (1 - ssim_torch(pred, target))
                + 0.5 * ((pred - target) ** 2).mean())
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    # Default config: TMICS's weights, no MSE term.
    assert set(RestorationLoss()(pred, target)[1]) == {"l1", "ssim_loss"}


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(0, 1, 0), LossConfig(1, 0, 0), LossConfig(0, 0, 1)])
def test_loss_falls_as_prediction_moves_toward_target(cfg):
    noisy, clean = smooth_pair()
    loss = RestorationLoss(cfg)
    far, _ = loss(noisy, clean)
    near, _ = loss(clean + 0.5 * (noisy - clean), clean)
    assert near < far
    assert loss(clean, clean)[0].item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_is_finite_and_nonzero():
    noisy, clean = smooth_pair()
    pred = noisy.clone().requires_grad_(True)
    total, _ = RestorationLoss()(pred, clean)
    total.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


def test_bad_config_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="l1_weight"):
        LossConfig(l1_weight=-1)
    with pytest.raises(ValueError, match="every weight"):
        LossConfig(0, 0, 0)
    with pytest.raises(ValueError, match="ssim_padding"):
        LossConfig(ssim_padding="zeros")
    with pytest.raises(ValueError, match="differs from target"):
        RestorationLoss()(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


def rainy_camera(size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-image's (bundled) camera crop and a copy with vertical rain streaks, [1, 1, H, W] in [0, 1]."""
    from skimage import data

    clean = torch.from_numpy(data.camera()[100:100 + size, 150:150 + size].astype(np.float32) / 255)[None, None]
    g = torch.Generator().manual_seed(3)
    streaks = (torch.rand(clean.shape, generator=g) > 0.97).float()
    streaks = F.conv2d(streaks, torch.ones(1, 1, 9, 1) / 3, padding=(4, 0)).clamp(0, 1)
    return (clean + 0.6 * streaks).clamp(0, 1), clean


def test_valid_map_matches_skimage_per_pixel_on_a_single_channel():
    # An independent reference: scikit-image computes in float64 and discards a 5-pixel border, so its
    # full map cropped by 5 is the valid map; a swapped implementation with other numbers fails here.
    pred, target = rainy_camera()
    mean, full = structural_similarity(pred[0, 0].numpy(), target[0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=1.0, full=True)
    ours = ssim_map(pred, target, padding="valid")[0, 0]
    assert ours.shape == (86, 86)
    np.testing.assert_allclose(ours.numpy(), full[5:-5, 5:-5], atol=1e-4, rtol=0)  # float32: 5e-5 here
    assert ssim_torch(pred, target).item() == pytest.approx(mean, abs=1e-6)  # 1e-7 here


@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_identical_images_score_one_under_bfloat16_autocast(padding):
    # Mixed-precision training must not break the SSIM term (torchmetrics 1.9's SSIM gives 0.82 here).
    _, clean = rainy_camera()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ssim_torch(clean, clean, padding=padding).item() == pytest.approx(1.0, abs=1e-3)
