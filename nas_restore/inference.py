"""Deraining users' files with a retrained model: images, folders of images or frames, video files.

Large frames are processed in overlapping tiles (:func:`tiled_forward`) so that memory stays bounded by
the tile size, not the frame size. Tiles are blended with weights that are zero in a ``overlap // 4``
margin along every inner tile edge and ramp linearly to one across the rest of the overlap: a network
whose receptive field reaches at most that margin gives exactly the untiled output; a larger one gets
seams feathered over the overlap.

Video (a folder of frames or a video file) runs a sliding window of the model's T frames over the frames
in order, edge frames replicated (centre 0 of 5 -> frames 0, 0, 0, 1, 2), as in TMICS's test code.
Outputs keep the input's file names (and, for a video file, its frame rate). A derained frame folder can
also be written as an mp4 (:func:`video_of_result`: the output, or input | output side by side) and
measured without targets (:func:`temporal_report`: static-region flicker and warping error of the input
and the output, :func:`nas_restore.temporal.no_reference_temporal`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nas_restore.build import check_frames, input_frames, load_trained
from nas_restore.config import ConfigError
from nas_restore.data.folders import IMAGE_SUFFIXES, DataError, image_size, list_images, load_image, window_indices
from nas_restore.device import resolve_device
from nas_restore.precision import resolve_precision
from nas_restore.temporal import SCENE_WINDOW, no_reference_temporal

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
FFMPEG_MISSING = ("reading or writing video files needs imageio-ffmpeg: pip install imageio-ffmpeg (or "
                  "pip install 'nas-restore[video]'), or extract the frames to a folder (e.g. ffmpeg -i {path} "
                  "frames/%05d.png) and pass that folder")


# --------------------------------------------------------------------------------------------------
# tiles


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(length: int, inner_before: bool, inner_after: bool, overlap: int, device, dtype) -> Tensor:
    """1-D blend weights of a tile: 0 within ``overlap // 4`` of an inner edge, then a ramp to 1."""
    margin = overlap // 4
    span = max(overlap - 2 * margin, 1)
    d = torch.arange(length, device=device, dtype=dtype)
    w = torch.ones(length, device=device, dtype=dtype)
    if inner_before:
        w = torch.minimum(w, ((d - margin + 0.5) / span).clamp(0, 1))
    if inner_after:
        w = torch.minimum(w, ((length - 1 - d - margin + 0.5) / span).clamp(0, 1))
    return w


def tiled_forward(model: Callable[[Tensor], Tensor], window: Tensor, tile: int | None = 256,
                  overlap: int = 16) -> Tensor:
    """Run ``model`` on ``window`` [B, T, 3, H, W] tile by tile; returns [B, 3, H, W].

    ``tile=None`` (or a frame no larger than a tile) runs the whole frame at once.
    """
    if window.ndim != 5:
        raise ValueError(f"tiled_forward expects frames [B, T, 3, H, W], got {tuple(window.shape)}")
    h, w = window.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return model(window)
    check_tiles(tile, overlap)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    out = weight = None
    for y in ys:
        for x in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = model(window[..., y:y + th, x:x + tw])
            if out is None:
                out = piece.new_zeros((piece.shape[0], piece.shape[1], h, w))
                weight = piece.new_zeros((1, 1, h, w))
            wy = _ramp(th, y > 0, y + th < h, overlap, piece.device, piece.dtype)
            wx = _ramp(tw, x > 0, x + tw < w, overlap, piece.device, piece.dtype)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y:y + th, x:x + tw] += piece * wt
            weight[..., y:y + th, x:x + tw] += wt
    return out / weight


def check_tiles(tile: int | None, overlap: int) -> None:
    """A :class:`ConfigError` for a tile size or overlap that cannot work (``tile=None``: whole frames)."""
    if tile is None:
        return
    if tile < 8:
        raise ConfigError(f"tile must be at least 8 px (or 0/None for whole frames), got {tile}: raise --tile")
    if not 0 <= overlap <= tile // 2:
        raise ConfigError(f"tile overlap must be in [0, tile/2] = [0, {tile // 2}], got {overlap}: "
                          "change --tile-overlap")


class TiledModel(nn.Module):
    """A model wrapped so that every call is tiled (for ``evaluate_folder`` and friends)."""

    def __init__(self, model: nn.Module, tile: int | None = 256, overlap: int = 16):
        super().__init__()
        check_tiles(tile, overlap)
        self.model, self.tile, self.overlap = model, tile, overlap

    def forward(self, window: Tensor) -> Tensor:
        return tiled_forward(self.model, window, self.tile, self.overlap)


