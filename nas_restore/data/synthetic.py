"""Built-in training data: synthetic rain on the colour photographs that ship with scikit-image.

No data set can be downloaded on the machines this project runs on, so the default data is made here:
real photographs (``skimage.data``: astronaut, coffee, chelsea, rocket, motorcycle, all loaded offline),
a moving camera to make clips, and rain streaks drawn on top.

Rain model (per frame)::

    rainy = (1 - haze) * blend(B, S) + haze * A

``B`` is the clean frame, ``S`` the streak layer from :func:`rain_layer`, ``blend`` is additive (default,
what Rain100L's rainy-minus-clean layers show: non-negative and grey) or screen, and the last term is the
rain-accumulation veil of Yang et al. (JORDER, CVPR 2017), ``O = t (B + S) + (1 - t) A``, with a uniform
transmission ``t = 1 - haze`` (no depth map is available) and atmospheric light ``A = params.atmosphere``.

Streaks are drawn as anti-aliased line segments by bilinear splatting of points sampled along each
segment (vectorised ``np.bincount``), tapered at both ends, then gaussian-blurred by ``blur``. In a clip,
a persistent population of streaks falls ``speed`` px per frame along the rain direction, and a fraction
:data:`FRESH_FRACTION` of the density is redrawn independently in every frame (drops entering and leaving),
so consecutive frames' rain differs while the background moves smoothly with the camera.

Calibration against real Rain100L (the 54 ``fit`` pairs only; holdout pairs never looked at), measured
with :func:`rain_layer_stats` (rain layer = mean over RGB of rainy - clean). The ``light`` column is
20 layers (4 per default photograph, full size) drawn with ``add_rain``:

=====================  ================================  ==============
statistic              Rain100L fit: median (IQR)        ``light``
=====================  ================================  ==============
layer mean             0.0214 (0.0177-0.0343)            0.0205
coverage (layer>0.05)  0.142 (0.113-0.157)               0.132
layer 99th percentile  0.243 (0.191-0.389)               0.237
PSNR-Y rainy vs clean  26.60 dB (mean of the 54)         26.68 dB (mean)
=====================  ================================  ==============

The other presets on the same photographs: ``heavy`` 19.0 dB, ``slanted`` 23.9 dB, ``accumulation``
17.0 dB (mean PSNR-Y): harder rain than Rain100L, not calibrated to a data set.

Other Rain100L facts used: the layer is grey (channel difference < 0.001) and non-negative (additive
rain); streak length at half autocorrelation ~29 px (10-90 %: 19-54 px), width ~2 px at half maximum;
the dominant angle (structure tensor) varies per image, IQR -12..+12 degrees from vertical, extremes
+-31; streaks within an image are nearly parallel.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.data import Dataset

from nas_restore.metrics import psnr

log = logging.getLogger(__name__)

#: share of a clip's streak density that is drawn anew in every frame (the rest falls persistently)
FRESH_FRACTION = 0.2
#: per-streak angle spread (degrees, normal s.d.) around a layer's angle: real streaks are near parallel
STREAK_ANGLE_SD = 2.0
#: per-streak length and intensity spreads (multiplicative, uniform)
STREAK_LENGTH_RANGE = (0.6, 1.4)
STREAK_INTENSITY_RANGE = (0.3, 1.0)


# --------------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class RainParams:
    """One kind of rain. Units are pixels of the output frame.

    angle: degrees from vertical; positive leans the fall direction to the right (down-right).
    angle_jitter: each layer draws its angle uniformly in ``angle +- angle_jitter``; streaks within a
        layer stay near-parallel (s.d. :data:`STREAK_ANGLE_SD`).
    length, width: mean streak length and line width (px).
    density: expected number of streaks per 1000 px^2.
    brightness: peak intensity of the brightest streaks (0..1) before blur.
    blur: gaussian sigma (px) applied to the streak layer.
    haze: 1 - transmission of the rain-accumulation veil (0 = none, must be < 1).
    atmosphere: atmospheric light A the veil mixes towards (0..1).
    speed: streak motion along the fall direction, px per frame (clips only).
    blend: "add" (rainy = B + S, clipped) or "screen" (1 - (1 - B)(1 - S)).
    """

    angle: float = 0.0
    angle_jitter: float = 15.0
    length: float = 30.0
    width: float = 1.0
    density: float = 3.0
    brightness: float = 0.5
    blur: float = 0.5
    haze: float = 0.0
    atmosphere: float = 0.85
    speed: float = 30.0
    blend: str = "add"

    def __post_init__(self) -> None:
        ranges = {
            "angle": (-80.0, 80.0), "angle_jitter": (0.0, 90.0), "length": (1.0, 1000.0),
            "width": (0.25, 20.0), "density": (0.0, 200.0), "brightness": (0.0, 1.0), "blur": (0.0, 10.0),
            "haze": (0.0, 0.95), "atmosphere": (0.0, 1.0), "speed": (0.0, 1000.0),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RainParams.{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"RainParams.{name} must be in [{lo:g}, {hi:g}], got {value!r}")
        if self.blend not in ("add", "screen"):
            raise ValueError(f"RainParams.blend must be 'add' or 'screen', got {self.blend!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "RainParams":
        """Build from a config mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RainParams field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


