"""`nas-restore synth`: paired rainy/clean clips from a clean video, on tiny generated footage.

The footage is a textured square moving over a textured background, with one hard cut (another
background, another square moving another way) at frame CUT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from nas_restore.cli import main
from nas_restore.data.folders import open_dataset
from nas_restore.data.video_synth import SynthConfig, detect_cuts, plan_clips, synth
from nas_restore.errors import UserError

N, CUT, H, W = 20, 10, 48, 80


def make_frames(n: int = N, cut: int = CUT, h: int = H, w: int = W) -> np.ndarray:
    """uint8 [n, h, w, 3]: scene A before ``cut``, scene B from it on."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(7)
    texture = rng.random((16, 16, 3))
    out = []
    for i in range(n):
        if i < cut:  # scene A: warm stripes, square moving right
            bg = np.stack([0.30 + 0.10 * np.sin(xx / 5), 0.25 + 0.05 * np.cos(yy / 7), 0.20 + 0 * xx], -1)
            y0, x0 = 10, 4 + 3 * i
        else:  # scene B: cool checks, square moving down
            checks = ((yy // 8 + xx // 8) % 2)
            bg = np.stack([0.15 + 0 * xx, 0.20 + 0.10 * checks, 0.45 - 0.10 * checks], -1)
            y0, x0 = 2 + 2 * (i - cut), 40
        frame = bg.copy()
        frame[y0: y0 + 16, x0: x0 + 16] = 0.2 + 0.3 * texture
        out.append(np.round(frame * 255).astype(np.uint8))
    return np.stack(out)


def write_frame_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        io.imsave(folder / f"frame_{i:03d}.png", f, check_contrast=False)
    return folder


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[Path, np.ndarray]:
    frames = make_frames()
    return write_frame_folder(tmp_path_factory.mktemp("src") / "frames", frames), frames


def read_clip(folder: Path) -> np.ndarray:
    return np.stack([io.imread(p) for p in sorted(folder.glob("*.png"))])


def rain_layer(out: Path, clip: str) -> np.ndarray:
    """Mean over RGB of input - target, per frame: the rain the clip's frames got."""
    rainy = read_clip(out / "input" / clip).astype(np.float64)
    clean = read_clip(out / "target" / clip).astype(np.float64)
    return (rainy - clean).mean(axis=3) / 255.0


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------


def test_clips_never_span_the_cut_and_targets_are_the_source_frames(footage, tmp_path):
    src, frames = footage
    result = synth(src, tmp_path / "out", SynthConfig(rain=["light", "heavy"], frames=4, stride=2, seed=1))
    rec = json.loads((tmp_path / "out" / "synth.json").read_text())
    source = rec["sources"][0]
    assert source["cuts"] == [CUT]
    assert source["frames"] == N and rec["complete"] is True
    assert source["shots"] == [[0, CUT], [CUT, N]]
    ranges = [(c["start"], c["stop"]) for c in rec["clips"]]
    # stride 2 inside each shot: 0,2,4,6 | 10,12,14,16; a plan that ignored the cut would start one at 8
    assert ranges == [(s, s + 4) for s in (0, 2, 4, 6, 10, 12, 14, 16)]
    assert all(stop <= CUT or start >= CUT for start, stop in ranges)
    assert [c["rain"] for c in rec["clips"]] == ["light", "heavy"] * 4
    assert rec["seed"] == 1 and rec["settings"]["frames"] == 4 and rec["settings"]["stride"] == 2
    assert result.clips == rec["clips"]
    for c in rec["clips"]:
        target = read_clip(tmp_path / "out" / "target" / c["name"])
        rainy = read_clip(tmp_path / "out" / "input" / c["name"])
        assert target.shape == (4, H, W, 3)
        np.testing.assert_array_equal(target, frames[c["start"]: c["stop"]])  # the source frames, unchanged
        assert np.abs(rainy.astype(int) - target).mean() > 0.5               # rain on every clip
        assert all((rainy[t] != target[t]).any() for t in range(4))          # ... and on every frame


def best_shift(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int], float, float]:
    """The integer shift (dy, dx) that best maps layer ``a`` onto layer ``b`` (normalised cross-correlation
    over the overlap), its score, and the score of no shift."""
    scores = {}
    for sy in range(-4, 56):
        for sx in range(-30, 31):
            pa = a[max(0, -sy): a.shape[0] - max(0, sy), max(0, -sx): a.shape[1] - max(0, sx)]
            pb = b[max(0, sy): b.shape[0] + min(0, sy), max(0, sx): b.shape[1] + min(0, sx)]
            scores[sy, sx] = float((pa * pb).sum() / np.sqrt((pa * pa).sum() * (pb * pb).sum() + 1e-12))
    best = max(scores, key=scores.get)
    return best, scores[best], scores[0, 0]


@pytest.mark.parametrize("wind, seed", [(0.0, 3), (2.0, 7)])
def test_rain_moves_between_frames_along_the_fall_direction(tmp_path, wind, seed):
    frames = make_frames(n=6, cut=99, h=96, w=128)
    src = write_frame_folder(tmp_path / "frames", frames)
    rec = synth(src, tmp_path / "out", SynthConfig(rain=["light"], frames=6, seed=seed, wind=wind)).record
    clip = rec["clips"][0]
    layers = rain_layer(tmp_path / "out", clip["name"])
    assert layers.min() > -0.01                               # additive rain: the layer is rain only
    speed = clip["speed"]
    assert speed > 20 and (wind == 0) == (clip["wind"] == 0) and (wind == 0 or abs(clip["wind"]) > 1.2)
    for t in range(len(layers) - 1):
        a, b = layers[t], layers[t + 1]
        assert np.abs(a - b).mean() > 0.003                   # the rain is not the same from frame to frame
        (sy, sx), score, at_zero = best_shift(a, b)
        # the fall direction half-way between the frames (the wind turns it by clip["wind"] degrees a frame)
        direction = np.deg2rad(clip["angle"] + clip["wind"] * (t + 0.5))
        along = np.array([np.cos(direction), np.sin(direction)])
        error = np.array([sy, sx]) - speed * along
        # the persistent streaks moved `speed` px along the fall direction: exactly across it (streaks are
        # ~1 px wide), within a few px along it (they are ~30 px long, so the match is broad that way); a
        # shift that ignored the wind would be off across by speed * sin(wind * (t + 0.5)), 3.8 px at t = 4
        assert abs(error @ np.array([-along[1], along[0]])) <= 1.0, (t, (sy, sx), speed * along)
        assert abs(error @ along) <= 3.5, (t, (sy, sx), speed * along)
        assert score > 0.6 > at_zero + 0.2                    # most streaks persist, shifted; few stay put
        assert score < 0.99                                   # ... and some are new in every frame


def test_same_seed_same_bytes_other_seed_other_rain(footage, tmp_path):
    src, _ = footage
    settings = dict(rain=["light", "accumulation"], frames=3, stride=5, seed=11)
    synth(src, tmp_path / "a", SynthConfig(**settings))
    synth(src, tmp_path / "b", SynthConfig(**settings))
    synth(src, tmp_path / "c", SynthConfig(**{**settings, "seed": 12}))
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert set(a) == set(c)
    assert all(a[k] == c[k] for k in a if k.startswith("target/"))
    assert all(a[k] != c[k] for k in a if k.startswith("input/"))


def test_size_crops_the_centre_or_resizes(footage, tmp_path):
    src, frames = footage
    rec = synth(src, tmp_path / "crop", SynthConfig(size=[48, 64], frames=3, max_clips=2)).record
    assert rec["size"] == [48, 64] and len(rec["clips"]) == 2
    first = rec["clips"][0]
    np.testing.assert_array_equal(read_clip(tmp_path / "crop" / "target" / first["name"]),
                                  frames[first["start"]: first["stop"], :, 8:72])
    rec = synth(src, tmp_path / "half", SynthConfig(size=[24, 40], frames=3, max_clips=1)).record
    clip = rec["clips"][0]
    target = read_clip(tmp_path / "half" / "target" / clip["name"]).astype(float)
    assert target.shape == (3, 24, 40, 3)
    source = frames[clip["start"]: clip["stop"]].astype(float)
    halved = source.reshape(3, 24, 2, 40, 2, 3).mean(axis=(2, 4))
    assert np.abs(target - halved).mean() < 6                # a 2x downscale of the source


def test_folders_open_as_video_clips(footage, tmp_path):
    src, _ = footage
    synth(src, tmp_path / "out", SynthConfig(rain=["heavy"], frames=5))
    data = open_dataset(tmp_path / "out", frames=3)
    assert len(data.clips) == 4 and len(data) == 20
    x, y = data[2]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 3, H, W) and y.shape == (3, H, W)
    assert not torch.equal(x[1], y)