# --------------------------------------------------------------------------------------------------
# windows


def sliding_windows(frames: Iterable[np.ndarray], t: int) -> Iterator[list[np.ndarray]]:
    """Windows of ``t`` frames centred on each frame of a stream, edges replicated (as
    :func:`~nas_restore.data.folders.window_indices`); holds only ``t`` frames in memory."""
    r = t // 2
    it = iter(frames)
    ahead: deque[np.ndarray] = deque()   # the centre and up to r real frames after it
    past: deque[np.ndarray] = deque(maxlen=r)
    for frame in it:
        ahead.append(frame)
        if len(ahead) == r + 1:
            break
    while ahead:
        centre = ahead[0]
        before = list(past)
        before = [before[0] if before else centre] * (r - len(before)) + before
        after = list(ahead)[1:]
        after = after + [after[-1] if after else centre] * (r - len(after))
        yield before + [centre] + after
        past.append(ahead.popleft())
        nxt = next(it, None)
        if nxt is not None:
            ahead.append(nxt)


# --------------------------------------------------------------------------------------------------
# files


def _to_uint8(img: Tensor) -> np.ndarray:
    arr = img.detach().to("cpu", torch.float32).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(arr * 255).astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> None:
    from skimage import io

    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, img, check_contrast=False)


def _ffmpeg() -> None:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError as err:
        raise DataError(FFMPEG_MISSING.format(path="VIDEO")) from err


@dataclass
class DerainResult:
    """What ``derain`` wrote: output files in input order, and the inputs they came from."""

    outputs: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    mode: str = ""


