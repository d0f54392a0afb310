"""Folder data sets: layouts, pairing, splits, windows, crops, and a clear DataError for each bad case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from nas_restore.data.folders import (DataError, FrameSequence, PairedImageFolder, VideoClipFolder, find_pair_dirs,
                                      load_image, open_dataset, window_indices)


def _save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, img, check_contrast=False)
    return path


def _rgb(h: int = 20, w: int = 24, value: int | None = None, seed: int = 0) -> np.ndarray:
    if value is not None:
        return np.full((h, w, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pairs(root: Path, names, dirs=("input", "target"), size=(20, 24)) -> Path:
    for k, name in enumerate(names):
        img = _rgb(*size, seed=k)
        _save(root / dirs[0] / name, img)
        _save(root / dirs[1] / name, img // 2)
    return root


def _clip(root: Path, clip: str, n: int, size=(16, 20), target: bool = True) -> None:
    """Frame k of the clip is a gradient pattern plus 10*k, so frames are told apart by their mean."""
    base = (np.arange(size[0] * size[1]).reshape(size) % 50).astype(np.uint8)
    for k in range(n):
        img = np.stack([base + 10 * k] * 3, axis=2).astype(np.uint8)
        _save(root / "input" / clip / f"{k + 1}.png", img)
        if target:
            _save(root / "target" / clip / f"{k + 1}.png", img)


# ---------------------------------------------------------------------------------------------- load_image


def test_load_image_converts_grey_rgba_and_16_bit(tmp_path):
    grey = load_image(_save(tmp_path / "g.png", np.full((5, 6), 255, np.uint8)))
    assert grey.shape == (5, 6, 3) and grey.dtype == np.float32 and np.allclose(grey, 1.0)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 128, 255
    img = load_image(_save(tmp_path / "a.png", rgba))
    assert img.shape == (4, 4, 3) and np.allclose(img[..., 0], 128 / 255)
    deep = load_image(_save(tmp_path / "d.png", np.full((4, 4), 32768, np.uint16)))
    assert deep.shape == (4, 4, 3) and np.allclose(deep, 32768 / 65535)


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png"):
        load_image(bad)
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- layouts


def test_find_pair_dirs_accepts_both_conventions(tmp_path):
    _pairs(tmp_path / "a", ["1.png"])
    _pairs(tmp_path / "b", ["1.png"], dirs=("rainy", "clean"))
    assert [p.name for p in find_pair_dirs(tmp_path / "a")] == ["input", "target"]
    assert [p.name for p in find_pair_dirs(tmp_path / "b")] == ["rainy", "clean"]


def test_find_pair_dirs_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        find_pair_dirs(tmp_path / "nowhere")
    (tmp_path / "half" / "input").mkdir(parents=True)
    with pytest.raises(DataError, match="no target/"):
        find_pair_dirs(tmp_path / "half")
    (tmp_path / "other" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="images/"):
        find_pair_dirs(tmp_path / "other")


def test_paired_folder_items(tmp_path):
    root = _pairs(tmp_path, ["10.png", "2.png", "1.png"])
    ds = PairedImageFolder(root)
    assert ds.names == ["1", "2", "10"]                      # natural order
    assert ds.pair_paths(2) == (root / "input" / "10.png", root / "target" / "10.png")
    frames, target = ds[0]
    assert frames.shape == (1, 3, 20, 24) and target.shape == (3, 20, 24) and frames.dtype == torch.float32
    expected = io.imread(root / "input" / "1.png").transpose(2, 0, 1) / 255.0
    assert np.allclose(frames[0].numpy(), expected)
    repeated, _ = PairedImageFolder(root, frames=3)[0]
    assert repeated.shape == (3, 3, 20, 24) and torch.equal(repeated[0], repeated[2])


def test_patch_crops_and_flips_are_shared_by_input_and_target(tmp_path):
    root = _pairs(tmp_path, ["1.png"], size=(30, 40))
    fixed = PairedImageFolder(root, patch_size=12, seed=4)
    a, b = fixed[0], fixed[0]
    assert a[0].shape == (1, 3, 12, 12) and torch.equal(a[0], b[0])   # no augment: deterministic
    aug = PairedImageFolder(root, patch_size=12, augment=True)
    crops = set()
    for _ in range(12):
        frames, target = aug[0]
        # target was written as input // 2, so the same crop and flip keep this relation exactly
        assert torch.allclose(torch.floor(frames[0] * 255 / 2 + 1e-3) / 255, target, atol=1e-6)
        crops.add(frames.numpy().tobytes())
    assert len(crops) > 3
    with pytest.raises(DataError, match="patch_size=64"):
        PairedImageFolder(root, patch_size=64)[0]


def test_rain_norain_names_pair(tmp_path):
    _save(tmp_path / "rainy" / "rain-001.png", _rgb())
    _save(tmp_path / "rainy" / "rain-002.png", _rgb())
    _save(tmp_path / "clean" / "norain-001.png", _rgb())
    _save(tmp_path / "clean" / "norain-002.png", _rgb())
    ds = PairedImageFolder(tmp_path)
    assert ds.names == ["001", "002"]
    assert ds.pair_paths(1)[1].name == "norain-002.png"


def test_unpaired_names_are_listed(tmp_path):
    root = _pairs(tmp_path, ["1.png", "2.png"])
    _save(root / "input" / "orphan.png", _rgb())
    with pytest.raises(DataError, match="orphan.png"):
        PairedImageFolder(root)


def test_size_mismatch_names_both_files(tmp_path):
    _save(tmp_path / "input" / "a.png", _rgb(20, 24))
    _save(tmp_path / "target" / "a.png", _rgb(20, 25))
    with pytest.raises(DataError, match=r"input/a\.png.*target/a\.png"):
        PairedImageFolder(tmp_path)


def test_unreadable_image_in_folder(tmp_path):
    root = _pairs(tmp_path, ["1.png"])
    (root / "input" / "2.png").write_bytes(b"\x89PNG garbage")
    _save(root / "target" / "2.png", _rgb())
    with pytest.raises(DataError, match="2.png"):
        PairedImageFolder(root)


def test_empty_folder(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "target").mkdir()
    with pytest.raises(DataError, match="no images in"):
        PairedImageFolder(tmp_path)


def test_splits_and_names(tmp_path):
    root = _pairs(tmp_path, [f"{i}.png" for i in range(1, 6)])
    with pytest.raises(DataError, match="SPLITS.txt"):
        PairedImageFolder(root, split="fit")
    (root / "SPLITS.txt").write_text("# comment\nfit: 1 2 4\nholdout: 3 5\nbroken: 7\n")
    assert PairedImageFolder(root, split="fit").names == ["1", "2", "4"]
    assert PairedImageFolder(root, split="holdout").names == ["3", "5"]
    with pytest.raises(DataError, match="'test'"):
        PairedImageFolder(root, split="test")
    with pytest.raises(DataError, match="7"):
        PairedImageFolder(root, split="broken")
    assert PairedImageFolder(root, names=["5", "1"]).names == ["5", "1"]
    with pytest.raises(DataError, match="nine"):
        PairedImageFolder(root, names=["nine"])


# ---------------------------------------------------------------------------------------------- video


def test_window_indices_replicate_edges():
    assert window_indices(0, 10, 5) == [0, 0, 0, 1, 2]
    assert window_indices(9, 10, 5) == [7, 8, 9, 9, 9]
    assert window_indices(4, 10, 3) == [3, 4, 5]
    assert window_indices(0, 1, 1) == [0]


def test_video_clip_windows(tmp_path):
    _clip(tmp_path, "b", 12)
    _clip(tmp_path, "a", 5)
    ds = VideoClipFolder(tmp_path, frames=5)
    assert ds.clips == ["a", "b"] and len(ds) == 17
    assert ds.index[:2] == [("a", 0), ("a", 1)] and ds.index[5] == ("b", 0)
    frames, target = ds[0]
    offsets = [round(float((f - frames[0]).mean()) * 255) for f in frames]
    assert offsets == [0, 0, 0, 10, 20]                     # frames [0, 0, 0, 1, 2]
    assert torch.equal(target, frames[2])
    frames, _ = ds[ds.index.index(("b", 11))]                 # natural order: 12.png is the last frame
    assert [round(float(f.mean() - frames[0].mean()) * 255) for f in frames] == [0, 10, 20, 20, 20]
    assert ds.names[5] == "b/1" and ds.pair_paths(5)[0].name == "1.png"


def test_video_crop_and_flip_shared_across_window(tmp_path):
    _clip(tmp_path, "c", 6, size=(24, 30))
    ds = VideoClipFolder(tmp_path, frames=3, patch_size=8, augment=True)
    for i in range(6):
        frames, target = ds[i]
        assert frames.shape == (3, 3, 8, 8)
        diffs = frames - frames[1]
        assert torch.allclose(diffs, diffs.mean(dim=(1, 2, 3), keepdim=True), atol=1e-6)  # same crop everywhere
        assert torch.equal(target, frames[1])


def test_video_errors_name_the_clip(tmp_path):
    _clip(tmp_path / "short", "tiny", 2)
    with pytest.raises(DataError, match="'tiny'.*2 frame"):
        VideoClipFolder(tmp_path / "short", frames=5)
    assert len(VideoClipFolder(tmp_path / "short", frames=1)) == 2
    _clip(tmp_path / "notarget", "lonely", 5, target=False)
    (tmp_path / "notarget" / "target").mkdir()
    with pytest.raises(DataError, match="lonely"):
        VideoClipFolder(tmp_path / "notarget", frames=3)
    _clip(tmp_path / "renamed", "r", 3)
    (tmp_path / "renamed" / "target" / "r" / "3.png").rename(tmp_path / "renamed" / "target" / "r" / "x.png")
    with pytest.raises(DataError, match="3.png"):
        VideoClipFolder(tmp_path / "renamed", frames=3)


def test_frame_sequence_without_targets(tmp_path):
    for k in range(1, 5):
        _save(tmp_path / "seq" / f"{k:05d}.jpg", _rgb(12, 16, value=20 * k))
    seq = FrameSequence(tmp_path / "seq", frames=3)
    assert len(seq) == 4 and seq.names[0] == "00001"
    window = seq[0]
    assert window.shape == (3, 3, 12, 16)
    assert torch.equal(window[0], window[1]) and not torch.equal(window[1], window[2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        FrameSequence(tmp_path / "empty")


def test_open_dataset_detects_layout(tmp_path):
    _pairs(tmp_path / "imgs", ["1.png", "2.png"])
    _clip(tmp_path / "vid", "c", 3)
    assert isinstance(open_dataset(tmp_path / "imgs"), PairedImageFolder)
    video = open_dataset(tmp_path / "vid", frames=3)
    assert isinstance(video, VideoClipFolder) and len(video) == 3
    with pytest.raises(DataError, match="split"):
        open_dataset(tmp_path / "vid", frames=3, split="fit")
    with pytest.raises(ValueError, match="odd"):
        open_dataset(tmp_path / "imgs", frames=2)


def test_paired_folder_decodes_each_file_once_within_its_memory_bound(tmp_path, monkeypatch):
    from nas_restore.data import folders

    root = _pairs(tmp_path, ["1.png", "2.png", "3.png"])
    decoded = []
    real = folders.load_image
    monkeypatch.setattr(folders, "load_image", lambda path: decoded.append(Path(path).name) or real(path))
    ds = PairedImageFolder(root, patch_size=8, augment=True)
    first = [ds[i] for i in range(3)]
    again = [ds[i] for i in range(3)]  # a second epoch: fresh crops, no decoding
    assert len(decoded) == 6 and any(not torch.equal(a[1], b[1]) for a, b in zip(first, again))
    one_pair = 2 * 20 * 24 * 3 * 4  # bytes of one decoded float32 pair
    monkeypatch.setattr(folders, "IMAGE_CACHE_BYTES", one_pair)
    small = PairedImageFolder(root)
    decoded.clear()
    small[0], small[1], small[0]
    assert len(decoded) == 6 and small._cache.bytes <= one_pair  # pair 0 was evicted by pair 1
