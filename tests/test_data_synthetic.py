"""Synthetic rain: parameters, streak layers, clips, the on-the-fly dataset and written folders."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nas_restore.data.folders import PairedImageFolder, VideoClipFolder, open_dataset
from nas_restore.data.synthetic import (RAIN_PRESETS, RainParams, SyntheticRainDataset, add_rain, load_photo,
                                        make_clip, rain_layer, rain_layer_stats, write_synthetic_folder)

STILL = RainParams(angle=0.0, angle_jitter=0.0, length=20.0, width=1.0, density=4.0, brightness=0.6, blur=0.5,
                   speed=8.0)


@pytest.mark.parametrize("field,value", [("density", -1.0), ("haze", 1.0), ("brightness", 2.0), ("angle", 95.0),
                                         ("length", 0.0), ("width", float("nan")), ("speed", "fast")])
def test_rain_params_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"RainParams.{field}"):
        RainParams(**{field: value})


def test_rain_params_blend_and_unknown_keys():
    with pytest.raises(ValueError, match="blend"):
        RainParams(blend="multiply")
    with pytest.raises(ValueError, match="colour"):
        RainParams.from_dict({"density": 2.0, "colour": 1})
    assert RainParams.from_dict({"density": 2.0}).density == 2.0


def test_presets_are_valid_and_distinct():
    assert {"light", "heavy", "slanted", "accumulation"} <= set(RAIN_PRESETS)
    presets = list(RAIN_PRESETS.values())
    assert all(isinstance(p, RainParams) for p in presets)
    assert len(set(presets)) == len(presets)
    assert RAIN_PRESETS["accumulation"].haze > 0 and RAIN_PRESETS["light"].haze == 0
    assert abs(RAIN_PRESETS["slanted"].angle) >= 15


def test_rain_layer_shape_range_and_determinism():
    a = rain_layer(48, 40, STILL, np.random.default_rng(1))
    b = rain_layer(48, 40, STILL, np.random.default_rng(1))
    c = rain_layer(48, 40, STILL, np.random.default_rng(2))
    assert a.shape == (48, 40) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.max() > 0.1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert rain_layer(32, 32, replace(STILL, density=0.0), np.random.default_rng(0)).max() == 0.0


def _shifted_corr(layer: np.ndarray, dy: int, dx: int) -> float:
    """Correlation of layer[i, j] with layer[i + dy, j + dx] (dy >= 0)."""
    h, w = layer.shape
    a = layer[: h - dy, max(0, -dx): w - max(0, dx)]
    b = layer[dy:, max(0, dx): w - max(0, -dx)]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_rain_angle_sign_convention():
    """Positive angle: streaks run down-right, so the layer correlates with itself shifted (+y, +x)."""
    params = replace(STILL, angle=35.0, length=30.0, density=3.0, blur=0.0)
    layer = rain_layer(128, 128, params, np.random.default_rng(3))
    assert _shifted_corr(layer, 6, 4) > 0.3
    assert _shifted_corr(layer, 6, 4) > 2 * _shifted_corr(layer, 6, -4)


def test_add_rain_is_additive_and_haze_follows_the_model():
    clean = np.full((32, 32, 3), 0.3, np.float32)
    rainy = add_rain(clean, STILL, np.random.default_rng(0))
    assert rainy.shape == clean.shape and rainy.dtype == np.float32
    assert (rainy >= clean - 1e-6).all() and rainy.mean() > clean.mean()
    veil = replace(STILL, density=0.0, haze=0.5, atmosphere=0.9)
    np.testing.assert_allclose(add_rain(clean, veil, np.random.default_rng(0)), 0.5 * 0.3 + 0.5 * 0.9, atol=1e-6)
    with pytest.raises(ValueError, match="HxWx3"):
        add_rain(np.zeros((8, 8)), STILL, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown rain type"):
        add_rain(clean, "drizzle", np.random.default_rng(0))


def test_rain_layer_stats_of_known_layer():
    clean = np.full((20, 20, 3), 0.5)
    rainy = clean.copy()
    rainy[:2] += 0.2
    stats = rain_layer_stats(rainy, clean)
    assert stats["mean"] == pytest.approx(0.02) and stats["coverage"] == pytest.approx(0.1)
    assert np.isfinite(stats["psnr_y"])


def test_bundled_photographs_load_offline():
    img = load_photo("astronaut")
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.float32 and img.max() <= 1.0
    with pytest.raises(ValueError, match="unknown photograph"):
        load_photo("lena")


def test_make_clip_shapes_and_determinism():
    rainy, clean = make_clip("coffee", 4, (40, 48), "light", seed=5)
    assert rainy.shape == clean.shape == (4, 40, 48, 3) and rainy.dtype == np.float32
    again, _ = make_clip("coffee", 4, (40, 48), "light", seed=5)
    other, _ = make_clip("coffee", 4, (40, 48), "light", seed=6)
    np.testing.assert_array_equal(rainy, again)
    assert not np.array_equal(rainy, other)
    with pytest.raises(ValueError, match="motion"):
        make_clip("coffee", 3, 32, "light", motion="shake")


@pytest.mark.parametrize("motion", ["pan", "zoom", "random"])
def test_clip_background_moves_coherently(motion):
    _, clean = make_clip("astronaut", 5, (48, 48), STILL, seed=2, motion=motion)
    diffs = [np.abs(clean[t + 1] - clean[t]).mean() for t in range(4)]
    assert min(diffs) > 1e-4                                   # the camera moves
    assert np.abs(clean[4] - clean[0]).mean() > max(diffs) * 0.9  # smoothly: far frames differ more


def test_clip_rain_falls_at_speed_and_changes():
    params = replace(STILL, speed=8.0, density=3.0, blur=0.0)
    rainy, clean = make_clip(np.full((200, 200, 3), 0.2, np.float32), 2, (96, 96), params, seed=4)
    r0, r1 = ((rainy[t] - clean[t]).mean(2) for t in (0, 1))
    assert not np.allclose(r0, r1)                        # rain differs between frames
    moved = float(np.corrcoef(r0[:-8].ravel(), r1[8:].ravel())[0, 1])
    still = float(np.corrcoef(r0.ravel(), r1.ravel())[0, 1])
    assert moved > 0.5 and moved > still + 0.2            # ... because it fell 8 px


def test_dataset_items_shapes_and_determinism():
    ds = SyntheticRainDataset(length=6, frames=3, size=32, rain_types=["light", "heavy"], seed=1, clip_length=5)
    frames, target = ds[2]
    assert frames.shape == (3, 3, 32, 32) and target.shape == (3, 32, 32)
    assert frames.dtype == target.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert not torch.allclose(frames[1], target)          # rain on the centre frame
    same = SyntheticRainDataset(length=6, frames=3, size=32, rain_types=["light", "heavy"], seed=1, clip_length=5)
    other = SyntheticRainDataset(length=6, frames=3, size=32, rain_types=["light", "heavy"], seed=2, clip_length=5)
    assert torch.equal(ds[2][0], same[2][0]) and torch.equal(ds[2][1], same[2][1])
    assert not torch.equal(ds[2][1], other[2][1])
    assert not torch.equal(ds[2][1], ds[3][1])
    rainy, clean = ds.render(2)
    assert np.array_equal(clean[1].transpose(2, 0, 1), target.numpy())
    single = SyntheticRainDataset(length=2, frames=1, size=24, rain_types=[STILL], images=["rocket"])
    assert single[0][0].shape == (1, 3, 24, 24)
    with pytest.raises(IndexError):
        ds[6]


@pytest.mark.parametrize("kwargs,match", [({"frames": 2}, "odd"), ({"frames": 5, "clip_length": 3}, "clip_length"),
                                          ({"rain_types": ["drizzle"]}, "drizzle"), ({"images": ["lena"]}, "lena"),
                                          ({"size": 4}, "size")])
def test_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticRainDataset(length=2, **kwargs)


def test_written_image_folder_loads_back(tmp_path):
    root = write_synthetic_folder(tmp_path / "imgs", kind="images", count=3, size=(24, 32), rain_types=["light"],
                                  seed=3)
    assert sorted(p.name for p in (root / "input").iterdir()) == ["0001.png", "0002.png", "0003.png"]
    ds = PairedImageFolder(root)
    frames, target = ds[0]
    assert len(ds) == 3 and frames.shape == (1, 3, 24, 32) and target.shape == (3, 24, 32)
    assert (frames[0] >= target - 1e-6).all()               # additive rain
    # a rerun with fewer items replaces the old files instead of leaving strays
    write_synthetic_folder(root, kind="images", count=2, size=(24, 32), seed=3)
    assert len(PairedImageFolder(root)) == 2


def test_written_video_folder_loads_back(tmp_path):
    root = write_synthetic_folder(tmp_path / "vid", kind="video", count=2, frames_per_clip=4, size=24, seed=1)
    assert (root / "input" / "clip_001" / "00001.png").is_file()
    assert (root / "target" / "clip_002" / "00004.png").is_file()
    ds = open_dataset(root, frames=3)
    assert isinstance(ds, VideoClipFolder) and ds.clips == ["clip_001", "clip_002"] and len(ds) == 8
    frames, target = ds[1]
    assert frames.shape == (3, 3, 24, 24) and target.shape == (3, 24, 24)
    a = write_synthetic_folder(tmp_path / "a", kind="video", count=1, frames_per_clip=2, size=16, seed=9)
    b = write_synthetic_folder(tmp_path / "b", kind="video", count=1, frames_per_clip=2, size=16, seed=9)
    for sub in ("input/clip_001/00002.png", "target/clip_001/00001.png"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    with pytest.raises(ValueError, match="kind"):
        write_synthetic_folder(tmp_path / "c", kind="gif")