class Derainer:
    """A loaded model plus the settings to run it on files (``model.pt`` from ``retrain``)."""

    def __init__(self, model: nn.Module, frames: int, device: str | torch.device = "cpu", tile: int | None = 256,
                 overlap: int = 16, progress: bool = True, precision: str = "fp32"):
        check_tiles(tile, overlap)
        frames = check_frames(frames, flag="frames")
        self.device = resolve_device(str(device))
        self.precision = resolve_precision(precision, self.device)
        self.model = self.precision.wrap(model.to(self.device).eval())
        self.frames, self.tile, self.overlap, self.progress = int(frames), tile, overlap, progress

    @classmethod
    def from_checkpoint(cls, path: str | Path, frames: int | None = None, flag: str = "--frames",
                        **kwargs) -> "Derainer":
        """The model of a ``model.pt``; ``frames`` (the user's ``flag``) must be the model's own, if given:
        a network's input frames are fixed by its weights, so any other count is refused before it runs."""
        check_frames(frames, flag=flag)  # an impossible count fails before the file is read
        model, genotype = load_trained(path)
        return cls(model, check_frames(frames, input_frames(genotype), flag=flag), **kwargs)

    def as_module(self) -> nn.Module:
        """The model as one module that tiles every call (when ``tile`` is set), e.g. for ``evaluate_folder``."""
        return TiledModel(self.model, self.tile, self.overlap) if self.tile else self.model

    @torch.no_grad()
    def run_window(self, window: list[np.ndarray]) -> np.ndarray:
        """T frames HxWx3 float in [0, 1] -> the derained centre frame as HxWx3 uint8."""
        x = torch.from_numpy(np.ascontiguousarray(np.stack(window).transpose(0, 3, 1, 2), dtype=np.float32))
        out = tiled_forward(self.model, x.unsqueeze(0).to(self.device), self.tile, self.overlap)
        return _to_uint8(out[0])

    def images(self, paths: list[Path], out_dir: Path) -> DerainResult:
        """Independent images (each repeated T times for a multi-frame model)."""
        result = DerainResult(mode="images")
        for path in tqdm(paths, desc="derain", unit="image", disable=not self.progress):
            img = load_image(path)
            target = out_dir / path.name
            _save(self.run_window([img] * self.frames), target)
            result.outputs.append(target)
            result.inputs.append(path)
        return result

    def frame_stream(self, frames: Iterable[np.ndarray], total: int | None,
                     write: Callable[[int, np.ndarray], None]) -> int:
        n = 0
        for n, window in enumerate(tqdm(sliding_windows(frames, self.frames), total=total, desc="derain",
                                        unit="frame", disable=not self.progress), 1):
            write(n - 1, self.run_window(window))
        return n

    def frame_folder(self, paths: list[Path], out_dir: Path) -> DerainResult:
        """A folder of video frames, in natural name order; outputs keep the names."""
        result = DerainResult(mode="frames", inputs=list(paths))

        def write(i: int, img: np.ndarray) -> None:
            target = out_dir / paths[i].name
            _save(img, target)
            result.outputs.append(target)

        self.frame_stream((load_image(p) for p in paths), len(paths), write)
        return result

    def video_file(self, path: Path, out_dir: Path) -> DerainResult:
        """A video file through imageio + imageio-ffmpeg; writes ``out_dir/<name>`` at the same frame rate."""
        _ffmpeg()
        import imageio.v2 as imageio

        reader = imageio.get_reader(path, format="FFMPEG")
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or 25.0)
        total = reader.count_frames() if hasattr(reader, "count_frames") else None
        target = out_dir / (path.stem + ".mp4")
        out_dir.mkdir(parents=True, exist_ok=True)
        writer = imageio.get_writer(target, format="FFMPEG", fps=fps, codec="libx264", quality=9,
                                    macro_block_size=1, pixelformat="yuv444p")
        try:
            frames = (np.asarray(f)[..., :3].astype(np.float32) / 255.0 for f in reader)
            self.frame_stream(frames, total, lambda i, img: writer.append_data(img))
        finally:
            writer.close()
            reader.close()
        return DerainResult(outputs=[target], inputs=[path], mode="video")

    def run(self, source: str | Path, out_dir: str | Path, mode: str = "auto") -> DerainResult:
        """Derain ``source`` (image, folder, or video file) into ``out_dir``.

        mode for a folder: "images" (independent stills), "frames" (a video's frames), or "auto": frames
        when the model takes several frames and every image has one size, images otherwise.
        """
        source, out_dir = Path(source), Path(out_dir)
        if mode not in ("auto", "images", "frames"):
            raise ConfigError(f"derain mode must be auto, images or frames, got {mode!r}")
        if not source.exists():
            raise DataError(f"derain input not found: {source}; give an image, a folder of images or frames, or a "
                            "video file")
        if source.resolve() == out_dir.resolve():
            raise DataError(f"--out {out_dir} is the input folder: give another folder so inputs are not overwritten")
        if source.is_file():
            suffix = source.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                try:
                    return self.video_file(source, out_dir)
                except DataError as err:
                    raise DataError(FFMPEG_MISSING.format(path=source)) from err
            if suffix in IMAGE_SUFFIXES:
                return self.images([source], out_dir)
            raise DataError(f"{source}: not an image ({sorted(IMAGE_SUFFIXES)}) or a video "
                            f"({sorted(VIDEO_SUFFIXES)}) file: give one of those, or a folder of images")
        paths = list_images(source)
        if not paths:
            raise DataError(f"no images in {source} (looked for {sorted(IMAGE_SUFFIXES)}); for a video pass the file")
        if mode == "auto":
            same_size = len({image_size(p) for p in paths}) == 1
            mode = "frames" if self.frames > 1 and same_size else "images"
        if mode == "frames":
            sizes = {image_size(p) for p in paths}
            if len(sizes) > 1:
                raise DataError(f"{source}: frames of one video must share a size, found {sorted(sizes)[:4]}; "
                                f"use mode images for unrelated stills")
            return self.frame_folder(paths, out_dir)
        return self.images(paths, out_dir)


