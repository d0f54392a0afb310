"""Optical flow and backward warping: what aligns frames for a network, a loss and a metric.

TMICS's OFM alignment warps neighbours onto the centre frame; the temporal-consistency loss and the
warping-error metric (:mod:`nas_restore.temporal`) warp the previous output along the flow of the clean
frames. All use :func:`flow_warp`; the classical flow is scikit-image's iterative Lucas-Kanade
(:func:`classical_flow`), run without gradient and cached per clip window (:class:`ClassicalFlow`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from skimage.color import rgb2gray
from skimage.registration import optical_flow_ilk


def flow_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warping: output(p) = image(p + flow(p)), bilinear, border padding.

    Always computed in fp32 (or fp64), also under bf16/fp16 autocast: bfloat16 keeps 8 bits of mantissa, so a
    pixel coordinate near 300 would be off by up to 2 px, and grid_sample's gradient with respect to the
    flow overflows (a learned flow's weights turned NaN after one bf16 step of the demo search). The
    result comes back in the image's dtype.
    """
    b, _, h, w = image.shape
    dtype = torch.promote_types(image.dtype, torch.float32)  # fp32, or fp64 where the image is
    with torch.autocast(image.device.type, enabled=False):
        source, flow = image.to(dtype), flow.to(dtype)
        ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=dtype),
                                torch.arange(w, device=image.device, dtype=dtype), indexing="ij")
        x_new = xs.unsqueeze(0) + flow[:, 0]
        y_new = ys.unsqueeze(0) + flow[:, 1]
        grid = torch.stack((2.0 * x_new / max(w - 1, 1) - 1.0, 2.0 * y_new / max(h - 1, 1) - 1.0), dim=-1)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.to(image.dtype)


class FlowCache:
    """A least-recently-used store of classical flows, keyed by a hash of a clip window's pixels.

    Bounded in bytes, not entries (a 5-frame window's flows take 4 x 2 x H x W float32: 128 KiB at 64x64,
    4.7 MiB at 320x480). Keyed by content, so the same window gets its flow back whatever its batch
    or position, epoch after epoch; a randomly cropped or augmented window is a new key.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if key in self._items or value.nbytes > self.max_bytes:
            return
        self._items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


CLASSICAL_FLOW_CACHE = FlowCache()


def classical_flow(reference: np.ndarray, moving: np.ndarray, radius: int = 7, num_warp: int = 10) -> np.ndarray:
    """Flow [2, H, W] (x, y) with ``moving(p + flow(p)) ~ reference(p)``, from two [3, H, W] RGB frames.

    scikit-image's iterative Lucas-Kanade on the grey images: the backward-warping flow that
    :func:`flow_warp` needs to bring ``moving`` onto ``reference``.
    """
    ref = rgb2gray(np.moveaxis(reference, 0, -1))
    mov = rgb2gray(np.moveaxis(moving, 0, -1))
    v, u = optical_flow_ilk(ref, mov, radius=radius, num_warp=num_warp)
    return np.stack([u, v]).astype(np.float32)


class ClassicalFlow(nn.Module):
    """Flow from the centre frame to every neighbour by a classical method: no weights, no gradient.

    The stand-in for the pretrained RAFT of TMICS's light network (no weights can be downloaded
    here). It runs in numpy on the CPU, window by window: about 36 ms per frame pair at 64x64 and
    1.2-1.6 s at 320x480 on this project's 2-core CPU (4 pairs per 5-frame window), plus a copy to
    the CPU and back on a GPU. Flows are cached per window (:class:`FlowCache`), so repeated epochs
    over the same windows pay it once.
    """

    def __init__(self, cache: FlowCache | None = None):
        super().__init__()
        self._own_cache = cache  # None: the shared module-level cache (not copied with the model)

    @property
    def cache(self) -> FlowCache:
        return self._own_cache if self._own_cache is not None else CLASSICAL_FLOW_CACHE

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> flows [B, T, 2, H, W] from the centre frame to each frame (zero at the centre)."""
        clips = frames.detach().float().cpu().numpy()
        b, t, _, h, w = clips.shape
        c = t // 2
        out = np.empty((b, t, 2, h, w), dtype=np.float32)
        for i, clip in enumerate(clips):
            clip = np.ascontiguousarray(clip)
            key = f"{clip.shape}:" + hashlib.blake2b(clip.tobytes(), digest_size=16).hexdigest()
            flows = self.cache.get(key)
            if flows is None:
                flows = np.zeros((t, 2, h, w), dtype=np.float32)
                for k in range(t):
                    if k != c:
                        flows[k] = classical_flow(clip[c], clip[k])
                self.cache.put(key, flows)
            out[i] = flows
        return torch.from_numpy(out).to(device=frames.device, dtype=frames.dtype)


__all__ = ["flow_warp", "classical_flow", "FlowCache", "CLASSICAL_FLOW_CACHE", "ClassicalFlow"]
