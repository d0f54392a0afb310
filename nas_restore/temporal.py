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

Flow is scikit-image's iterative Lucas-Kanade (:func:`nas_restore.flow.classical_flow`), computed
without gradient. A training item for this loss holds the window of T frames centred on t *and* the one
centred on t-1 (T+1 consecutive rainy frames) with the two clean centre frames: :class:`TemporalPairs`
makes them from the synthetic clips or a :class:`~nas_restore.data.folders.VideoClipFolder`, and the
training step runs the network on both windows (the "previous output" is that of the shifted window).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nas_restore.data.folders import DataError, VideoClipFolder, load_image
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


__all__ = ["TemporalPairs", "clean_flow", "temporal_loss", "warping_errors", "TEMPORAL_ALPHA"]
