"""Metrics: Y conversion, PSNR/SSIM known values, protocol options, torch variant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from nas_restore.metrics import Protocol, psnr, psnr_torch, rgb_to_y, ssim

RAW = Protocol(quantize=False)


def _img(seed: int = 0, shape=(24, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def test_rgb_to_y_of_pure_colours():
    colours = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=float)
    np.testing.assert_allclose(rgb_to_y(colours)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    assert rgb_to_y(np.full((1, 1, 3), 0.5), round_y=True)[0, 0] == round(16 + 219 * 0.5)


def test_identical_images():
    img = _img()
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0)
    assert psnr(img, img, Protocol(y_channel=False)) == math.inf


def test_known_mse_gives_known_psnr():
    target = np.full((16, 16, 3), 0.4)
    pred = target + 3 / 255                                    # RGB error 3 levels everywhere
    assert psnr(pred, target, Protocol(y_channel=False)) == pytest.approx(10 * math.log10(255**2 / 9))
    # a grey shift of g moves Y by 219 * g on [0, 255] (the coefficients sum to 219)
    assert psnr(pred, target, RAW) == pytest.approx(10 * math.log10(255**2 / (219 * 3 / 255) ** 2))


def test_data_range_scales_consistently():
    a, b = _img(1), _img(2)
    assert psnr(a, b, Protocol(data_range=1.0)) == pytest.approx(psnr(a, b))


def test_quantize_rounds_to_8_bit():
    target = np.round(_img(3) * 255) / 255
    pred = target + 0.2 / 255                                  # below half a level
    assert psnr(pred, target) == math.inf
    assert math.isfinite(psnr(pred, target, RAW))


def test_crop_border_ignores_the_border():
    target = np.full((20, 20, 3), 0.5)
    pred = target.copy()
    pred[:2] = 0.0
    assert math.isfinite(psnr(pred, target))
    assert psnr(pred, target, Protocol(crop_border=2)) == math.inf
    assert ssim(pred, target, Protocol(crop_border=2)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(pred, target, Protocol(crop_border=10))
    with pytest.raises(ValueError, match="crop_border"):
        Protocol(crop_border=-1)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(24, 20, 3\).*\(24, 21, 3\)"):
        psnr(_img(shape=(24, 20, 3)), _img(shape=(24, 21, 3)))
    with pytest.raises(ValueError, match="HxWx3"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(_img(shape=(8, 30, 3)), _img(1, shape=(8, 30, 3)))


def test_ssim_matches_matlab_style_settings_on_y():
    a, b = _img(4, (32, 32, 3)), _img(5, (32, 32, 3))
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    expected = structural_similarity(yb, ya, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(a, b, RAW) == pytest.approx(expected)
    assert 0 < ssim(a, b, Protocol(y_channel=False)) < 1


def test_torch_tensors_accepted():
    a, b = _img(6), _img(7)
    ta, tb = (torch.from_numpy(x.transpose(2, 0, 1).copy()).float() for x in (a, b))
    assert psnr(ta, tb) == pytest.approx(psnr(a.astype(np.float32), b.astype(np.float32)))
    assert ssim(ta, tb) == pytest.approx(ssim(a.astype(np.float32), b.astype(np.float32)))


def test_psnr_torch_matches_numpy_per_image():
    a = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    b[1] = a[1]
    for y in (True, False):
        got = psnr_torch(a, b, y_channel=y)
        assert got.shape == (3,)
        protocol = Protocol(y_channel=y, quantize=False)
        for i in (0, 2):
            assert float(got[i]) == pytest.approx(psnr(a[i], b[i], protocol), abs=1e-4)
        assert math.isinf(float(got[1]))
    cropped = psnr_torch(a[:1], b[:1], crop_border=3)
    assert float(cropped[0]) == pytest.approx(psnr(a[0], b[0], Protocol(quantize=False, crop_border=3)), abs=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        psnr_torch(a, b[:, :, :8])


def test_describe_names_the_protocol():
    text = Protocol().describe()
    assert "Y" in text and "BT.601" in text and "[0,255]" in text and "crop 0 px" in text and "skimage" in text
    assert "RGB" in Protocol(y_channel=False, crop_border=4).describe()
    assert "crop 4 px" in Protocol(crop_border=4).describe()
