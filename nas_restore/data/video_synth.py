"""Paired rainy/clean video clips from the user's own clean footage (``nas-restore synth``).

One or more clean video files (mp4, avi, ... through imageio + imageio-ffmpeg; an animated GIF through
pillow) or folders of frames become the clip layout that :class:`~nas_restore.data.folders.VideoClipFolder`
reads::

    DIR/input/<clip>/00001.png ...    rainy frames
    DIR/target/<clip>/00001.png ...   the clean source frames (resized and centre-cropped to --size)
    DIR/synth.json                    the sources, their frame counts and cuts, each clip's source range and rain
    DIR/SPLITS.txt                    with --holdout: "fit: ids" and "holdout: ids" (clip ids: the number in a name)

A clip is named ``<source stem without digits>_<id>`` with ``id = source index x ID_BLOCK + first source
frame``: one number per name, unique in the folder, which is what ``SPLITS.txt`` selects clips by.

Held-out clips (``holdout = f``): per source video, the last ``round(f * n)`` of its n used frames are the
holdout part, the ``holdout_gap`` frames before them (at least the clip length) are used by no clip, and
fit clips come from the rest. Splitting by contiguous time blocks, not by clip, is what keeps every source
frame on one side whatever the ``stride`` (overlapping clips share frames) and keeps near-duplicate
neighbouring frames apart; training and search refuse the ``holdout`` split
(:func:`nas_restore.datasets.check_training_split`).

The rain is the model of :mod:`nas_restore.data.synthetic` (its presets, its streak renderer and its
clip rain): per clip a persistent population of streaks falls ``speed`` px per frame along the rain
direction, a share ``fresh`` of the density is drawn anew in every frame, the wind turns the fall
direction by ``wind`` degrees per frame (drawn per clip in ``[-wind, +wind]``; the persistent streaks
follow the curved path), and ``haze`` veils the frame towards the atmospheric light.

Scene cuts: every frame is reduced to a grey thumbnail (block means, about 32 px on its short side) and
``d[i]`` is the mean absolute difference between thumbnails ``i - 1`` and ``i``. Frame ``i`` starts a new
shot when ``d[i]`` exceeds both ``min_cut`` and ``median + cut_k * MAD`` of the ``d`` of its neighbours
(:data:`CUT_WINDOW` on each side; MAD scaled to a normal s.d., floored at :data:`MAD_FLOOR`), so steady
motion raises the bar and a single jump stands out. Clips start at every ``stride`` frames inside a shot
and never span a cut. A frame that repeats the last used one (:data:`REPEAT_EPS`: decoders pad a
variable-frame-rate video with copies, e.g. ffmpeg turns ``tree.avi``'s 68 frames into 449) is dropped
first, so that the scene moves in every frame of a clip; ``synth.json`` lists the dropped frames.

Each source is read twice (once for the cuts, once to write the clips), so memory stays at a few frames
whatever the video's length. Everything is a function of the settings and ``seed``: a clip's rain
depends on the seed and its id (source and first source frame) only.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas_restore.config import ConfigError
from nas_restore.data.folders import IMAGE_SUFFIXES, SPLITS_FILE, DataError, image_size, list_images, load_image
from nas_restore.data.synthetic import (FRESH_FRACTION, RAIN_PRESETS, RainParams, _RainSequence, _seed_words,
                                        _to_uint8, _vary, composite)
from nas_restore.errors import UnknownNameError

log = logging.getLogger(__name__)

SYNTH_FILE = "synth.json"
FORMAT = "nas-restore synth 2"
#: a clip's id (the one number in its name, what SPLITS.txt lists) is source index x ID_BLOCK + its first frame
ID_BLOCK = 1_000_000
SPLIT_NAMES = ("fit", "holdout")
#: video files read through imageio-ffmpeg; GIF is read through pillow (no ffmpeg needed)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
GIF_SUFFIXES = frozenset({".gif"})
#: neighbours on each side whose frame differences make a frame's cut threshold
CUT_WINDOW = 15
#: least robust spread (grey levels in [0, 1]) of the frame differences, so that a still video is not all cuts
MAD_FLOOR = 0.002
THUMB_SIDE = 32
#: a frame whose thumbnail differs from the last used one by at most this (mean, grey levels in [0, 1]) is a
#: repeat (decoders pad a variable-frame-rate video with copies) and is dropped: clips move in every frame
REPEAT_EPS = 1e-4
MAX_SIDE = 8192
_SALT = 0x5717  # keeps synth's rain apart from the other writers' of the same seed
_FRAME_NAME = re.compile(r"^\d{5,}\.png$")
FFMPEG_MISSING = ("reading video files needs imageio-ffmpeg: pip install imageio-ffmpeg (or pip install "
                  "'nas-restore[video]'), or extract the frames to a folder (ffmpeg -i {path} frames/%05d.png) "
                  "and pass that folder")


# --------------------------------------------------------------------------------------------------
# settings


@dataclass
class SynthConfig:
    """What ``synth`` makes. rain: preset names, assigned to the clips in turn; size: [H, W] of the output
    (source resized to cover it, then centre-cropped; None: the source size); frames: frames per clip;
    stride: frames between clip starts (None: ``frames``, clips that share no frame); max_clips: at most
    this many clips, spread evenly over the video; wind: largest turn of the fall direction, degrees per
    frame; speed / haze: override the presets' fall speed (px per frame) and veil; fresh: share of the
    streaks new in every frame; vary: +-20 % density, brightness and length per clip; cut_k, min_cut,
    detect_cuts: the cut detector (see the module docstring); drop_repeats: skip frames that repeat the
    previous one (:data:`REPEAT_EPS`); holdout: share of each source's frames, at its end, held out (fit and
    holdout clips, ``SPLITS.txt``; None: no split); holdout_gap: frames between the two parts used by no clip
    (None: ``frames``; at least ``frames``). ``max_clips`` counts per source."""

    rain: list[str] = field(default_factory=lambda: ["light"])
    size: list[int] | None = None
    frames: int = 5
    stride: int | None = None
    max_clips: int | None = None
    seed: int = 0
    wind: float = 1.0
    speed: float | None = None
    haze: float | None = None
    fresh: float = FRESH_FRACTION
    vary: bool = True
    cut_k: float = 6.0
    min_cut: float = 0.04
    detect_cuts: bool = True
    drop_repeats: bool = True
    holdout: float | None = None
    holdout_gap: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rain, str):
            self.rain = [r.strip() for r in self.rain.split(",") if r.strip()]
        self.rain = list(self.rain)
        if not self.rain:
            raise ConfigError(f"rain must name at least one rain type, e.g. light,heavy; known: "
                              f"{', '.join(sorted(RAIN_PRESETS))}")
        for name in self.rain:
            if name not in RAIN_PRESETS:
                raise UnknownNameError("rain type", name, RAIN_PRESETS, extra=" Give --rain a comma-separated list "
                                       "of these, e.g. --rain light,heavy")
        if self.size is not None:
            if len(self.size) != 2 or any(int(v) < 8 or int(v) > MAX_SIDE for v in self.size):
                raise ConfigError(f"size must be [height, width] in pixels, each 8..{MAX_SIDE}, got {self.size!r}")
            self.size = [int(v) for v in self.size]
        checks = [("frames", self.frames, 1, 10_000), ("stride", self.stride, 1, 1_000_000),
                  ("max_clips", self.max_clips, 1, 10_000_000), ("wind", self.wind, 0.0, 30.0),
                  ("speed", self.speed, 0.0, 1000.0), ("haze", self.haze, 0.0, 0.95), ("fresh", self.fresh, 0.0, 1.0),
                  ("cut_k", self.cut_k, 0.0, 1000.0), ("min_cut", self.min_cut, 0.0, 1.0),
                  ("holdout", self.holdout, 0.0, 1.0), ("holdout_gap", self.holdout_gap, 0, 1_000_000)]
        for name, value, lo, hi in checks:
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if value is not None and not (number and lo <= value <= hi):
                raise ConfigError(f"{name} must be between {lo} and {hi}, got {value!r}")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout is the share of each video's frames held out, strictly between 0 and 1 "
                              f"(e.g. --holdout 0.25), got {self.holdout!r}")
        if self.holdout_gap is not None:
            if self.holdout is None:
                raise ConfigError("holdout_gap (--holdout-gap) needs holdout (--holdout FRACTION): give both")
            if self.holdout_gap < self.frames:
                raise ConfigError(f"holdout_gap must be at least the clip length (--frames {self.frames}), got "
                                  f"{self.holdout_gap}: neighbouring frames show nearly the same content")

    @property
    def clip_stride(self) -> int:
        return int(self.stride or self.frames)

    @property
    def gap(self) -> int:
        """Frames left out between a video's fit and holdout parts (at least the clip length)."""
        return int(self.holdout_gap if self.holdout_gap is not None else self.frames)