#: Presets; ``light`` is calibrated to Rain100L (see the module docstring), the others are
#: Rain100H / Rain800-like variations of it.
RAIN_PRESETS: dict[str, RainParams] = {
    "light": RainParams(angle=0.0, angle_jitter=15.0, length=30.0, width=1.0, density=3.2, brightness=0.44,
                        blur=0.5, haze=0.0, speed=30.0),
    "heavy": RainParams(angle=0.0, angle_jitter=25.0, length=40.0, width=1.5, density=4.5, brightness=0.6,
                        blur=0.8, haze=0.0, speed=40.0),
    "slanted": RainParams(angle=30.0, angle_jitter=8.0, length=35.0, width=1.2, density=3.2, brightness=0.5,
                          blur=0.6, haze=0.0, speed=35.0),
    "accumulation": RainParams(angle=0.0, angle_jitter=20.0, length=40.0, width=1.5, density=4.0,
                               brightness=0.55, blur=0.8, haze=0.2, atmosphere=0.85, speed=40.0),
}


def resolve_rain(rain: str | RainParams) -> RainParams:
    """A preset name or a RainParams -> RainParams (clear error for an unknown name)."""
    if isinstance(rain, RainParams):
        return rain
    if isinstance(rain, str) and rain in RAIN_PRESETS:
        return RAIN_PRESETS[rain]
    raise ValueError(f"unknown rain type {rain!r}: use one of {sorted(RAIN_PRESETS)} or a RainParams")


# --------------------------------------------------------------------------------------------------
# photographs


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


