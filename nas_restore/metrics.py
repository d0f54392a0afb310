"""PSNR and SSIM as deraining papers report them (the BasicSR / Restormer protocol).

The field scores on the Y channel of YCbCr computed with MATLAB's ``rgb2ycbcr`` coefficients
(ITU-R BT.601, "studio swing"): ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1],
so Y lies in [16, 235] on the [0, 255] scale. PSNR uses ``data_range=255`` on that scale; SSIM is the
Wang et al. gaussian-window SSIM (sigma 1.5, 11x11 window, population covariance) that MATLAB's
``ssim`` and BasicSR's ``calculate_ssim`` compute. Both come from scikit-image, not hand-written code.

Reproduction check (the hard requirement of the project): the 100 Rain100L rainy inputs scored against
their clean targets with ``Protocol()`` give **26.9029 dB / 0.83844** (literature "Input" row:
26.90 / 0.8384). What reproduces it: 8-bit PNGs read as uint8, divided by 255, Y computed in float64
and *not* rounded (BasicSR's ``to_y_channel``). Rounding Y to integers (MATLAB ``rgb2ycbcr`` on a uint8
image) gives 26.9001 dB / 0.83829 instead; ``Protocol(round_y=True)`` selects that variant.

Identical images have an infinite PSNR: :func:`psnr` and :func:`psnr_torch` return ``inf`` (not a cap),
so a mean over a folder is ``inf`` if any item is perfect, which is what it should honestly say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import skimage
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nas_restore.errors import UserError

ArrayLike = Union[np.ndarray, torch.Tensor]

# MATLAB rgb2ycbcr (BT.601) luma row, for R, G, B in [0, 1] -> Y on [0, 255]
# PSNR of an exact reconstruction is infinite: training logs, search scores and study means cap it here so
# that averages stay finite (a file's own evaluation reports inf, as it is).
MAX_PSNR = 100.0
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0
# Gaussian SSIM window of MATLAB / BasicSR: sigma 1.5, truncated to 11x11 by scikit-image
_SSIM_SIGMA = 1.5
_SSIM_MIN_SIDE = 11



class ProtocolError(UserError, ValueError):
    """Scoring settings that cannot score these images (a border that leaves nothing, ...)."""


@dataclass(frozen=True)
class Protocol:
    """How images are compared; every results table prints :meth:`describe`.

    ``data_range=255`` means pixel values are compared on the [0, 255] scale (inputs in [0, 1] are
    multiplied by 255; Y then lies in [16, 235]). ``quantize`` rounds prediction and target to 8-bit
    levels first, as when papers score the PNGs they saved (it changes nothing for images that came
    from 8-bit files). ``round_y`` rounds Y to integers as MATLAB's uint8 ``rgb2ycbcr`` does (off by
    default: BasicSR does not round, and that is what reproduces the published Rain100L input row).
    """

    y_channel: bool = True
    crop_border: int = 0
    data_range: float = 255.0
    quantize: bool = True
    round_y: bool = False

    def __post_init__(self) -> None:
        if self.crop_border < 0:
            raise ProtocolError(f"crop_border (--crop-border) must be >= 0, got {self.crop_border}")
        if self.data_range <= 0:
            raise ValueError(f"Protocol.data_range must be > 0, got {self.data_range}")

    def describe(self) -> str:
        """One line naming everything that changes the numbers."""
        space = "Y (ITU-R BT.601, MATLAB coefficients)" if self.y_channel else "RGB"
        extras = []
        if self.quantize:
            extras.append("8-bit quantised")
        if self.y_channel and self.round_y:
            extras.append("Y rounded")
        extra = (", " + ", ".join(extras)) if extras else ""
        return (f"PSNR/SSIM on {space}, [0,{self.data_range:g}], crop {self.crop_border} px{extra}, "
                f"skimage {skimage.__version__}")


def _to_hwc(img: ArrayLike, name: str) -> np.ndarray:
    """HxWx3 float64 array from an HxWx3 array or a [3, H, W] tensor."""
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.ndim == 3 and t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 array or a [3, H, W] tensor with values in [0, 1], "
                         f"got shape {tuple(arr.shape)}")
    return arr


def rgb_to_y(img: ArrayLike, round_y: bool = False) -> np.ndarray:
    """Y of YCbCr on [16, 235] (MATLAB ``rgb2ycbcr``) from an RGB image in [0, 1]; float64 HxW."""
    arr = _to_hwc(img, "image")
    y = arr @ _Y_COEFFS + _Y_OFFSET
    return np.round(y) if round_y else y


def _prepare(pred: ArrayLike, target: ArrayLike, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Both images on the protocol's scale (Y or RGB, [0, data_range]), borders cropped."""
    p, t = _to_hwc(pred, "pred"), _to_hwc(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: pred {tuple(p.shape)} vs target {tuple(t.shape)}")
    if protocol.quantize:
        p, t = np.round(np.clip(p, 0, 1) * 255.0) / 255.0, np.round(np.clip(t, 0, 1) * 255.0) / 255.0
    scale = protocol.data_range / 255.0
    if protocol.y_channel:
        p = rgb_to_y(p, protocol.round_y) * scale
        t = rgb_to_y(t, protocol.round_y) * scale
    else:
        p, t = p * protocol.data_range, t * protocol.data_range
    c = protocol.crop_border
    if c:
        if min(p.shape[:2]) <= 2 * c:
            raise ProtocolError(f"crop_border {c} (--crop-border) leaves nothing of a {p.shape[0]}x{p.shape[1]} "
                                "image: use a smaller border")
        p, t = p[c:-c, c:-c], t[c:-c, c:-c]
    return p, t


def psnr(pred: ArrayLike, target: ArrayLike, protocol: Protocol = Protocol()) -> float:
    """PSNR in dB (``inf`` for identical images) of HxWx3 [0, 1] images (or [3, H, W] tensors)."""
    p, t = _prepare(pred, target, protocol)
    if np.array_equal(p, t):
        return math.inf
    return float(peak_signal_noise_ratio(t, p, data_range=protocol.data_range))


def ssim(pred: ArrayLike, target: ArrayLike, protocol: Protocol = Protocol()) -> float:
    """Gaussian-window SSIM (MATLAB / BasicSR settings) of HxWx3 [0, 1] images; 1.0 when identical."""
    p, t = _prepare(pred, target, protocol)
    if min(p.shape[:2]) < _SSIM_MIN_SIDE:
        raise ProtocolError(f"SSIM needs images of at least {_SSIM_MIN_SIDE}x{_SSIM_MIN_SIDE} px after the border "
                         f"crop, got {p.shape[0]}x{p.shape[1]}")
    kwargs = dict(data_range=protocol.data_range, gaussian_weights=True, sigma=_SSIM_SIGMA,
                  use_sample_covariance=False)
    if protocol.y_channel:
        return float(structural_similarity(t, p, **kwargs))
    return float(structural_similarity(t, p, channel_axis=2, **kwargs))


def psnr_torch(pred: torch.Tensor, target: torch.Tensor, y_channel: bool = True, crop_border: int = 0,
               max_db: float | None = None) -> torch.Tensor:
    """Per-image PSNR (dB) of [B, 3, H, W] tensors in [0, 1], for fast validation during training.

    Same Y definition as :func:`psnr` (no quantisation). An exact reproduction gives ``inf``, or
    ``max_db`` when given (training logs cap it so that epoch means stay finite).
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"psnr_torch expects pred and target of one shape [B, 3, H, W]; got pred "
                         f"{tuple(pred.shape)} and target {tuple(target.shape)}")
    p, t = pred.detach().double(), target.detach().double()
    if y_channel:
        w = torch.as_tensor(_Y_COEFFS / 255.0, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        p, t = (p * w).sum(1, keepdim=True), (t * w).sum(1, keepdim=True)  # the +16 offset cancels
    if crop_border:
        p = p[..., crop_border:-crop_border, crop_border:-crop_border]
        t = t[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = (p - t).pow(2).flatten(1).mean(1)
    if max_db is not None:
        mse = mse.clamp_min(10 ** (-max_db / 10))
    return (10.0 * torch.log10(1.0 / mse)).float()


__all__ = ["Protocol", "rgb_to_y", "psnr", "ssim", "psnr_torch"]
