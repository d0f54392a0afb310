"""`derain`: tiled inference equals whole-frame inference, names/sizes/order are kept, video needs ffmpeg."""
import importlib.util

import numpy as np
import pytest
import torch
from skimage import io
from torch import nn

from nas_restore.cli import main
from nas_restore.data.folders import DataError, window_indices
from nas_restore.inference import Derainer, TiledModel, real_rain_figure, sliding_windows, tiled_forward
from tests._tiny_model import write_model


class ConvNet(nn.Module):
    """Two 3x3 convs over the stacked frames (receptive-field radius 2) plus the centre frame."""

    def __init__(self, frames: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3 * frames, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x[:, x.shape[1] // 2] + self.body(x.flatten(1, 2))


class FrameIndex(nn.Module):
    """Outputs the mean of the window as a flat image: lets a test read back which frames were given."""

    def forward(self, x):
        return x.mean(dim=1)


@pytest.mark.parametrize("size", [(37, 50), (16, 64), (64, 16)])
def test_tiled_output_equals_untiled(size):
    x = torch.rand(1, 3, 3, *size, generator=torch.Generator().manual_seed(1))
    net = ConvNet()
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_forward(net, x, tile=16, overlap=8)   # margin 2 = the receptive-field radius
        assert torch.allclose(tiled, whole, atol=1e-6)
        assert torch.allclose(TiledModel(net, 24, 8)(x), whole, atol=1e-6)
        # a too-small margin leaves seams: the blend is what makes it exact, not luck
        assert not torch.allclose(tiled_forward(net, x, tile=16, overlap=2), whole, atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(net, x, tile=16, overlap=8 + 8)


def test_sliding_windows_replicate_edges_like_the_data_sets():
    for n in (1, 2, 5):
        for t in (1, 3, 5):
            assert list(sliding_windows(iter(range(n)), t)) == [window_indices(i, n, t) for i in range(n)]


def _write_frames(folder, n=5, size=(20, 28)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"frame_{i}.png" for i in (1, 2, 10, 11, 3)][:n]   # natural order: 1, 2, 3, 10, 11
    for i, name in enumerate(names):
        io.imsave(folder / name, (rng.random((*size, 3)) * 255).astype(np.uint8), check_contrast=False)
    return names


def test_derain_frame_folder_keeps_names_sizes_and_order(tmp_path):
    names = _write_frames(tmp_path / "frames")
    derainer = Derainer(FrameIndex(), frames=3, tile=None, progress=False)
    result = derainer.run(tmp_path / "frames", tmp_path / "out")
    assert result.mode == "frames"
    order = ["frame_1.png", "frame_2.png", "frame_3.png", "frame_10.png", "frame_11.png"]
    assert [p.name for p in result.outputs] == order == [p.name for p in result.inputs]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    frames = [io.imread(tmp_path / "frames" / n).astype(np.float64) for n in order]
    for i, name in enumerate(order):
        out = io.imread(tmp_path / "out" / name)
        assert out.shape == frames[i].shape
        expected = np.mean([frames[k] for k in window_indices(i, 5, 3)], axis=0)  # the window, in frame order
        assert np.abs(out - expected).max() <= 1.0


def test_derain_cli_on_an_image_a_folder_and_a_figure(tmp_path):
    model = write_model(tmp_path / "run")
    _write_frames(tmp_path / "frames", n=4, size=(24, 40))
    stills = tmp_path / "stills"
    stills.mkdir()
    io.imsave(stills / "a.png", np.zeros((30, 20, 3), np.uint8), check_contrast=False)
    io.imsave(stills / "b.jpg", np.full((18, 26, 3), 200, np.uint8), check_contrast=False)
    assert main(["derain", str(model), str(stills), "--out", str(tmp_path / "o1"), "--no-progress",
                 "--tile", "16", "--tile-overlap", "4"]) == 0
    assert io.imread(tmp_path / "o1" / "a.png").shape == (30, 20, 3)
    assert io.imread(tmp_path / "o1" / "b.jpg").shape == (18, 26, 3)
    assert main(["derain", str(model), str(stills / "a.png"), "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    assert (tmp_path / "o2" / "a.png").is_file()
    fig = tmp_path / "fig.png"
    assert main(["derain", str(model), str(tmp_path / "frames"), "--out", str(tmp_path / "o3"), "--no-progress",
                 "--figure", str(fig), "--figure-frames", "2"]) == 0
    assert len(list((tmp_path / "o3").iterdir())) == 4 and fig.stat().st_size > 0
    derainer = Derainer.from_checkpoint(model, progress=False, tile=None)
    assert real_rain_figure(derainer, tmp_path / "frames", tmp_path / "fig2.png", count=2).is_file()


def test_derain_errors_are_clear(tmp_path, capsys):
    model = write_model(tmp_path / "run")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        assert main(["derain", str(model), str(video), "--out", str(tmp_path / "o")]) == 2
        assert "pip install imageio-ffmpeg" in capsys.readouterr().err
    assert main(["derain", str(model), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(DataError, match="is the input folder"):
        Derainer(FrameIndex(), 1, progress=False).run(tmp_path, tmp_path)