def test_cut_detector_and_plan():
    rng = np.random.default_rng(0)
    steady = 0.01 + 0.004 * rng.random(60)
    signal = steady.copy()
    signal[0], signal[25] = 0.0, 0.30
    assert detect_cuts(signal) == [25]
    assert detect_cuts(steady * 5) == []                     # fast steady motion is not a cut
    assert detect_cuts(signal, min_jump=0.5) == []
    plan = plan_clips(60, [25], frames=10, stride=10)
    assert [(a, b) for a, b, _ in plan] == [(0, 10), (10, 20), (25, 35), (35, 45), (45, 55)]
    assert len(plan_clips(60, [25], frames=10, stride=1, max_clips=3)) == 3


def test_video_file_gif(footage, tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    _, frames = footage
    path = tmp_path / "clean.gif"
    imageio.mimsave(path, list(frames), duration=0.04, loop=0)
    rec = synth(path, tmp_path / "out", SynthConfig(frames=5)).record
    source = rec["sources"][0]
    assert source["kind"] == "video" and source["frames"] == N and source["cuts"] == [CUT]
    assert [c["name"] for c in rec["clips"]] == [f"clean_{s:06d}" for s in (0, 5, 10, 15)]


def test_video_file_mp4(footage, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    _, frames = footage
    path = tmp_path / "clean.mp4"
    writer = imageio.get_writer(path, format="FFMPEG", fps=10, codec="libx264", quality=9, macro_block_size=1,
                                pixelformat="yuv444p")
    for f in frames:
        writer.append_data(f)
    writer.close()
    rec = synth(path, tmp_path / "out", SynthConfig(frames=5, rain=["slanted"])).record
    source = rec["sources"][0]
    assert source["frames"] == N and source["cuts"] == [CUT] and source["fps"] == pytest.approx(10)
    target = read_clip(tmp_path / "out" / "target" / rec["clips"][0]["name"])
    assert np.abs(target.astype(int) - frames[:5]).mean() < 4  # lossy codec, near the source


def test_repeated_frames_are_dropped_so_clips_move_in_every_frame(tmp_path):
    frames = make_frames()
    padded = np.repeat(frames, 3, axis=0)                    # a decoder's padding: every frame three times
    src = write_frame_folder(tmp_path / "padded", padded)
    rec = synth(src, tmp_path / "out", SynthConfig(frames=5)).record
    source = rec["sources"][0]
    assert source["frames"] == 3 * N and len(source["repeated_frames"]) == 2 * N
    assert source["cuts"] == [3 * CUT]                       # in source frame numbers
    first = rec["clips"][0]
    assert first["source_frames"] == [0, 3, 6, 9, 12] and (first["start"], first["stop"]) == (0, 13)
    target = read_clip(tmp_path / "out" / "target" / first["name"])
    np.testing.assert_array_equal(target, frames[:5])
    assert all((target[t] != target[t + 1]).any() for t in range(4))
    kept = synth(src, tmp_path / "kept", SynthConfig(frames=5, drop_repeats=False)).record
    assert kept["sources"][0]["repeated_frames"] == [] and kept["sources"][0]["cuts"] == [3 * CUT]
    assert kept["clips"][0]["source_frames"] == [0, 1, 2, 3, 4]


def test_rerun_replaces_and_foreign_data_is_refused(footage, tmp_path):
    src, _ = footage
    out = tmp_path / "out"
    synth(src, out, SynthConfig(frames=5))
    synth(src, out, SynthConfig(frames=10))                   # other clips: the old ones go
    assert sorted(p.name for p in (out / "input").iterdir()) == ["frames_000000", "frames_000010"]
    (tmp_path / "other" / "input" / "mine").mkdir(parents=True)
    with pytest.raises(UserError, match="did not write"):
        synth(src, tmp_path / "other", SynthConfig())


@pytest.mark.parametrize("case, pattern", [
    ("missing", "not found"), ("unreadable", "cannot read video|imageio-ffmpeg"), ("empty", "no frames"),
    ("short", "fewer than --frames 30"), ("same", "is the input folder"), ("text", "not a video file"),
])
def test_bad_input_is_a_user_error_naming_the_fix(footage, tmp_path, case, pattern):
    src, _ = footage
    source, out, config = src, tmp_path / "out", SynthConfig()
    if case == "missing":
        source = tmp_path / "nope.mp4"
    elif case == "unreadable":
        source = tmp_path / "broken.gif"
        source.write_bytes(b"GIF89a not really")
    elif case == "empty":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "short":
        config = SynthConfig(frames=30)
    elif case == "same":
        out = src
    else:
        source = tmp_path / "notes.txt"
        source.write_text("hello")
    with pytest.raises(UserError, match=pattern):
        synth(source, out, config)
    assert not (out / "synth.json").exists()


def test_unknown_rain_type_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown rain type 'drizzle'.*heavy, light"):
        SynthConfig(rain=["light", "drizzle"])


def test_cli(footage, tmp_path, capsys):
    src, _ = footage
    out = tmp_path / "out"
    code = main(["synth", str(src), "--rain", "light,heavy", "--size", "32x48", "--frames", "3", "--stride", "4",
                 "--max-clips", "3", "--seed", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 3 clip(s) of 3 frames (32x48" in printed and "1 scene cut(s) at 10" in printed
    rec = json.loads((out / "synth.json").read_text())
    assert rec["seed"] == 5 and rec["size"] == [32, 48] and len(rec["clips"]) == 3
    assert all(stop <= CUT or start >= CUT for start, stop in ((c["start"], c["stop"]) for c in rec["clips"]))

    code = main(["synth", str(src), "--rain", "light,drizzle", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: unknown rain type 'drizzle'")
    assert "accumulation, heavy, light, slanted" in err[0]
    assert not (tmp_path / "bad").exists()

    assert main(["synth", str(src), "--size", "big", "--out", str(tmp_path / "bad")]) == 2
    assert "--size expects HxW" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# held-out clips: several videos, SPLITS.txt by contiguous time blocks


def other_footage(n: int = 16, h: int = H, w: int = W) -> np.ndarray:
    """A second video, unlike the first: a bright disc moving diagonally over a gradient, no cut."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for i in range(n):
        frame = np.stack([0.2 + 0.5 * xx / w, 0.6 - 0.3 * yy / h, 0.3 + 0 * xx], -1)
        disc = (yy - 8 - 2 * i) ** 2 + (xx - 10 - 3 * i) ** 2 < 36
        frame[disc] = [0.9, 0.85, 0.7]
        out.append(np.round(frame * 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("videos")
    return (write_frame_folder(root / "street2", make_frames()),   # a digit in the stem: dropped from the names
            write_frame_folder(root / "garden", other_footage()))


def test_holdout_shares_no_source_frame_across_stride_overlaps(two_videos, tmp_path):
    from nas_restore.data.folders import VideoClipFolder, read_splits

    out = tmp_path / "out"
    config = SynthConfig(rain=["light", "heavy"], frames=4, stride=1, holdout=0.3, seed=2)
    result = synth(list(two_videos), out, config)
    rec = json.loads((out / "synth.json").read_text())
    assert rec["holdout"]["fraction"] == 0.3 and rec["holdout"]["gap"] == 4 and len(rec["sources"]) == 2
    splits = read_splits(out)
    assert set(splits) == {"fit", "holdout"}
    by_id = {c["id"]: c for c in rec["clips"]}
    assert sorted(splits["fit"] + splits["holdout"]) == sorted(by_id)      # every clip is on one side
    assert not set(splits["fit"]) & set(splits["holdout"])
    for index, source in enumerate(rec["sources"]):
        sides = {side: [by_id[i] for i in splits[side] if by_id[i]["source"] == index] for side in splits}
        assert sides["fit"] and sides["holdout"], index                     # both videos on both sides
        fit = {f for c in sides["fit"] for f in c["source_frames"]}
        held = {f for c in sides["holdout"] for f in c["source_frames"]}
        assert not fit & held
        # contiguous blocks with a gap of at least the clip length (stride 1 overlaps every clip)
        assert min(held) - max(fit) - 1 >= config.frames
        n = source["frames"]
        assert source["holdout_frames"] == [n - round(0.3 * n), n] and min(held) == n - round(0.3 * n)
        assert max(fit) < source["fit_frames"][1] <= min(held) - config.frames
    # the names carry one number, the id (the stem's digit is dropped), and the files agree with the record
    assert all(c["name"] == f"{'street' if c['source'] == 0 else 'garden'}_{c['id']:06d}" for c in rec["clips"])
    assert all(c["id"] == 1_000_000 * c["source"] + c["start"] for c in rec["clips"])
    assert result.splits["fit"] == [by_id[i]["name"] for i in splits["fit"]]
    # by content too: no clean frame written on the fit side is written on the holdout side
    written = {side: {(out / "target" / by_id[i]["name"] / f).read_bytes() for i in splits[side]
                      for f in ("00001.png", "00002.png", "00003.png", "00004.png")} for side in splits}
    assert written["fit"] and written["holdout"] and not written["fit"] & written["holdout"]
    # the clip folders open by split, in SPLITS.txt's order
    for side in splits:
        data = VideoClipFolder(out, frames=3, split=side)
        assert data.clips == [by_id[i]["name"] for i in splits[side]]
        assert len(data) == 4 * len(splits[side])


def test_training_and_search_refuse_the_holdout_clips(two_videos, tmp_path, capsys):
    from nas_restore.data.folders import DataError
    from nas_restore.datasets import DataConfig, train_val_datasets

    out = tmp_path / "out"
    synth(list(two_videos), out, SynthConfig(frames=3, holdout=0.25, max_clips=4))
    with pytest.raises(DataError, match="refusing to train on the split 'holdout'"):
        train_val_datasets(DataConfig(folder=str(out), split="holdout", patch_size=16), 3, 0)
    with pytest.raises(DataError, match="defines the split"):
        train_val_datasets(DataConfig(folder=str(out), patch_size=16), 3, 0)   # the whole folder holds holdout
    train, val = train_val_datasets(DataConfig(folder=str(out), split="fit", patch_size=16), 3, 0)
    held = {c["name"] for c in json.loads((out / "synth.json").read_text())["clips"] if c["split"] == "holdout"}
    assert held and not {train.dataset.index[i][0] for i in train.indices} & held
    for command in (["search", "--space", "tmics", "--strategy", "darts", "--preset", "demo", "--epochs", "1"],
                    ["retrain", "rescnn", "--epochs", "1"]):
        code = main([*command, "--data", str(out), "--split", "holdout", "--out", str(tmp_path / command[0]),
                     "--no-progress"])
        assert code == 2 and "refusing to train on the split 'holdout'" in capsys.readouterr().err


def test_holdout_rerun_without_it_removes_the_splits_and_bad_settings_are_refused(two_videos, tmp_path):
    out = tmp_path / "out"
    synth(two_videos[0], out, SynthConfig(frames=3, holdout=0.3))
    assert (out / "SPLITS.txt").is_file()
    rec = synth(two_videos[0], out, SynthConfig(frames=3)).record
    assert not (out / "SPLITS.txt").exists() and rec["holdout"] is None and "split" not in rec["clips"][0]
    with pytest.raises(UserError, match="at least the clip length"):
        SynthConfig(frames=5, holdout=0.2, holdout_gap=3)
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        SynthConfig(holdout=1.0)
    with pytest.raises(UserError, match="needs holdout"):
        SynthConfig(holdout_gap=9)
    with pytest.raises(UserError, match="no holdout clip|no fit clip"):   # 20 frames: 10 % = 2 < a 5-frame clip
        synth(two_videos[0], tmp_path / "short", SynthConfig(frames=5, holdout=0.1, detect_cuts=False))
    with pytest.raises(UserError, match="given twice"):
        synth([two_videos[0], two_videos[0]], tmp_path / "twice", SynthConfig(frames=3))
    with pytest.raises(UserError, match="different frame sizes.*--size"):
        small = write_frame_folder(tmp_path / "small", make_frames(h=40, w=80))
        synth([two_videos[0], small], tmp_path / "sizes", SynthConfig(frames=3))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "SPLITS.txt").write_text("fit: 1\n")
    with pytest.raises(UserError, match="not written by synth"):
        synth(two_videos[0], tmp_path / "foreign", SynthConfig(frames=3))


def test_cli_holdout_several_videos(two_videos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["synth", *map(str, two_videos), "--frames", "3", "--stride", "2", "--holdout", "0.25",
                 "--holdout-gap", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("  source  :") == 2 and "holdout frames 15-19" in printed
    assert "no source frame on both sides" in printed and "--split fit" in printed
    assert json.loads((out / "synth.json").read_text())["holdout"]["gap"] == 4
    assert main(["synth", str(two_videos[0]), "--frames", "5", "--holdout-gap", "5", "--out", str(tmp_path / "b")]) == 2
    assert "needs holdout" in capsys.readouterr().err
