"""Real rainy video without targets: the no-reference temporal measures (static-region flicker, warping
error from the scene estimate), `evaluate` on a frame folder, and `derain --video/--report` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import io
from torch import nn

from nas_restore.build import load_trained
from nas_restore.cli import main
from nas_restore.data.folders import window_indices
from nas_restore.evaluation import evaluate_frames, is_frame_folder
from nas_restore.temporal import no_reference_temporal, static_mask
from tests._tiny_model import write_model

H, W, N = 48, 64, 8


def scene() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([0.3 + 0.2 * np.sin(xx / 4), 0.4 + 0.1 * np.cos(yy / 5), 0.5 + 0 * xx], -1).astype(np.float32)


def static_video(noise: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = scene()
    return [np.clip(base + rng.normal(0, noise, base.shape), 0, 1).astype(np.float32) if noise else base.copy()
            for _ in range(N)]


def moving_video(speed: int = 5) -> list[np.ndarray]:
    """A textured square crossing the static scene at ``speed`` px per frame: motion, no flicker."""
    texture = np.random.default_rng(3).random((12, 12, 3)).astype(np.float32)
    out = []
    for i in range(N):
        frame = scene()
        frame[10:22, 4 + speed * i: 16 + speed * i] = texture
        out.append(frame)
    return out


def rainy(frames: list[np.ndarray], seed: int = 1) -> list[np.ndarray]:
    """Thin bright streaks falling 12 px per frame (rain: everywhere transient, nowhere a moving object)."""
    rng = np.random.default_rng(seed)
    xs, ys = rng.integers(0, W, 20), rng.integers(-H, H, 20)
    out = []
    for i, f in enumerate(frames):
        g = f.copy()
        for x, y in zip(xs, ys):
            y0 = (y + 12 * i) % (2 * H) - H // 2
            g[max(0, y0): max(0, y0 + 8), x] = np.clip(g[max(0, y0): max(0, y0 + 8), x] + 0.5, 0, 1)
        out.append(g)
    return out


def mean_change(frames: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(frames[t] - frames[t - 1]).mean() for t in range(1, len(frames))]))


# --------------------------------------------------------------------------------------------------


def test_flickering_noise_scores_higher_than_the_same_scene_without():
    steady = no_reference_temporal({"input": static_video()})
    noisy = no_reference_temporal({"input": static_video(noise=0.03)})
    assert steady.flicker["input"] < 1e-6 and steady.static_share == 1.0
    assert noisy.flicker["input"] > 0.02 and noisy.static_share > 0.95      # noise is not taken for motion
    assert noisy.warp_error["input"] > 100 * max(steady.warp_error["input"], 1e-9)
    assert len(noisy.per_pair) == N - 1 and {"flicker_input", "warp_error_input"} <= set(noisy.per_pair)


@pytest.mark.parametrize("speed", [1, 5])
def test_a_moving_scene_without_flicker_scores_low_because_the_mask_excludes_motion(speed):
    frames = moving_video(speed)
    result = no_reference_temporal({"input": frames}, warp=False)
    assert mean_change(frames) > 0.01                      # unmasked, the motion would score high ...
    assert result.flicker["input"] < 0.001                 # ... the mask leaves it out
    assert 0.6 < result.static_share < 0.98                # and only it: the background stays measured
    assert np.isnan(result.warp_error["input"])
    # the two motion cues: a fast square vanishes from the 5-frame median and is caught in the raw frames
    scenes = [np.median(np.stack([frames[k] for k in window_indices(t, N, 5)]), axis=0) for t in (3, 4)]
    with_raw = static_mask(scenes[0], scenes[1], frames[3], frames[4])
    without_raw = static_mask(scenes[0], scenes[1])
    assert with_raw.sum() <= without_raw.sum()
    if speed == 5:
        assert with_raw.sum() < without_raw.sum() - 50


def test_rain_is_flicker_and_a_clean_output_scores_lower_than_the_rainy_input():
    for clean in (static_video(), moving_video()):
        result = no_reference_temporal({"input": rainy(clean), "output": clean})
        assert result.flicker["input"] > 0.01                 # the streaks were not taken for motion ...
        assert result.flicker["output"] < result.flicker["input"] / 10
        assert result.warp_error["output"] < result.warp_error["input"]
        assert result.static_share > 0.7                       # ... so most of the frame is measured


def test_evaluate_frames_without_targets_input_and_a_temporal_smoother(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(static_video(noise=0.04)):
        io.imsave(folder / f"{i + 1:05d}.png", np.round(f * 255).astype(np.uint8), check_contrast=False)
    assert is_frame_folder(folder) and not is_frame_folder(tmp_path)

    class TemporalMean(nn.Module):      # averages its window: steadier than its input, by construction
        def forward(self, x):
            return x.mean(dim=1)

    alone = evaluate_frames(folder, progress=False)
    assert alone.summary["flicker"] == alone.summary["flicker_input"] > 0.02 and alone.summary["count"] == N
    result = evaluate_frames(folder, TemporalMean(), frames=5, progress=False, save_outputs=tmp_path / "out")
    s = result.summary
    assert s["flicker_input"] == pytest.approx(alone.summary["flicker_input"])
    assert s["flicker"] < 0.6 * s["flicker_input"] and s["warp_error"] < s["warp_error_input"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in folder.iterdir())
    assert list(result.per_item["frame"]) == [f"{i:05d}" for i in range(2, N + 1)]


def test_evaluate_cli_on_a_frame_folder(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(rainy(static_video())):
        io.imsave(folder / f"f{i}.png", np.round(f * 255).astype(np.uint8), check_contrast=False)
    model = write_model(tmp_path / "run", frames=3)
    assert main(["evaluate", str(model), "--data", str(folder), "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "scores")]) == 0
    printed = capsys.readouterr().out
    assert "frames without targets" in printed and "input : static-region flicker" in printed
    assert "output: static-region flicker" in printed and "warping error" in printed
    assert (tmp_path / "scores" / "per_item.csv").is_file()
    assert main(["evaluate", "--data", str(folder), "--json", "--no-warp-error"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["flicker_input"] > 0.005 and summary["warp_error_input"] == "nan"
    assert main(["evaluate", "--data", str(folder), "--split", "fit"]) == 2
    assert "drop --split" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# derain a real rainy clip end to end: windows centred on t, an mp4, a figure, the report


def test_derain_frame_folder_with_a_video_model_mp4_figure_and_report(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = rainy(moving_video())
    folder = tmp_path / "rainy"
    folder.mkdir()
    for i, f in enumerate(frames):
        io.imsave(folder / f"{i + 1:05d}.png", np.round(f * 255).astype(np.uint8), check_contrast=False)
    model_path = write_model(tmp_path / "run", frames=3)
    out, video, side, figure, report = (tmp_path / "out", tmp_path / "clip.mp4", tmp_path / "side.mp4",
                                        tmp_path / "fig.png", tmp_path / "report.json")
    assert main(["derain", str(model_path), str(folder), "--out", str(out), "--tile", "0", "--device", "cpu",
                 "--no-progress", "--video", str(video), "--figure", str(figure), "--report", str(report),
                 "--fps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "video   :" in printed and "report  :" in printed and "static-region flicker" in printed
    # every output is the model's output on the window centred on its frame, edges replicated
    model, _ = load_trained(model_path)
    model.eval()
    stack = torch.from_numpy(np.stack([np.round(f * 255) / 255 for f in frames]).transpose(0, 3, 1, 2)).float()
    for t in (0, 3, N - 1):
        with torch.no_grad():
            expected = model(stack[window_indices(t, N, 3)].unsqueeze(0))[0].clamp(0, 1)
        written = io.imread(out / f"{t + 1:05d}.png").astype(np.float32) / 255
        assert np.abs(written - expected.permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    # the mp4: every frame, in order, near the PNGs (lossy codec)
    reader = imageio.get_reader(video, format="FFMPEG")
    decoded = np.stack([f for f in iter(reader)])  # not list(reader): its length hint is inf
    assert reader.get_meta_data()["fps"] == pytest.approx(5)
    reader.close()
    assert decoded.shape == (N, H, W, 3)
    pngs = np.stack([io.imread(out / f"{t + 1:05d}.png") for t in range(N)]).astype(float)
    grey = np.array([0.299, 0.587, 0.114])
    errors = np.abs((decoded.astype(float) @ grey)[:, None] - (pngs @ grey)[None]).mean(axis=(2, 3))
    assert list(errors.argmin(axis=1)) == list(range(N))    # frame t of the video is output t
    assert errors.diagonal().max() < 4                       # luma near the PNGs (yuv420p halves the chroma)
    assert figure.stat().st_size > 0
    rec = json.loads(report.read_text())
    assert set(rec["flicker"]) == {"input", "output"} and rec["frames"] == N and rec["pairs"] == N - 1
    assert rec["flicker"]["input"] > 0.01 and 0 < rec["static_share"] < 1
    # side by side: input | output, twice as wide
    assert main(["derain", str(model_path), str(folder), "--out", str(tmp_path / "out2"), "--no-progress",
                 "--device", "cpu", "--video", str(side), "--video-layout", "side-by-side"]) == 0
    reader = imageio.get_reader(side, format="FFMPEG")
    first = reader.get_data(0)
    reader.close()
    assert first.shape == (H, 2 * W, 3)
    left = np.abs(first[:, :W].astype(float) @ grey - np.round(frames[0] * 255) @ grey).mean()
    right = np.abs(first[:, W:].astype(float) @ grey - pngs[0] @ grey).mean()
    assert left < 4 and right < 4


def test_derain_video_and_report_errors(tmp_path, capsys):
    model_path = write_model(tmp_path / "run", frames=3)
    folder = tmp_path / "rainy"
    folder.mkdir()
    for i, f in enumerate(static_video()[:3]):
        io.imsave(folder / f"{i}.png", np.round(f * 255).astype(np.uint8), check_contrast=False)
    assert main(["derain", str(model_path), str(folder / "0.png"), "--out", str(tmp_path / "o"),
                 "--report", str(tmp_path / "r.json")]) == 2
    assert "work on a folder of frames" in capsys.readouterr().err
    assert main(["derain", str(model_path), str(folder), "--out", str(tmp_path / "o"), "--video",
                 str(tmp_path / "clip.avi")]) == 2
    err = capsys.readouterr().err
    assert "must end in .mp4" in err or "imageio-ffmpeg" in err
    assert not (tmp_path / "o").exists()                   # refused before anything was derained
    assert main(["derain", str(model_path), str(folder), "--out", str(tmp_path / "o"), "--video",
                 str(folder / "clip.mp4")]) == 2
    assert "input folder" in capsys.readouterr().err