def before_after_figure(pairs: list[tuple[Path | np.ndarray, Path | np.ndarray]], path: str | Path,
                        titles: tuple[str, str] = ("rainy input", "derained"), labels: list[str] | None = None,
                        width: float = 10.0) -> Path:
    """A grid figure, one row per frame: rainy | derained, side by side at full resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pairs:
        raise ValueError("before_after_figure needs at least one (rainy, derained) pair")
    imgs = [[load_image(x) if isinstance(x, (str, Path)) else x for x in pair] for pair in pairs]
    h, w = imgs[0][0].shape[:2]
    fig, axes = plt.subplots(len(imgs), 2, figsize=(width, width / 2 * h / w * len(imgs) + 0.4), squeeze=False)
    for r, (before, after) in enumerate(imgs):
        for c, img in enumerate((before, after)):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
        if labels:
            axes[r][0].set_ylabel(labels[r])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure_of_result(result: DerainResult, path: str | Path, count: int = 3) -> Path:
    """``count`` evenly spaced (input, output) pairs of a frame/image run as a before/after figure."""
    if result.mode == "video":
        raise ConfigError("a figure needs image outputs: derain a folder of frames (or images), not a video file")
    n = len(result.outputs)
    picks = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    return before_after_figure([(result.inputs[i], result.outputs[i]) for i in picks], path,
                               labels=[result.inputs[i].name for i in picks])


def real_rain_figure(derainer: "Derainer", folder: str | Path, path: str | Path, count: int = 3,
                     indices: list[int] | None = None, label: str | None = None) -> Path:
    """Before/after figure of ``count`` evenly spaced frames of a rainy frame folder (no targets needed,
    e.g. NTURain's real clips), each derained from its own sliding window; only those frames are run."""
    paths = list_images(Path(folder))
    if not paths:
        raise DataError(f"no frames in {folder}")
    n = len(paths)
    if indices is None:
        margin = min(derainer.frames // 2, (n - 1) // 2)
        lo, hi = margin, n - 1 - margin
        indices = sorted({round(lo + i * (hi - lo) / max(count - 1, 1)) for i in range(min(count, n))})
    pairs = []
    for i in tqdm(indices, desc="figure", unit="frame", disable=not derainer.progress):
        window = [load_image(paths[k]) for k in window_indices(i, n, derainer.frames)]
        pairs.append((window[derainer.frames // 2], derainer.run_window(window)))
    names = [f"{label + ' ' if label else ''}{paths[i].name}" for i in indices]
    return before_after_figure(pairs, path, labels=names)


VIDEO_LAYOUTS = ("output", "side-by-side")


def check_video_file(path: str | Path, fps: float = 10.0) -> Path:
    """A clear error now, before any frame is derained, for an mp4 that could not be written later: no
    imageio-ffmpeg, a name not ending in .mp4, an impossible frame rate."""
    _ffmpeg()
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ConfigError(f"the video file {path} must end in .mp4: name it e.g. {path.with_suffix('.mp4')}")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise ConfigError(f"fps must be a number of frames per second in (0, 1000], got {fps!r}: change --fps")
    return path


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write uint8 H x W x 3 frames as an H.264 mp4 (yuv420p, which every player shows; an odd height or
    width is padded by one replicated row or column). Needs imageio-ffmpeg."""
    path = check_video_file(path, fps)
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(path, format="FFMPEG", fps=float(fps), codec="libx264", quality=8,
                                macro_block_size=1, pixelformat="yuv420p")
    count = 0
    try:
        for frame in frames:
            frame = np.asarray(frame)
            pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
            writer.append_data(np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame)
            count += 1
    finally:
        writer.close()
    if count == 0:
        path.unlink(missing_ok=True)
        raise DataError(f"no frames to write to {path}")
    return path


def _as_uint8(path: Path) -> np.ndarray:
    return np.round(load_image(path) * 255).astype(np.uint8)


def video_of_result(result: DerainResult, path: str | Path, fps: float = 10.0, layout: str = "output") -> Path:
    """The derained frames of a frame-folder run as an mp4 in frame order; ``layout="side-by-side"``: the
    rainy input on the left, the derained output on the right."""
    if layout not in VIDEO_LAYOUTS:
        raise ConfigError(f"video layout must be one of {', '.join(VIDEO_LAYOUTS)}, got {layout!r}")
    if result.mode != "frames":
        raise ConfigError("an mp4 of the outputs needs a video's frames: derain a folder of frames (a video file "
                          "already gives an mp4 in --out; a folder of unrelated stills is not a video)")
    if layout == "output":
        frames = (_as_uint8(p) for p in result.outputs)
    else:
        frames = (np.concatenate([_as_uint8(a), _as_uint8(b)], axis=1)
                  for a, b in zip(result.inputs, result.outputs))
    return write_mp4(frames, path, fps)


def temporal_report(result: DerainResult, window: int = SCENE_WINDOW, warp: bool = True) -> dict:
    """No-reference temporal measures of a frame-folder run, for the rainy input and the derained output
    (see :func:`nas_restore.temporal.no_reference_temporal`): ``flicker`` and ``warp_error`` per video, the
    share of static pixels, the number of frame pairs and the measures' descriptions."""
    if result.mode != "frames":
        raise ConfigError("the temporal report needs a video's frames: derain a folder of frames")
    measured = no_reference_temporal({"input": result.inputs, "output": result.outputs}, reference="input",
                                     window=window, warp=warp, names=[p.name for p in result.inputs])
    return {**measured.summary(), "frames": len(result.inputs)}


__all__ = ["write_mp4", "check_video_file", "video_of_result", "temporal_report", "VIDEO_LAYOUTS", "real_rain_figure",
           "tiled_forward", "check_tiles", "TiledModel", "sliding_windows", "Derainer", "DerainResult",
           "before_after_figure", "figure_of_result", "VIDEO_SUFFIXES"]
