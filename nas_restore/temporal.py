"""Temporal consistency of a video derainer: the training loss, the evaluation measure, the training pairs.

Both follow Lai et al., "Learning Blind Video Temporal Consistency" (ECCV 2018), whose short-term loss
TMICS's released config names (``w_ST = 1``, ``alpha = 50``):

- **Loss** (training): ``mean(M * |O_t - W(O_{t-1})|)`` with ``W`` the backward warp along the optical
  flow from frame t to t-1 and ``M = exp(-alpha * |C_t - W(C_{t-1})|^2)`` (summed over RGB) the
  visibility mask. Lai et al. compute flow and mask on the input video; here both come from the **clean**
  frames, which training always has: rain streaks move independently of the scene and would corrupt a
  flow estimated on rainy frames, and the mask then discounts occlusions and flow errors, not rain.
- **Measure** (evaluation): the *warping error* of the same paper, ``E = sum(V * (O_t - W(O_{t-1}))^2) /
  sum(V)`` per frame pair (RGB in [0, 1], lower is better), with a binary non-occlusion mask
  ``V = [|C_t - W(C_{t-1})|^2 < 0.05^2 ... per pixel, mean over RGB]``. It is reported for the model's
  output, the rainy input and the clean frames themselves (the floor that flow errors leave).

Real rainy video has no clean frames, so neither measure applies. :func:`no_reference_temporal` measures
without them, on the rainy input and any outputs alike:

- **Static-region flicker**: the mean absolute change between consecutive frames (RGB in [0, 1]) over the
  pixels where the *scene* does not move. The scene is estimated rain-free by the per-pixel temporal
  median of :data:`SCENE_WINDOW` rainy frames centred on t (rain streaks move tens of pixels a frame, so
  each pixel is rain-free in most of the window). A pixel moves when the change of that estimate from
  t-1 to t, averaged over RGB and smoothed by a Gaussian of :data:`MOTION_SIGMA` px, exceeds
  :data:`MOTION_THRESHOLD` (slow motion), or when the rainy frames themselves change by more than
  :data:`RAW_THRESHOLD` over a region wider than :data:`STREAK_WIDTH` px (a fast object, which the
  median drops as it drops rain; a morphological opening removes the thin streaks from that change);
  the moving region is grown by :data:`MOTION_MARGIN` px. On the static rest a steady video changes by
  its noise only: rain, or an output that flickers, shows up there.
  The mask comes from the rainy input for every video measured, so input and outputs are scored on the
  same pixels (``static_share`` says how many).
- **Warping error without a target**: the measure above with the scene estimate standing in for the
  clean frames (flow and occlusion mask from it).

Flow is scikit-image's iterative Lucas-Kanade (:func:`nas_restore.flow.classical_flow`), computed
without gradient. A training item for this loss holds the window of T frames centred on t *and* the one
centred on t-1 (T+1 consecutive rainy frames) with the two clean centre frames: :class:`TemporalPairs`
makes them from the synthetic clips or a :class:`~nas_restore.data.folders.VideoClipFolder`, and the
training step runs the network on both windows (the "previous output" is that of the shifted window).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nas_restore.data.folders import DataError, VideoClipFolder, load_image, window_indices
from nas_restore.data.synthetic import SyntheticRainDataset
from nas_restore.flow import classical_flow, flow_warp

TEMPORAL_ALPHA = 50.0        # Lai et al. / TMICS config
OCCLUSION_THRESHOLD = 0.05   # per-pixel RGB-mean absolute difference of the warped clean frames


def clean_flow(current: Tensor, previous: Tensor) -> Tensor:
    """[B, 2, H, W] backward flow with ``previous(p + flow(p)) ~ current(p)``, from [B, 3, H, W] frames."""
    cur = current.detach().float().cpu().numpy()
    prev = previous.detach().float().cpu().numpy()
    flows = np.stack([classical_flow(c, p) for c, p in zip(cur, prev)])
    return torch.from_numpy(flows).to(device=current.device, dtype=current.dtype)


def temporal_loss(out_prev: Tensor, out_cur: Tensor, clean_prev: Tensor, clean_cur: Tensor,
                  alpha: float = TEMPORAL_ALPHA, flow: Tensor | None = None) -> Tensor:
    """Short-term temporal loss (Lai et al. 2018) with flow and mask from the clean frames."""
    if flow is None:
        flow = clean_flow(clean_cur, clean_prev)
    with torch.no_grad():
        diff = (clean_cur - flow_warp(clean_prev, flow)).pow(2).sum(dim=1, keepdim=True)
        mask = torch.exp(-alpha * diff)
    return (mask * (out_cur - flow_warp(out_prev, flow)).abs()).mean()


def warping_errors(prev: dict[str, Tensor], cur: dict[str, Tensor]) -> dict[str, float]:
    """Warping error of each named [1, 3, H, W] frame pair, flow and mask from ``"clean"`` (required)."""
    flow = clean_flow(cur["clean"], prev["clean"])
    with torch.no_grad():
        diff = (cur["clean"] - flow_warp(prev["clean"], flow)).abs().mean(dim=1, keepdim=True)
        visible = (diff < OCCLUSION_THRESHOLD).to(diff.dtype)
        denom = float(visible.sum())
        out = {}
        for name in cur:
            err = (cur[name] - flow_warp(prev[name], flow)).pow(2).mean(dim=1, keepdim=True)
            out[name] = float((visible * err).sum()) / denom if denom else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# without a target: real rainy video


SCENE_WINDOW = 5          # frames of the temporal median that estimates the rain-free scene
MOTION_THRESHOLD = 0.02   # smoothed mean-RGB change of the scene estimate above which a pixel moves
MOTION_SIGMA = 2.0        # px: Gaussian smoothing of that change (noise averages out, motion does not)
MOTION_MARGIN = 2         # px: moving regions grown by this, so that their edges count as moving
RAW_THRESHOLD = 0.08      # mean-RGB change of the rainy frames themselves that marks a fast object ...
STREAK_WIDTH = 3          # px: ... over a region wider than this (thinner changes are rain streaks)
FLICKER_NAME = ("static-region flicker: mean absolute RGB change between consecutive frames over the pixels where "
                "the rain-free scene (temporal median of {window} rainy frames) does not move; lower is steadier")
NO_REFERENCE_WARP_NAME = ("warping error without a target: as Lai et al. 2018, with flow and occlusion from the "
                          "temporal-median scene estimate instead of clean frames")


class _Frames:
    """A sequence of frames given as arrays (HxWx3 in [0, 1], or uint8) or image files, read on demand and
    kept in a small least-recently-used store (a long video never sits in memory whole)."""

    def __init__(self, items: Sequence[np.ndarray | str | Path], keep: int):
        self.items, self.keep = items, max(2, keep)
        self._store: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self._store:
            self._store.move_to_end(i)
            return self._store[i]
        item = self.items[i]
        if isinstance(item, (str, Path)):
            frame = load_image(item)
        else:
            frame = np.asarray(item)
            frame = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise DataError(f"frame {i} has shape {frame.shape}; expected H x W x 3 (RGB)")
        self._store[i] = frame
        while len(self._store) > self.keep:
            self._store.popitem(last=False)
        return frame


def scene_estimate(frames: Sequence[np.ndarray], t: int, window: int = SCENE_WINDOW) -> np.ndarray:
    """The rain-free scene at frame t: per pixel and channel, the median of the ``window`` frames centred on
    t (edges replicated, as the networks' windows)."""
    return np.median(np.stack([frames[k] for k in window_indices(t, len(frames), window)]), axis=0)


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def static_mask(scene_prev: np.ndarray, scene_cur: np.ndarray, frame_prev: np.ndarray | None = None,
                frame_cur: np.ndarray | None = None, threshold: float = MOTION_THRESHOLD,
                sigma: float = MOTION_SIGMA, margin: int = MOTION_MARGIN, raw_threshold: float = RAW_THRESHOLD,
                streak_width: int = STREAK_WIDTH) -> np.ndarray:
    """H x W booleans: True where the scene did not move from t-1 to t (see the module docstring).

    Moving: the scene estimates' smoothed change exceeds ``threshold`` (slow motion, which the median
    keeps), or the rainy frames themselves changed by more than ``raw_threshold`` over a region wider
    than ``streak_width`` px (fast objects, which a median of a few frames drops as it drops rain; the
    opening by a disc of that diameter removes the thin streaks). Grown by ``margin`` px."""
    change = np.abs(scene_cur - scene_prev).mean(axis=2)
    moving = ndimage.gaussian_filter(change, sigma) > threshold
    if frame_prev is not None and frame_cur is not None:
        raw = np.abs(frame_cur - frame_prev).mean(axis=2) > raw_threshold
        if streak_width > 0:
            raw = ndimage.binary_opening(raw, structure=_disc(streak_width // 2 + 1))
        moving |= raw
    if margin > 0 and moving.any():
        moving = ndimage.binary_dilation(moving, structure=_disc(margin))
    return ~moving


@dataclass
class NoReferenceResult:
    """Per frame pair (t-1, t) and pooled: ``flicker[name]``, ``warp_error[name]`` (NaN when off), and the
    share of pixels that were static. ``per_pair`` has a row per pair: ``frame`` (t), ``static_share``,
    ``flicker_<name>``, ``warp_error_<name>``."""

    flicker: dict[str, float]
    warp_error: dict[str, float]
    static_share: float
    pairs: int
    window: int
    per_pair: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> dict[str, Any]:
        return {"flicker": dict(self.flicker), "warp_error": dict(self.warp_error),
                "static_share": self.static_share, "pairs": self.pairs, "scene_window": self.window,
                "flicker_measure": FLICKER_NAME.format(window=self.window),
                "warp_measure": NO_REFERENCE_WARP_NAME, "units": "RGB in [0, 1]"}


def _tensor(frame: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0)


def no_reference_temporal(videos: dict[str, Sequence[np.ndarray | str | Path]], reference: str = "input",
                          window: int = SCENE_WINDOW, warp: bool = True, threshold: float = MOTION_THRESHOLD,
                          names: Sequence[str] | None = None) -> NoReferenceResult:
    """Static-region flicker and warping error of each named video, without clean frames.

    videos: equally long sequences of frames (arrays H x W x 3 in [0, 1] or uint8, or image files), e.g.
        ``{"input": rainy, "output": derained}``; ``videos[reference]`` (the rainy input) gives the scene
        estimate, its motion mask and (``warp``) its flow, shared by every video so that all are scored on
        the same pixels. Flicker is pooled over all pairs (changed pixels / static pixels); the warping
        error is the mean of the pairs' errors. ``names``: a label per frame for ``per_pair``.
    """
    if reference not in videos:
        raise ValueError(f"reference {reference!r} is not among the videos {sorted(videos)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    lengths = {name: len(v) for name, v in videos.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"the videos have different frame counts {lengths}: measure videos of one clip")
    n = lengths[reference]
    if n < 2:
        raise DataError(f"a temporal measure needs at least 2 frames, got {n}")
    seqs = {name: _Frames(v, window + 2) for name, v in videos.items()}
    ref = seqs[reference]
    changed = {name: 0.0 for name in seqs}
    static_total = 0
    pixels = 0
    warps: dict[str, list[float]] = {name: [] for name in seqs}
    rows = []
    scene_prev = scene_estimate(ref, 0, window)
    for t in range(1, n):
        scene_cur = scene_estimate(ref, t, window)
        if scene_cur.shape != scene_prev.shape or any(seqs[k][t].shape != scene_cur.shape for k in seqs):
            raise DataError(f"frame {t}: the frames of a video (and of its outputs) must share one size")
        static = static_mask(scene_prev, scene_cur, ref[t - 1], ref[t], threshold)
        count = int(static.sum())
        static_total += count
        pixels += static.size
        row: dict[str, Any] = {"frame": names[t] if names is not None else t, "static_share": count / static.size}
        for name, seq in seqs.items():
            diff = np.abs(seq[t] - seq[t - 1]).mean(axis=2)
            total = float(diff[static].sum())
            changed[name] += total
            row[f"flicker_{name}"] = total / count if count else math.nan
        if warp:
            prev = {"clean": _tensor(scene_prev), **{k: _tensor(seq[t - 1]) for k, seq in seqs.items()}}
            cur = {"clean": _tensor(scene_cur), **{k: _tensor(seq[t]) for k, seq in seqs.items()}}
            errors = warping_errors(prev, cur)
            for name in seqs:
                warps[name].append(errors[name])
                row[f"warp_error_{name}"] = errors[name]
        rows.append(row)
        scene_prev = scene_cur
    flicker = {name: (changed[name] / static_total if static_total else math.nan) for name in seqs}
    warp_error = {name: (float(np.nanmean(v)) if v and not all(math.isnan(x) for x in v) else math.nan)
                  for name, v in warps.items()}
    return NoReferenceResult(flicker=flicker, warp_error=warp_error, static_share=static_total / pixels,
                             pairs=n - 1, window=window, per_pair=pd.DataFrame(rows))


# --------------------------------------------------------------------------------------------------
# training pairs


class TemporalPairs(Dataset):
    """Items ``(frames [T+1, 3, H, W], targets [2, 3, H, W])``: the rainy frames t-1-r .. t+r (edges
    replicated; ``frames[:-1]`` is the window of t-1, ``frames[1:]`` that of t) and the clean frames t-1, t.

    ``source``: a :class:`~nas_restore.data.synthetic.SyntheticRainDataset` made with ``frames = T + 2``
    (its clips render every frame's clean version), or a ``VideoClipFolder`` (or a ``Subset`` of one), read
    here with one random crop shared by both windows. A clip's first frame pairs with its second.
    """

    def __init__(self, source: Dataset, frames: int, patch_size: int | None = None, augment: bool = True,
                 seed: int = 0):
        self.frames, self.patch_size, self.augment, self.seed = int(frames), patch_size, augment, int(seed)
        indices = None
        if isinstance(source, Subset):
            source, indices = source.dataset, list(source.indices)
        if isinstance(source, SyntheticRainDataset):
            if source.frames != self.frames + 2:
                raise ValueError(f"TemporalPairs needs the synthetic data made with frames={self.frames + 2} "
                                 f"(T + 2), got frames={source.frames}")
        elif not isinstance(source, VideoClipFolder):
            raise DataError(f"the temporal loss needs video: built-in synthetic clips (data.folder: null) or a "
                            f"folder of clips (input/<clip>/), not {type(source).__name__}; set "
                            f"loss.temporal_weight: 0 for image pairs")
        self.source = source
        self.indices = indices if indices is not None else list(range(len(source)))
        if isinstance(source, VideoClipFolder):
            self._starts: dict[str, int] = {}
            self._lengths: dict[str, int] = {}
            for i, (clip, t) in enumerate(source.index):
                self._starts.setdefault(clip, i - t)
                self._lengths[clip] = self._lengths.get(clip, 0) + 1

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = self.indices[index]
        if not hasattr(self, "_starts"):
            rainy, clean = self.source.render(i)            # [T+2, H, W, 3] each
            c = (self.frames + 2) // 2
            frames = torch.from_numpy(np.ascontiguousarray(rainy[: self.frames + 1].transpose(0, 3, 1, 2)))
            targets = torch.from_numpy(np.ascontiguousarray(clean[c - 1: c + 1].transpose(0, 3, 1, 2)))
            return frames, targets
        return self._clip_item(i)

    def _clip_item(self, i: int) -> tuple[Tensor, Tensor]:
        src = self.source
        clip, t = src.index[i]
        start, n = self._starts[clip], self._lengths[clip]
        t = max(t, 1)
        r = self.frames // 2
        rainy_ids = [min(max(k, 0), n - 1) for k in range(t - 1 - r, t + r + 1)]
        rainy = [load_image(src.pair_paths(start + k)[0]) for k in rainy_ids]
        clean = [load_image(src.pair_paths(start + k)[1]) for k in (t - 1, t)]
        h, w = clean[0].shape[:2]
        rng = np.random.default_rng([abs(self.seed), i] + ([int(torch.randint(0, 2**31 - 1, (1,)))]
                                                          if self.augment else []))
        y0 = x0 = 0
        ph, pw = h, w
        if self.patch_size is not None:
            if h < self.patch_size or w < self.patch_size:
                raise ValueError(f"clip {clip!r} is {h}x{w} px, smaller than patch_size={self.patch_size}")
            ph = pw = self.patch_size
            y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        flip = bool(self.augment and rng.random() < 0.5)

        def stack(imgs: list[np.ndarray]) -> Tensor:
            arr = np.stack([im[y0:y0 + ph, x0:x0 + pw] for im in imgs])
            if flip:
                arr = arr[:, :, ::-1]
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32))

        return stack(rainy), stack(clean)


__all__ = ["TemporalPairs", "clean_flow", "temporal_loss", "warping_errors", "TEMPORAL_ALPHA", "no_reference_temporal",
           "NoReferenceResult", "scene_estimate", "static_mask", "SCENE_WINDOW"]
