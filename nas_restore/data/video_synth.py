"""Paired rainy/clean video clips from the user's own clean footage (``nas-restore synth``).

A clean video file (mp4, avi, ... through imageio + imageio-ffmpeg; an animated GIF through pillow) or a
folder of frames becomes the clip layout that :class:`~nas_restore.data.folders.VideoClipFolder` reads::

    DIR/input/<clip>/00001.png ...    rainy frames
    DIR/target/<clip>/00001.png ...   the clean source frames (resized and centre-cropped to --size)
    DIR/synth.json                    source, its frame count, the cuts, each clip's source range and rain

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

The source is read twice (once for the cuts, once to write the clips), so memory stays at a few frames
whatever the video's length. Everything is a function of the settings and ``seed``: a clip's rain
depends on the seed and its first source frame only.
"""

from __future__ import annotations

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
from nas_restore.data.folders import IMAGE_SUFFIXES, DataError, image_size, list_images, load_image
from nas_restore.data.synthetic import (FRESH_FRACTION, RAIN_PRESETS, RainParams, _RainSequence, _seed_words,
                                        _to_uint8, _vary, composite)
from nas_restore.errors import UnknownNameError

log = logging.getLogger(__name__)

SYNTH_FILE = "synth.json"
FORMAT = "nas-restore synth 1"
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
    previous one (:data:`REPEAT_EPS`)."""

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
                  ("cut_k", self.cut_k, 0.0, 1000.0), ("min_cut", self.min_cut, 0.0, 1.0)]
        for name, value, lo, hi in checks:
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if value is not None and not (number and lo <= value <= hi):
                raise ConfigError(f"{name} must be between {lo} and {hi}, got {value!r}")

    @property
    def clip_stride(self) -> int:
        return int(self.stride or self.frames)


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


def _clip_name(stem: str, start: int) -> str:
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "clip"
    return f"{clean}_{start:06d}"


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
    for sub in ("input", "target"):
        folder = out / sub
        if folder.is_dir() and any(folder.iterdir()):
            raise DataError(f"{folder} already holds data that this synth did not write: give --out a new or "
                            f"empty folder (or remove {folder})")


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
    def cuts(self) -> list[int]:
        return self.record["cuts"]


def _clip_rain(config: SynthConfig, kind: str, start: int, size: tuple[int, int]) -> tuple[RainParams, _RainSequence,
                                                                                           float]:
    rng = np.random.default_rng(_seed_words(config.seed, start) + [_SALT])
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


def synth(source: str | Path, out: str | Path, config: SynthConfig | None = None) -> SynthResult:
    """Write paired rainy/clean clips of ``source`` (video file or frame folder) into ``out``; see the module."""
    from skimage import io

    config = config or SynthConfig()
    src, out = Path(source), Path(out)
    reader = FrameSource(src)
    _check_out(src, out)

    # pass 1: count the frames, check their size, drop repeats, find the cuts
    thumbs: list[np.ndarray] = []
    kept: list[int] = []          # source index of each frame used (all, unless repeats are dropped)
    shape: tuple[int, ...] | None = None
    n_source = 0
    for i, frame in enumerate(reader.frames()):
        n_source = i + 1
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
    repeats = n_source - n
    if n == 0 or shape is None:
        raise DataError(f"no frames in {src}: the video is empty; give a video with at least --frames "
                        f"{config.frames} frames")
    if n < config.frames:
        dropped = f" ({repeats} repeated frame(s) dropped)" if repeats else ""
        raise DataError(f"{src} has {n} frame(s){dropped}, fewer than --frames {config.frames}: use --frames {n} or "
                        f"less, or a longer video")
    signal = cut_signal(thumbs)
    cuts = detect_cuts(signal, config.cut_k, config.min_cut) if config.detect_cuts else []
    plan = plan_clips(n, cuts, config.frames, config.clip_stride, config.max_clips)
    if not plan:
        bounds = [0, *cuts, n]
        longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        raise DataError(f"{src}: every shot between the {len(cuts)} detected cut(s) (at frames "
                        f"{[kept[c] for c in cuts[:10]]}) is shorter than --frames {config.frames} (longest: "
                        f"{longest} frames): use --frames {longest} or less, or raise --cut-k (now "
                        f"{config.cut_k:g}) if those cuts are false")
    size = tuple(config.size) if config.size else tuple(shape[:2])
    if config.size and (config.size[0] > shape[0] or config.size[1] > shape[1]):
        log.warning("--size %dx%d is larger than the source (%dx%d): the frames are upscaled", *config.size,
                    *shape[:2])
    if repeats:
        log.info("%s: %d repeated frame(s) dropped (a decoder's padding of a variable frame rate)", src, repeats)
    log.info("%s: %d frames, %d cut(s) %s, %d clip(s) of %d frames", src, n, len(cuts),
             [kept[c] for c in cuts[:20]], len(plan), config.frames)

    # the record first (marked incomplete), so that a rerun after a crash clears what this one wrote
    stem = src.stem if src.is_file() else src.name
    clips, positions = [], []
    for k, (a, b, shot) in enumerate(plan):
        used = kept[a:b]
        clips.append({"name": _clip_name(stem, used[0]), "start": used[0], "stop": used[-1] + 1, "shot": shot,
                      "rain": config.rain[k % len(config.rain)], "source_frames": used})
        positions.append((a, b))
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    bounds = [0, *cuts, n]
    record: dict[str, Any] = {
        "format": FORMAT, "complete": False, "source": str(src), "source_kind": reader.kind,
        "source_frames": n_source, "source_size": list(shape[:2]), "fps": reader.fps, "size": list(size),
        "seed": config.seed, "settings": asdict(config),
        "cuts": [kept[c] for c in cuts],
        "shots": [[kept[a], kept[b - 1] + 1] for a, b in zip(bounds[:-1], bounds[1:])],
        "repeated_frames": sorted(set(range(n_source)) - set(kept)),
        "cut_signal": [round(float(v), 5) for v in signal], "clips": clips,
        "notes": "frame numbers are source frame indices from 0; a clip's source range is start..stop-1 (stop "
                 "excluded), its frame t (written as t+1, 5 digits, .png) is source frame source_frames[t]; a cut "
                 "is the first frame of a new shot; cut_signal[p] compares used frame p-1 with p (the used "
                 "frames: all but repeated_frames)",
    }
    _write_json(out / SYNTH_FILE, record)

    # pass 2: write the clips, with each clip's rain drawn frame after frame
    position_of = {i: p for p, i in enumerate(kept)}
    opens = {a: k for k, (a, _) in enumerate(positions)}
    states: dict[int, tuple[RainParams, _RainSequence]] = {}
    written = [0] * len(clips)
    last = max(c["stop"] for c in clips)
    stream = reader.frames()
    for i, frame in enumerate(stream):
        if i >= last:
            stream.close()  # the rest of the video holds no clip: close the reader now
            break
        p = position_of.get(i)
        if p is None:
            continue
        if p in opens:
            k = opens[p]
            params, rain, wind = _clip_rain(config, clips[k]["rain"], clips[k]["start"], size)
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
    short = [c["name"] for c, w in zip(clips, written) if w != config.frames]
    if short:
        raise DataError(f"{src} gave fewer frames on the second reading than on the first (clips {short[:5]} are "
                        f"incomplete): the file is damaged; re-encode it or extract its frames to a folder")
    record["complete"] = True
    _write_json(out / SYNTH_FILE, record)
    log.info("wrote %d clip(s) to %s", len(clips), out)
    return SynthResult(out=out, record=record, record_path=out / SYNTH_FILE)


__all__ = ["SynthConfig", "SynthResult", "FrameSource", "synth", "parse_size", "thumbnail", "cut_signal",
           "detect_cuts", "plan_clips", "fit_frame", "SYNTH_FILE", "VIDEO_SUFFIXES"]