#: Photographs that load offline from the scikit-image package (no pooch download). The default
#: set is natural colour photographs; the others are colour but not natural scenes (microscopy,
#: astronomy, fundus), available by name.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"), "coffee": _skimage("coffee"), "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"), "motorcycle": _motorcycle,
    "immunohistochemistry": _skimage("immunohistochemistry"), "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
}
DEFAULT_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as float32 HxWx3 in [0, 1] (cached, read-only)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photograph {name!r}: use one of {sorted(PHOTOS)}")
    img = np.asarray(PHOTOS[name]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    arr = (img[..., :3].astype(np.float32) / 255.0)
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------------------------------
# rain streaks


@dataclass
class _Streaks:
    """A population of streaks: centres (y, x), unit fall direction, length, intensity."""

    cy: np.ndarray
    cx: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    length: np.ndarray
    intensity: np.ndarray


def _draw_streaks(box: tuple[float, float, float, float], params: RainParams, angle: float,
                  rng: np.random.Generator, density_scale: float = 1.0) -> _Streaks:
    """Random streaks with centres uniform in ``box = (y0, y1, x0, x1)``."""
    y0, y1, x0, x1 = box
    area = max(0.0, (y1 - y0) * (x1 - x0))
    n = int(rng.poisson(params.density * density_scale * area / 1000.0))
    theta = np.deg2rad(angle + rng.normal(0.0, STREAK_ANGLE_SD, n))
    return _Streaks(cy=rng.uniform(y0, y1, n), cx=rng.uniform(x0, x1, n), dy=np.cos(theta), dx=np.sin(theta),
                    length=params.length * rng.uniform(*STREAK_LENGTH_RANGE, n),
                    intensity=params.brightness * rng.uniform(*STREAK_INTENSITY_RANGE, n))


def _render_streaks(streaks: _Streaks, height: int, width: int, params: RainParams,
                    shift: tuple[float, float] = (0.0, 0.0), extra: _Streaks | None = None) -> np.ndarray:
    """Splat the streaks (translated by ``shift``; ``extra`` untranslated) into an HxW float32 layer."""
    parts = [streaks] if extra is None else [streaks, extra]
    shifts = [shift, (0.0, 0.0)]
    cy = np.concatenate([p.cy + sh[0] for p, sh in zip(parts, shifts)])
    cx = np.concatenate([p.cx + sh[1] for p, sh in zip(parts, shifts)])
    dy, dx = np.concatenate([p.dy for p in parts]), np.concatenate([p.dx for p in parts])
    length = np.concatenate([p.length for p in parts])
    inten = np.concatenate([p.intensity for p in parts])
    reach = length / 2 + params.width + 2
    keep = (cy > -reach) & (cy < height + reach) & (cx > -reach) & (cx < width + reach)
    layer = np.zeros(height * width, dtype=np.float64)
    if keep.any():
        cy, cx, dy, dx, length, inten = cy[keep], cx[keep], dy[keep], dx[keep], length[keep], inten[keep]
        n_along = int(math.ceil(float(length.max()))) + 1              # ~1 sample per px along
        u = np.linspace(-0.5, 0.5, n_along)                            # position along, fraction of length
        taper = np.sqrt(np.sin(np.pi * (u + 0.5)))                     # fades at both ends
        n_across = max(1, int(round(params.width)))
        v = ((np.arange(n_across) + 0.5) / n_across - 0.5) * params.width  # offsets across, px
        step = (length / (n_along - 1)) * (params.width / n_across)    # area per sample -> ~1 per px
        along = u[None, :, None] * length[:, None, None]               # [S, A, 1]
        ys = (cy[:, None, None] + along * dy[:, None, None] - v[None, None, :] * dx[:, None, None]).ravel()
        xs = (cx[:, None, None] + along * dx[:, None, None] + v[None, None, :] * dy[:, None, None]).ravel()
        w = np.broadcast_to((inten * step)[:, None, None] * taper[None, :, None],
                            (len(cy), n_along, n_across)).ravel()
        y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
        fy, fx = ys - y0, xs - x0
        yy = np.concatenate([y0, y0, y0 + 1, y0 + 1])
        xx = np.concatenate([x0, x0 + 1, x0, x0 + 1])
        wc = np.concatenate([w * (1 - fy) * (1 - fx), w * (1 - fy) * fx, w * fy * (1 - fx), w * fy * fx])
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        layer = np.bincount(yy[inside] * width + xx[inside], weights=wc[inside], minlength=height * width)
    out = layer.reshape(height, width)
    if params.blur > 0:
        out = ndi.gaussian_filter(out, params.blur, mode="constant")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _layer_angle(params: RainParams, rng: np.random.Generator) -> float:
    return params.angle + rng.uniform(-params.angle_jitter, params.angle_jitter)


def rain_layer(height: int, width: int, params: RainParams, rng: np.random.Generator) -> np.ndarray:
    """A streak layer, float32 [H, W] in [0, 1]."""
    if height < 1 or width < 1:
        raise ValueError(f"rain_layer needs a positive size, got {height}x{width}")
    pad = params.length * STREAK_LENGTH_RANGE[1] / 2 + params.width + 2
    streaks = _draw_streaks((-pad, height + pad, -pad, width + pad), params, _layer_angle(params, rng), rng)
    return _render_streaks(streaks, height, width, params)


def composite(clean: np.ndarray, layer: np.ndarray, params: RainParams) -> np.ndarray:
    """Apply a streak layer and the haze veil to a clean HxWx3 frame (see the module docstring)."""
    s = layer[..., None]
    if params.blend == "add":
        rainy = clean + s
    else:
        rainy = 1.0 - (1.0 - clean) * (1.0 - s)
    if params.haze > 0:
        rainy = (1.0 - params.haze) * rainy + params.haze * params.atmosphere
    return np.clip(rainy, 0.0, 1.0).astype(np.float32)


def _check_image(clean: np.ndarray, name: str = "clean") -> np.ndarray:
    arr = np.asarray(clean)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 image with values in [0, 1], got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def add_rain(clean: np.ndarray, params: RainParams | str, rng: np.random.Generator) -> np.ndarray:
    """Rainy version (float32 HxWx3 in [0, 1]) of a clean HxWx3 image in [0, 1]."""
    params = resolve_rain(params)
    arr = _check_image(clean)
    return composite(arr, rain_layer(arr.shape[0], arr.shape[1], params, rng), params)


def rain_layer_stats(rainy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Statistics of a rain layer (mean over RGB of rainy - clean) used to calibrate the presets."""
    layer = (np.asarray(rainy, np.float64) - np.asarray(clean, np.float64)).mean(axis=2)
    return {"mean": float(layer.mean()), "coverage": float((layer > 0.05).mean()),
            "p99": float(np.percentile(layer, 99)), "psnr_y": psnr(rainy, clean)}


# --------------------------------------------------------------------------------------------------
# clips: camera motion + falling rain

MOTIONS = ("pan", "zoom", "random")


@dataclass
class _Camera:
    """Crop window of an HxW output on the photograph: centre (y, x) and scale (source px per output px)
    as smooth functions of the frame time."""

    cy: float
    cx: float
    vy: float
    vx: float
    scale: float
    zoom: float  # scale multiplier per frame
    flip: bool

    def sample(self, photo: np.ndarray, t: float, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        s = self.scale * self.zoom ** t
        ys = self.cy + self.vy * t + s * (np.arange(h) - (h - 1) / 2)
        xs = self.cx + self.vx * t + s * (np.arange(w) - (w - 1) / 2)
        src = photo[:, ::-1] if self.flip else photo
        ys = np.clip(ys, 0, src.shape[0] - 1.000001)
        xs = np.clip(xs, 0, src.shape[1] - 1.000001)
        y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
        fy = (ys - y0).astype(np.float32)[:, None, None]
        fx = (xs - x0).astype(np.float32)[:, None]
        sub = src[y0[0]: y0[-1] + 2, x0[0]: x0[-1] + 2]  # only the part of the photograph the crop touches
        y0, x0 = y0 - y0[0], x0 - x0[0]
        rows = sub[y0] * (1 - fy) + sub[y0 + 1] * fy     # separable bilinear: rows, then columns
        return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx


def _plan_camera(photo_shape: tuple[int, ...], size: tuple[int, int], times: np.ndarray, motion: str,
                 rng: np.random.Generator) -> _Camera:
    """A random smooth camera path whose crops stay inside the photograph over ``times``."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    ph, pw = photo_shape[:2]
    h, w = size
    t_lo, t_hi = float(times.min()), float(times.max())
    fit = min((ph - 1) / h, (pw - 1) / w)         # largest scale whose crop fits in the photograph
    speed = rng.uniform(0.5, 3.0) if motion in ("pan", "random") else rng.uniform(0.0, 0.3)
    zoom = 1.0
    if motion in ("zoom", "random"):
        zoom = rng.uniform(1.01, 1.04) if motion == "zoom" else rng.uniform(1.0, 1.02)
        if rng.random() < 0.5:
            zoom = 1.0 / zoom
    max_zoom = max(zoom ** t_lo, zoom ** t_hi)
    scale = min(rng.uniform(0.8, 1.25), 0.98 * fit / max_zoom)
    direction = rng.uniform(0, 2 * np.pi)
    vy, vx = speed * scale * np.sin(direction), speed * scale * np.cos(direction)
    # extent of the window over the clip: centre range that keeps every frame's crop inside
    half_h = scale * max_zoom * (h - 1) / 2
    half_w = scale * max_zoom * (w - 1) / 2
    moves_y = (vy * t_lo, vy * t_hi)
    moves_x = (vx * t_lo, vx * t_hi)
    lo_y, hi_y = half_h - min(moves_y), ph - 1 - half_h - max(moves_y)
    lo_x, hi_x = half_w - min(moves_x), pw - 1 - half_w - max(moves_x)
    if lo_y > hi_y or lo_x > hi_x:  # the photograph is too small for this pan: stand still
        vy = vx = 0.0
        lo_y, hi_y, lo_x, hi_x = half_h, ph - 1 - half_h, half_w, pw - 1 - half_w
    cy = rng.uniform(lo_y, max(lo_y, hi_y))
    cx = rng.uniform(lo_x, max(lo_x, hi_x))
    return _Camera(cy=cy, cx=cx, vy=vy, vx=vx, scale=scale, zoom=zoom, flip=bool(rng.random() < 0.5))


class _RainSequence:
    """Rain for frames at given times: a persistent falling population plus fresh streaks per frame.

    ``wind`` (degrees per frame) turns the fall direction over time: at time t the streaks lean
    ``angle + wind * t`` and the persistent ones have moved along the curved path of that direction
    (:meth:`offset`); ``fresh`` is the share of the density drawn anew in every frame.
    """

    def __init__(self, size: tuple[int, int], times: np.ndarray, params: RainParams, rng: np.random.Generator,
                 wind: float = 0.0, fresh: float = FRESH_FRACTION):
        if not 0.0 <= fresh <= 1.0:
            raise ValueError(f"fresh must be a share in [0, 1], got {fresh!r}")
        self.size, self.params, self.rng, self.wind, self.fresh = size, params, rng, float(wind), float(fresh)
        self.angle = _layer_angle(params, rng)
        a = np.deg2rad(self.angle)
        self.fall = (params.speed * np.cos(a), params.speed * np.sin(a))   # px per frame (dy, dx)
        h, w = size
        pad = params.length * STREAK_LENGTH_RANGE[1] / 2 + params.width + 2
        t_lo, t_hi = float(times.min()), float(times.max())
        # centres at time 0 that are visible at some time in [t_lo, t_hi] (with wind: at one of the times)
        offsets = [self.offset(t) for t in ((t_lo, t_hi) if self.wind == 0 else np.asarray(times, float))]
        ys = [-o[0] for o in offsets]
        xs = [-o[1] for o in offsets]
        box = (min(ys) - pad, h + max(ys) + pad, min(xs) - pad, w + max(xs) + pad)
        self.persistent = _draw_streaks(box, params, self.angle, rng, 1.0 - self.fresh)
        self.fresh_box = (-pad, h + pad, -pad, w + pad)

    def offset(self, t: float) -> tuple[float, float]:
        """Displacement (dy, dx) in px of the persistent streaks from time 0 to time ``t``."""
        if self.wind == 0:
            return self.fall[0] * t, self.fall[1] * t
        a, turn, v = np.deg2rad(self.angle), np.deg2rad(self.wind), self.params.speed
        return (float(v / turn * (np.sin(a + turn * t) - np.sin(a))),
                float(v / turn * (np.cos(a) - np.cos(a + turn * t))))

    def layer(self, t: float) -> np.ndarray:
        h, w = self.size
        persistent, angle = self.persistent, self.angle + self.wind * t
        if self.wind != 0:  # every streak turns with the wind, keeping its own small deviation
            c, s = np.cos(np.deg2rad(self.wind * t)), np.sin(np.deg2rad(self.wind * t))
            persistent = replace(persistent, dy=persistent.dy * c - persistent.dx * s,
                                 dx=persistent.dx * c + persistent.dy * s)
        fresh = _draw_streaks(self.fresh_box, self.params, angle, self.rng, self.fresh)
        return _render_streaks(persistent, h, w, self.params, self.offset(t), fresh)


def _normalise_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8 px, got {h}x{w}")
    return h, w


def _render_clip(photo: np.ndarray, times: np.ndarray, size: tuple[int, int], params: RainParams,
                 motion: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    camera = _plan_camera(photo.shape, size, times, motion, rng)
    rain = _RainSequence(size, times, params, rng)
    clean = np.stack([camera.sample(photo, float(t), size) for t in times])
    rainy = np.stack([composite(c, rain.layer(float(t)), params) for c, t in zip(clean, times)])
    return rainy, clean


def make_clip(image: np.ndarray | str, n_frames: int, size: int | tuple[int, int] = (64, 64),
              params: RainParams | str = "light", seed: int = 0,
              motion: str = "pan") -> tuple[np.ndarray, np.ndarray]:
    """A rainy clip and its clean version, float32 ``[T, H, W, 3]`` each, from one photograph.

    ``image`` is an HxWx3 array in [0, 1] or the name of a bundled photograph. The camera pans
    (constant velocity), zooms (constant scale factor per frame) or does both ("random"), smoothly.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    photo = load_photo(image) if isinstance(image, str) else _check_image(image, "image")
    rng = np.random.default_rng(_seed_words(seed))
    times = np.arange(n_frames, dtype=np.float64) - (n_frames - 1) / 2
    return _render_clip(photo, times, _normalise_size(size), resolve_rain(params), motion, rng)


def _seed_words(*values: int) -> list[int]:
    """Seed words for numpy's SeedSequence (which wants non-negative integers)."""
    words: list[int] = []
    for v in values:
        v = int(v)
        words += [abs(v), int(v < 0)]
    return words


# --------------------------------------------------------------------------------------------------
# dataset


def _vary(params: RainParams, rng: np.random.Generator) -> RainParams:
    """Per-item variation of a preset (+-20 % density, brightness, length) for diversity."""
    return replace(params, density=params.density * rng.uniform(0.8, 1.2),
                   brightness=min(1.0, params.brightness * rng.uniform(0.8, 1.2)),
                   length=params.length * rng.uniform(0.8, 1.2))


class SyntheticRainDataset(Dataset):
    """Rainy/clean pairs synthesised on the fly; item ``i`` is a pure function of ``(seed, i)``.

    Each item is the ``frames``-frame window centred in a clip of ``clip_length`` frames (camera motion
    "pan", "zoom" or "random", drawn per item), on one photograph and one rain type (drawn per item,
    with +-20 % variation of density, brightness and length). Returns ``(frames [T, 3, H, W],
    target [3, H, W])`` float32. Different seeds give different crops, motions and rain, which is how
    train / validation / test splits are made.
    """

    def __init__(self, length: int = 256, frames: int = 1, size: int = 64,
                 rain_types: Sequence[str | RainParams] | None = None, images: Sequence[str] | None = None,
                 seed: int = 0, clip_length: int | None = None):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if frames < 1 or frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1 (a window centred on a frame), got {frames}")
        clip_length = frames if clip_length is None else clip_length
        if clip_length < frames:
            raise ValueError(f"clip_length ({clip_length}) must be >= frames ({frames})")
        self.length, self.frames, self.seed, self.clip_length = int(length), int(frames), int(seed), int(clip_length)
        self.size = _normalise_size(size)
        self.rain = [resolve_rain(r) for r in (rain_types or list(RAIN_PRESETS))]
        if not self.rain:
            raise ValueError("rain_types must name at least one rain type")
        self.images = list(images or DEFAULT_PHOTOS)
        for name in self.images:
            if name not in PHOTOS:
                raise ValueError(f"unknown photograph {name!r} in images: use names from {sorted(PHOTOS)}")
        for name in self.images:
            load_photo(name)  # load (and cache) now, so a bad name fails here and workers share the cache

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as numpy: rainy ``[T, H, W, 3]`` and clean ``[T, H, W, 3]``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} items")
        rng = np.random.default_rng(_seed_words(self.seed, index))
        photo = load_photo(self.images[rng.integers(len(self.images))])
        params = _vary(self.rain[rng.integers(len(self.rain))], rng)
        motion = MOTIONS[rng.integers(len(MOTIONS))]
        r = self.frames // 2
        centre = (self.clip_length - 1) // 2
        times = np.arange(centre - r, centre + r + 1, dtype=np.float64) - (self.clip_length - 1) / 2
        return _render_clip(photo, times, self.size, params, motion, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rainy, clean = self.render(int(index))
        frames = torch.from_numpy(np.ascontiguousarray(rainy.transpose(0, 3, 1, 2)))
        target = torch.from_numpy(np.ascontiguousarray(clean[self.frames // 2].transpose(2, 0, 1)))
        return frames, target


# --------------------------------------------------------------------------------------------------
# writing folders

_WRITER_SALT = 0x5EED  # keeps written folders apart from SyntheticRainDataset items of the same seed
_IMAGE_NAME = re.compile(r"^\d{4,}\.png$")
_FRAME_NAME = re.compile(r"^\d{5,}\.png$")
_CLIP_NAME = re.compile(r"^clip_\d{3,}$")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _clear_previous(folder: Path) -> None:
    """Remove files this writer made before (its naming pattern only), so a rerun leaves no strays."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and _IMAGE_NAME.match(path.name):
            path.unlink()
        elif path.is_dir() and _CLIP_NAME.match(path.name):
            for frame in path.iterdir():
                if frame.is_file() and _FRAME_NAME.match(frame.name):
                    frame.unlink()
            if not any(path.iterdir()):
                path.rmdir()


def write_synthetic_folder(out_dir: str | Path, kind: str = "images", count: int = 8, frames_per_clip: int = 7,
                           size: int | tuple[int, int] = 96, rain_types: Sequence[str | RainParams] | None = None,
                           seed: int = 0, images: Sequence[str] | None = None) -> Path:
    """Write synthetic pairs as 8-bit PNGs in the layout :mod:`nas_restore.data.folders` reads.

    images: ``out_dir/input/0001.png`` + ``out_dir/target/0001.png``;
    video:  ``out_dir/input/clip_001/00001.png`` + ``out_dir/target/clip_001/00001.png``.
    Files that an earlier call wrote there (same naming pattern) are replaced; nothing else is touched.
    """
    from skimage import io

    if kind not in ("images", "video"):
        raise ValueError(f"kind must be 'images' or 'video', got {kind!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if kind == "video" and frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    out = Path(out_dir)
    size = _normalise_size(size)
    rain = [resolve_rain(r) for r in (rain_types or list(RAIN_PRESETS))]
    photos = list(images or DEFAULT_PHOTOS)
    for sub in ("input", "target"):
        _clear_previous(out / sub)
        (out / sub).mkdir(parents=True, exist_ok=True)
    n_frames = frames_per_clip if kind == "video" else 1
    for k in range(count):
        rng = np.random.default_rng(_seed_words(seed, k) + [_WRITER_SALT])
        photo = load_photo(photos[k % len(photos)])
        params = rain[k % len(rain)]
        motion = MOTIONS[k % len(MOTIONS)]
        times = np.arange(n_frames, dtype=np.float64) - (n_frames - 1) / 2
        rainy, clean = _render_clip(photo, times, size, params, motion, rng)
        for t in range(n_frames):
            if kind == "images":
                rel = Path(f"{k + 1:04d}.png")
            else:
                rel = Path(f"clip_{k + 1:03d}") / f"{t + 1:05d}.png"
            for sub, arr in (("input", rainy[t]), ("target", clean[t])):
                path = out / sub / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                io.imsave(path, _to_uint8(arr), check_contrast=False)
    log.info("wrote %d synthetic %s to %s", count, "clips" if kind == "video" else "pairs", out)
    return out


__all__ = [
    "RainParams", "RAIN_PRESETS", "PHOTOS", "DEFAULT_PHOTOS", "FRESH_FRACTION", "MOTIONS", "load_photo",
    "resolve_rain", "rain_layer", "composite", "add_rain", "rain_layer_stats", "make_clip",
    "SyntheticRainDataset", "write_synthetic_folder",
]