def parse_size(text: str) -> list[int]:
    """``"240x320"`` (height x width) -> ``[240, 320]``; anything else is a ConfigError saying the form."""
    try:
        h, w = (int(v) for v in text.lower().replace(" ", "").split("x"))
    except ValueError:
        raise ConfigError(f"--size expects HxW, height x width in pixels (e.g. 240x320), got {text!r}") from None
    if not (8 <= h <= MAX_SIDE and 8 <= w <= MAX_SIDE):
        raise ConfigError(f"--size {text}: height and width must be {8}..{MAX_SIDE} pixels")
    return [h, w]


# --------------------------------------------------------------------------------------------------
# the source: a video file or a folder of frames


def _to_float(frame: Any) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=2)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float32) / float(np.iinfo(arr.dtype).max))
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


class FrameSource:
    """The frames of a video file or a frame folder, in order, as float32 HxWx3 in [0, 1]; each call of
    :meth:`frames` reads them anew from the start."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"synth input not found: {self.path}; give a clean video file (mp4, avi, ...) or a "
                            f"folder of its frames")
        self.fps: float | None = None
        if self.path.is_dir():
            self.kind = "frames"
            self.files = list_images(self.path)
            if not self.files:
                hint = " (it holds subfolders: give one folder of frames)" if any(p.is_dir() for p in
                                                                                   self.path.iterdir()) else ""
                raise DataError(f"no frames in {self.path}{hint}: put the video's frames there as images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}), or give the video file")
            size = image_size(self.files[0])
            for p in self.files[1:]:
                if image_size(p) != size:
                    raise DataError(f"size mismatch in {self.path}: {p.name} is {image_size(p)} but "
                                    f"{self.files[0].name} is {size} (height, width); the frames of a video "
                                    f"have one size: resize or remove the odd ones")
            return
        suffix = self.path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            self.kind = "video"
            try:
                import imageio_ffmpeg  # noqa: F401  (optional: the [video] extra)
            except ImportError as err:
                raise DataError(FFMPEG_MISSING.format(path=self.path)) from err
        elif suffix in GIF_SUFFIXES:
            self.kind = "video"
        else:
            raise DataError(f"{self.path} is not a video file ({', '.join(sorted(VIDEO_SUFFIXES | GIF_SUFFIXES))}) "
                            f"or a folder of frames: give one of those")

    def _unreadable(self, err: Exception) -> DataError:
        return DataError(f"cannot read video {self.path} ({type(err).__name__}: {err}); the file is damaged or "
                         f"not a video: re-encode it (ffmpeg -i {self.path} -c:v libx264 clean.mp4) or extract its "
                         f"frames to a folder (ffmpeg -i {self.path} frames/%05d.png) and pass that folder")

    def frames(self) -> Iterator[np.ndarray]:
        if self.kind == "frames":
            for p in self.files:
                yield load_image(p)
            return
        import imageio.v2 as imageio

        try:
            fmt = {"format": "FFMPEG"} if self.path.suffix.lower() in VIDEO_SUFFIXES else {}
            reader = imageio.get_reader(self.path, **fmt)
        except Exception as err:  # imageio and ffmpeg raise many types for a bad file
            raise self._unreadable(err) from err
        try:
            try:
                fps = reader.get_meta_data().get("fps")
                self.fps = float(fps) if fps else None
            except Exception:  # noqa: BLE001  (the frame rate is only recorded)
                self.fps = None
            it = iter(reader)
            while True:
                try:
                    frame = next(it)
                except StopIteration:
                    return
                except Exception as err:  # noqa: BLE001
                    raise self._unreadable(err) from err
                yield _to_float(frame)
        finally:
            reader.close()


# --------------------------------------------------------------------------------------------------
# scene cuts


def thumbnail(frame: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Grey (BT.601) block means of ``frame``, about ``side`` px on its short side (float32)."""
    grey = frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114
    h, w = grey.shape
    f = max(1, min(h, w) // side)
    hh, ww = (h // f) * f, (w // f) * f
    return grey[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3)).astype(np.float32)


def cut_signal(thumbs: list[np.ndarray]) -> np.ndarray:
    """``d[i]``: mean absolute difference of thumbnails ``i - 1`` and ``i`` (``d[0] = 0``)."""
    d = np.zeros(len(thumbs), dtype=np.float64)
    for i in range(1, len(thumbs)):
        d[i] = float(np.abs(thumbs[i] - thumbs[i - 1]).mean())
    return d


def detect_cuts(signal: np.ndarray, k: float = 6.0, min_jump: float = 0.04, window: int = CUT_WINDOW) -> list[int]:
    """Frames that start a new shot: ``signal[i] > max(min_jump, median + k * MAD)`` of its neighbours."""
    d = np.asarray(signal, dtype=np.float64)
    cuts = []
    for i in range(1, len(d)):
        near = np.concatenate([d[max(1, i - window): i], d[i + 1: i + 1 + window]])
        if len(near) >= 4:
            med = float(np.median(near))
            mad = max(1.4826 * float(np.median(np.abs(near - med))), MAD_FLOOR)
            bar = max(min_jump, med + k * mad)
        else:
            bar = min_jump
        if d[i] > bar:
            cuts.append(i)
    return cuts


def plan_clips(n_frames: int, cuts: list[int], frames: int, stride: int,
               max_clips: int | None = None) -> list[tuple[int, int, int]]:
    """``(start, stop, shot)`` of each clip (source frames ``start..stop-1``), none across a cut."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < n_frames), n_frames]
    plan = []
    for shot, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        plan += [(s, s + frames, shot) for s in range(a, b - frames + 1, stride)]
    if max_clips is not None and len(plan) > max_clips:
        keep = np.unique(np.round(np.linspace(0, len(plan) - 1, max_clips)).astype(int))
        plan = [plan[i] for i in keep]
    return plan


# --------------------------------------------------------------------------------------------------
# frames


def fit_frame(frame: np.ndarray, size: list[int] | tuple[int, int] | None) -> np.ndarray:
    """Resize ``frame`` to cover ``size = (H, W)`` (keeping its aspect) and crop the centre; None: unchanged."""
    if size is None:
        return frame
    from skimage.transform import resize

    h, w = frame.shape[:2]
    th, tw = int(size[0]), int(size[1])
    scale = max(th / h, tw / w)
    if not math.isclose(scale, 1.0):
        rh, rw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
        frame = resize(frame, (rh, rw), order=1, anti_aliasing=scale < 1, preserve_range=True,
                       mode="reflect").astype(np.float32)
    h, w = frame.shape[:2]
    y0, x0 = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(frame[y0: y0 + th, x0: x0 + tw])


def _clip_name(stem: str, clip_id: int) -> str:
    """``<stem>_<id>``, the stem without digits: the id is then the one number of the name, which is what
    ``SPLITS.txt`` selects clips by (:mod:`nas_restore.data.folders`)."""
    clean = re.sub(r"[^A-Za-z_-]+", "_", re.sub(r"\d+", "", stem)).strip("_-") or "clip"
    return f"{clean}_{clip_id:06d}"


def split_plan(n_frames: int, cuts: list[int], frames: int, stride: int, holdout: float | None, gap: int,
               max_clips: int | None = None) -> tuple[list[tuple[int, int, int, str | None]], tuple[int, int] | None]:
    """``(start, stop, shot, side)`` of each clip of one video (positions among its used frames), and the
    ``(fit_stop, holdout_start)`` boundary when ``holdout`` is given (else None).

    With ``holdout = f`` the last ``round(f * n)`` frames are the holdout part and the ``gap`` frames
    before them are left out: fit clips lie in ``[0, fit_stop)``, holdout clips in ``[holdout_start, n)``,
    so no frame (and no stretch of ``gap`` neighbouring frames) is on both sides, whatever the stride.
    Clips start every ``stride`` frames from the start of each shot and of each part; ``max_clips``
    spreads the clips kept evenly over the video, both parts together.
    """
    real = sorted(c for c in set(cuts) if 0 < c < n_frames)
    boundary = None
    extra: list[int] = []
    if holdout is not None:
        held = min(n_frames, max(1, int(round(holdout * n_frames))))
        holdout_start = n_frames - held
        fit_stop = max(0, holdout_start - gap)
        boundary = (fit_stop, holdout_start)
        extra = [fit_stop, holdout_start]
    plan = []
    for a, b, _ in plan_clips(n_frames, real + extra, frames, stride):
        side = None
        if boundary is not None:
            side = "fit" if b <= boundary[0] else "holdout" if a >= boundary[1] else None
            if side is None:
                continue  # in the gap
        plan.append((a, b, bisect.bisect_right(real, a), side))
    if max_clips is not None and len(plan) > max_clips:
        keep = np.unique(np.round(np.linspace(0, len(plan) - 1, max_clips)).astype(int))
        plan = [plan[i] for i in keep]
    return plan, boundary


# --------------------------------------------------------------------------------------------------
# the output folder


def _check_out(source: Path, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: give a folder (new or empty, or one that synth wrote before)")
    src, dst = source.resolve(), out.resolve()
    if src == dst:
        raise DataError(f"--out {out} is the input folder: give another folder, so that the source frames stay "
                        f"apart from the clips (e.g. --out {out.parent / (out.name + '_rain')})")
    for sub in ("input", "target"):
        if src == dst / sub or (dst / sub) in src.parents:
            raise DataError(f"the input {source} lies inside --out {out}/{sub}/, which synth rewrites: give "
                            f"another --out")


def _clear_previous(out: Path) -> None:
    """Remove the clips an earlier ``synth`` wrote in ``out`` (its frame files only); refuse other data."""
    record = out / SYNTH_FILE
    if record.is_file():
        try:
            old = json.loads(record.read_text())
            names = [c["name"] for c in old.get("clips", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{record} is not a synth record ({err}): remove it, or give another --out") from err
        for name in names:
            for sub in ("input", "target"):
                folder = out / sub / Path(str(name)).name
                if folder.is_dir():
                    for f in folder.iterdir():
                        if f.is_file() and _FRAME_NAME.match(f.name):
                            f.unlink()
                    if not any(folder.iterdir()):
                        folder.rmdir()
        if old.get("holdout") and (out / SPLITS_FILE).is_file():
            (out / SPLITS_FILE).unlink()
    for sub in ("input", "target"):
        folder = out / sub
        if folder.is_dir() and any(folder.iterdir()):
            raise DataError(f"{folder} already holds data that this synth did not write: give --out a new or "
                            f"empty folder (or remove {folder})")
    if (out / SPLITS_FILE).is_file():
        raise DataError(f"{out / SPLITS_FILE} was not written by synth: give --out a new or empty folder (or remove "
                        f"that file)")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# synth


@dataclass
class SynthResult:
    """What ``synth`` wrote: the folder, its record (the content of ``synth.json``) and that file."""

    out: Path
    record: dict[str, Any]
    record_path: Path

    @property
    def clips(self) -> list[dict[str, Any]]:
        return self.record["clips"]

    @property
    def sources(self) -> list[dict[str, Any]]:
        return self.record["sources"]

    @property
    def splits(self) -> dict[str, list[str]]:
        """Clip names per split (``fit``, ``holdout``); empty without ``--holdout``."""
        if not self.record.get("holdout"):
            return {}
        return {side: [c["name"] for c in self.clips if c["split"] == side] for side in SPLIT_NAMES}


def _clip_rain(config: SynthConfig, kind: str, clip_id: int, size: tuple[int, int]) -> tuple[RainParams,
                                                                                             _RainSequence, float]:
    rng = np.random.default_rng(_seed_words(config.seed, clip_id) + [_SALT])
    params = RAIN_PRESETS[kind]
    if config.speed is not None:
        params = replace(params, speed=float(config.speed))
    if config.haze is not None:
        params = replace(params, haze=float(config.haze))
    if config.vary:
        params = _vary(params, rng)
    wind = float(rng.uniform(-config.wind, config.wind)) if config.wind > 0 else 0.0
    times = np.arange(config.frames, dtype=np.float64)
    return params, _RainSequence(size, times, params, rng, wind=wind, fresh=config.fresh), wind


@dataclass
class _Scan:
    """Pass 1 over one source: the frames used (source indices), the cuts (positions among them), the signal."""

    path: Path
    reader: FrameSource
    kept: list[int]
    n_source: int
    shape: tuple[int, ...]
    cuts: list[int]
    signal: np.ndarray


def _scan(reader: FrameSource, config: SynthConfig) -> _Scan:
    """Count the frames of a source, check their size, drop repeats and find the cuts (one reading)."""
    src = reader.path
    thumbs: list[np.ndarray] = []
    kept: list[int] = []          # source index of each frame used (all, unless repeats are dropped)
    shape: tuple[int, ...] | None = None
    n_source = 0
    for i, frame in enumerate(reader.frames()):
        n_source = i + 1
        if n_source > ID_BLOCK:
            raise DataError(f"{src} has more than {ID_BLOCK:,} frames, more than synth numbers per video: cut it "
                            f"into parts (ffmpeg -i {src} -c copy -f segment -segment_time 600 part%02d.mp4)")
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise DataError(f"{src}: frame {i} is {frame.shape[:2]} but frame 0 is {shape[:2]} (height, width); "
                            f"every frame must have one size")
        thumb = thumbnail(frame)
        if config.drop_repeats and thumbs and float(np.abs(thumb - thumbs[-1]).mean()) <= REPEAT_EPS:
            continue
        thumbs.append(thumb)
        kept.append(i)
    n = len(kept)
    if n == 0 or shape is None:
        raise DataError(f"no frames in {src}: the video is empty; give a video with at least --frames "
                        f"{config.frames} frames")
    if n < config.frames:
        repeats = n_source - n
        dropped = f" ({repeats} repeated frame(s) dropped)" if repeats else ""
        raise DataError(f"{src} has {n} frame(s){dropped}, fewer than --frames {config.frames}: use --frames {n} or "
                        f"less, or a longer video")
    signal = cut_signal(thumbs)
    cuts = detect_cuts(signal, config.cut_k, config.min_cut) if config.detect_cuts else []
    return _Scan(src, reader, kept, n_source, tuple(shape), cuts, signal)


def _no_clip_error(scan: _Scan, config: SynthConfig) -> DataError:
    n, cuts, kept = len(scan.kept), scan.cuts, scan.kept
    if config.holdout is not None:
        return DataError(f"{scan.path}: {n} frames give no clip of --frames {config.frames} on one side of the "
                         f"holdout split (the last {config.holdout:.0%} held out, {config.gap} frames left out before "
                         f"them): lower --frames or --holdout-gap, or use a longer video")
    bounds = [0, *cuts, n]
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return DataError(f"{scan.path}: every shot between the {len(cuts)} detected cut(s) (at frames "
                     f"{[kept[c] for c in cuts[:10]]}) is shorter than --frames {config.frames} (longest: "
                     f"{longest} frames): use --frames {longest} or less, or raise --cut-k (now "
                     f"{config.cut_k:g}) if those cuts are false")


def _source_record(scan: _Scan, index: int, boundary: tuple[int, int] | None) -> dict[str, Any]:
    n, kept, cuts = len(scan.kept), scan.kept, scan.cuts
    bounds = [0, *cuts, n]
    record: dict[str, Any] = {
        "path": str(scan.path), "kind": scan.reader.kind, "frames": scan.n_source, "size": list(scan.shape[:2]),
        "fps": scan.reader.fps, "id_offset": index * ID_BLOCK, "cuts": [kept[c] for c in cuts],
        "shots": [[kept[a], kept[b - 1] + 1] for a, b in zip(bounds[:-1], bounds[1:])],
        "repeated_frames": sorted(set(range(scan.n_source)) - set(kept)),
        "cut_signal": [round(float(v), 5) for v in scan.signal],
    }
    if boundary is not None:
        fit_stop, holdout_start = boundary
        record["fit_frames"] = [0, kept[fit_stop - 1] + 1 if fit_stop > 0 else 0]
        record["holdout_frames"] = [kept[holdout_start], scan.n_source]
    return record


def _write_splits(out: Path, clips: list[dict[str, Any]], config: SynthConfig) -> None:
    lines = [f"# written by nas-restore synth --holdout {config.holdout:g} --holdout-gap {config.gap}: the last "
             f"{config.holdout:.0%} of each video's frames are held out, the {config.gap} frames before them used by "
             "no clip,", "# so no source frame is on both sides. Ids: the number in each clip folder's name. Never "
             "search, train or tune on holdout."]
    for side in SPLIT_NAMES:
        lines.append(f"{side}: " + " ".join(str(c["id"]) for c in clips if c["split"] == side))
    tmp = out / (SPLITS_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / SPLITS_FILE)


def _write_source(scan: _Scan, clips: list[dict[str, Any]], positions: list[tuple[int, int]], config: SynthConfig,
                  size: tuple[int, int], out: Path) -> list[int]:
    """Pass 2 over one source: write its clips, each clip's rain drawn frame after frame; frames written per clip."""
    from skimage import io

    position_of = {i: p for p, i in enumerate(scan.kept)}
    opens = {a: k for k, (a, _) in enumerate(positions)}
    states: dict[int, tuple[RainParams, _RainSequence]] = {}
    written = [0] * len(clips)
    last = max(c["stop"] for c in clips)
    stream = scan.reader.frames()
    for i, frame in enumerate(stream):
        if i >= last:
            stream.close()  # the rest of the video holds no clip: close the reader now
            break
        p = position_of.get(i)
        if p is None:
            continue
        if p in opens:
            k = opens[p]
            params, rain, wind = _clip_rain(config, clips[k]["rain"], clips[k]["id"], size)
            clips[k].update(params=asdict(params), angle=round(float(rain.angle), 6), wind=round(wind, 6),
                            speed=float(params.speed), fresh=config.fresh)
            states[k] = (params, rain)
            for sub in ("input", "target"):
                (out / sub / clips[k]["name"]).mkdir(parents=True, exist_ok=True)
        active = [k for k in states if positions[k][0] <= p < positions[k][1]]
        if not active:
            continue
        clean = fit_frame(frame, size)
        clean_u8 = _to_uint8(clean)
        for k in active:
            params, rain = states[k]
            t = p - positions[k][0]
            name = f"{t + 1:05d}.png"
            rainy = composite(clean, rain.layer(float(t)), params)
            io.imsave(out / "target" / clips[k]["name"] / name, clean_u8, check_contrast=False)
            io.imsave(out / "input" / clips[k]["name"] / name, _to_uint8(rainy), check_contrast=False)
            written[k] += 1
            if p + 1 == positions[k][1]:
                del states[k]
    return written


def synth(source: str | Path | list[str | Path] | tuple[str | Path, ...], out: str | Path,
          config: SynthConfig | None = None) -> SynthResult:
    """Write paired rainy/clean clips of ``source`` (a video file or frame folder, or a list of them) into
    ``out``; with ``config.holdout``, also ``SPLITS.txt`` (fit / holdout). See the module docstring."""
    config = config or SynthConfig()
    sources = [Path(s) for s in (source if isinstance(source, (list, tuple)) else [source])]
    out = Path(out)
    if not sources:
        raise DataError("synth needs at least one input: a clean video file or a folder of its frames")
    seen: dict[Path, Path] = {}
    readers = []
    for src in sources:
        readers.append(FrameSource(src))  # a missing input or an unknown kind fails before anything is read
        _check_out(src, out)
        key = src.resolve()
        if key in seen:
            raise DataError(f"{src} is given twice (as {seen[key]} too): give each video once, so that no frame can "
                            f"be on both sides of a split")
        seen[key] = src

    # pass 1: per source, count the frames, check their size, drop repeats, find the cuts, plan the clips
    scans = [_scan(reader, config) for reader in readers]
    shapes = {scan.shape[:2] for scan in scans}
    if config.size is None and len(shapes) > 1:
        listed = ", ".join(f"{scan.path.name}: {scan.shape[0]}x{scan.shape[1]}" for scan in scans)
        raise DataError(f"the inputs have different frame sizes ({listed}): give --size HxW to bring them to one "
                        f"size")
    size = tuple(config.size) if config.size else tuple(scans[0].shape[:2])
    clips: list[dict[str, Any]] = []
    per_source: list[tuple[_Scan, list[int], list[tuple[int, int]]]] = []
    source_records = []
    k = 0
    for index, scan in enumerate(scans):
        plan, boundary = split_plan(len(scan.kept), scan.cuts, config.frames, config.clip_stride, config.holdout,
                                    config.gap, config.max_clips)
        if not plan:
            raise _no_clip_error(scan, config)
        if config.size and (config.size[0] > scan.shape[0] or config.size[1] > scan.shape[1]):
            log.warning("--size %dx%d is larger than %s (%dx%d): its frames are upscaled", *config.size, scan.path,
                        *scan.shape[:2])
        repeats = scan.n_source - len(scan.kept)
        if repeats:
            log.info("%s: %d repeated frame(s) dropped (a decoder's padding of a variable frame rate)", scan.path,
                     repeats)
        log.info("%s: %d frames, %d cut(s) %s, %d clip(s) of %d frames", scan.path, len(scan.kept), len(scan.cuts),
                 [scan.kept[c] for c in scan.cuts[:20]], len(plan), config.frames)
        stem = scan.path.stem if scan.path.is_file() else scan.path.name
        indices, positions = [], []
        for a, b, shot, side in plan:
            used = scan.kept[a:b]
            clip_id = index * ID_BLOCK + used[0]
            clip: dict[str, Any] = {"name": _clip_name(stem, clip_id), "id": clip_id, "source": index,
                                    "start": used[0], "stop": used[-1] + 1, "shot": shot,
                                    "rain": config.rain[k % len(config.rain)], "source_frames": used}
            if side is not None:
                clip["split"] = side
            clips.append(clip)
            indices.append(len(clips) - 1)
            positions.append((a, b))
            k += 1
        if config.holdout is not None:
            sides = {c["split"] for c in (clips[i] for i in indices)}
            for side in SPLIT_NAMES:
                if side not in sides:
                    log.warning("%s: no %s clip (%d frames; the last %.0f%% held out after a gap of %d): it adds to "
                                "one side only", scan.path, side, len(scan.kept), 100 * config.holdout, config.gap)
        per_source.append((scan, indices, positions))
        source_records.append(_source_record(scan, index, boundary))
    names = [c["name"] for c in clips]
    if len(set(names)) != len(names):  # ids are unique, so names are: a guard against a naming slip
        raise AssertionError(f"clip names repeat: {sorted(n for n in set(names) if names.count(n) > 1)[:5]}")
    holdout_record = None
    if config.holdout is not None:
        counts = {side: sum(c["split"] == side for c in clips) for side in SPLIT_NAMES}
        empty = [side for side, n in counts.items() if n == 0]
        if empty:
            raise DataError(f"--holdout {config.holdout:g} leaves no {' and no '.join(empty)} clip: change --holdout, "
                            f"lower --frames or --holdout-gap, or give longer videos")
        holdout_record = {"fraction": config.holdout, "gap": config.gap, "by": "time: the last share of each video",
                          "splits_file": SPLITS_FILE, **{f"{side}_clips": n for side, n in counts.items()}}

    # the record first (marked incomplete), so that a rerun after a crash clears what this one wrote
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    record: dict[str, Any] = {
        "format": FORMAT, "complete": False, "sources": source_records, "size": list(size), "seed": config.seed,
        "settings": asdict(config), "holdout": holdout_record, "clips": clips,
        "notes": "frame numbers are source frame indices from 0, per source; a clip's source range is start..stop-1 "
                 "(stop excluded), its frame t (written as t+1, 5 digits, .png) is source frame source_frames[t] of "
                 "sources[source]; its id (the number in its name, what SPLITS.txt lists) is source * "
                 f"{ID_BLOCK} + start; a cut is the first frame of a new shot; cut_signal[p] compares used frame "
                 "p-1 with p (the used frames: all but repeated_frames); with holdout, fit clips use only "
                 "fit_frames and holdout clips only holdout_frames of each source",
    }
    _write_json(out / SYNTH_FILE, record)

    # pass 2: write the clips, source after source
    for scan, indices, positions in per_source:
        mine = [clips[i] for i in indices]
        written = _write_source(scan, mine, positions, config, size, out)
        short = [c["name"] for c, w in zip(mine, written) if w != config.frames]
        if short:
            raise DataError(f"{scan.path} gave fewer frames on the second reading than on the first (clips "
                            f"{short[:5]} are incomplete): the file is damaged; re-encode it or extract its frames "
                            f"to a folder")
    if config.holdout is not None:
        _write_splits(out, clips, config)
    record["complete"] = True
    _write_json(out / SYNTH_FILE, record)
    log.info("wrote %d clip(s) to %s", len(clips), out)
    return SynthResult(out=out, record=record, record_path=out / SYNTH_FILE)


__all__ = ["SynthConfig", "SynthResult", "FrameSource", "synth", "parse_size", "thumbnail", "cut_signal",
           "detect_cuts", "plan_clips", "split_plan", "fit_frame", "SYNTH_FILE", "VIDEO_SUFFIXES", "ID_BLOCK",
           "SPLIT_NAMES"]
