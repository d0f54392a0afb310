"""Training losses for restoration: L1 + SSIM (+ optional MSE, temporal consistency, contrastive prior),
with a differentiable SSIM.

The temporal term (Lai et al. 2018's short-term loss) lives in :mod:`nas_restore.temporal`, the
contrastive prior (RDMC) in :mod:`nas_restore.contrastive`; both are off by default.

Why a torch SSIM here when the project measures SSIM with scikit-image: the loss must be
differentiable and run on the training device. With ``padding="valid"`` (the default) this
implementation matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)`` to ~1e-6, because
scikit-image filters the whole image and then discards a border of ``(win_size - 1) // 2`` pixels,
which leaves exactly the positions where an 11x11 window lies fully inside the image.

Why not ``torchmetrics.functional.image.structural_similarity_index_measure`` (measured with
torchmetrics 1.9, sigma 1.5, data_range 1): its full map is our ``padding="reflect"`` map and cropping 5
pixels gives our ``"valid"`` one, and the means agree to < 1e-5, but (1) in float32 its 121-tap 2-D
kernel is less accurate: per-pixel maps differ from ours by up to 7e-4 on 256x256 natural images
(ours 3e-4, torchmetrics 6e-4 from float64), its valid mean is 1.1e-5 off scikit-image's (ours 1e-6);
(2) under ``torch.autocast("cpu", dtype=torch.bfloat16)`` it gives SSIM(x, x) = -0.79 on a natural
image (ours 1.0); (3) it is 3-4x slower (8x3x64x64, forward+backward, 1 thread: 17.5 ms vs 3.8 ms);
(4) with a gaussian kernel it ignores ``kernel_size`` (window = 2 * int(3.5 * sigma + 0.5) + 1), so
``window`` could not be honoured. Gradients agree (max difference 8e-8 for gradients up to 1.2e-4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas_restore.contrastive import FEATURES, ContrastivePrior
from nas_restore.temporal import temporal_loss

SSIM_K1 = 0.01
SSIM_K2 = 0.03
_PADDINGS = ("valid", "reflect")


def gaussian_window(window: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D gaussian of ``window`` taps (scipy's ``gaussian_filter`` with the same radius)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd number of pixels, got {window}")
    if sigma <= 0:
        raise ValueError(f"SSIM sigma must be > 0, got {sigma}")
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"SSIM needs pred and target of the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.ndim != 4:
        raise ValueError(f"SSIM expects [B, C, H, W] tensors, got shape {tuple(pred.shape)}")


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0, padding: str = "valid") -> Tensor:
    """Per-pixel SSIM of [B, C, H, W] images, channel by channel (grouped separable conv).

    ``padding="valid"`` returns [B, C, H-window+1, W-window+1] and matches scikit-image;
    ``padding="reflect"`` keeps [B, C, H, W] (border windows see mirrored pixels, torch's "reflect",
    i.e. scipy's "mirror"), which is handy for patches smaller than the window; it does not match
    scikit-image (mean differs by ~0.02 on 40x48 noisy images), whose border pixels are discarded.
    """
    _check_pair(pred, target)
    if padding not in _PADDINGS:
        raise ValueError(f"SSIM padding must be one of {_PADDINGS}, got {padding!r}")
    _, c, h, w = pred.shape
    if padding == "valid" and (h < window or w < window):
        raise ValueError(f"SSIM with padding='valid' needs images of at least {window}x{window} pixels, "
                         f"got {h}x{w}: use padding='reflect' or a smaller window")
    # Blur the five moments in one grouped, separable convolution (5*C groups).
    g = gaussian_window(window, sigma, dtype=pred.dtype, device=pred.device)
    groups = 5 * c
    kh = g.view(1, 1, window, 1).expand(groups, 1, window, 1)
    kw = g.view(1, 1, 1, window).expand(groups, 1, 1, window)
    stacked = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    if padding == "reflect":
        r = window // 2
        stacked = F.pad(stacked, (r, r, r, r), mode="reflect")
    blurred = F.conv2d(F.conv2d(stacked, kh, groups=groups), kw, groups=groups)
    b = pred.shape[0]
    mu_x, mu_y, xx, yy, xy = blurred.view(b, 5, c, *blurred.shape[-2:]).unbind(1)

    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim_torch(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5,
               data_range: float = 1.0, padding: str = "valid") -> Tensor:
    """Mean SSIM over batch, channels and pixels (a scalar tensor, differentiable)."""
    return ssim_map(pred, target, window, sigma, data_range, padding).mean()


@dataclass
class LossConfig:
    """Weights of the loss terms; the defaults are TMICS's released config (L1 0.75, SSIM 1.1).

    temporal_weight: short-term temporal consistency (video; needs training pairs of shifted windows,
        which retraining makes from synthetic clips or a folder of clips); TMICS used 1 with alpha 50.
    contrastive_weight: RDMC's contrastive prior in ``contrastive_features`` ("filterbank", no weights;
        or "vgg16"/"vgg19" with ``contrastive_weights`` = a torchvision state dict file); RDMC used 0.1.
    """

    l1_weight: float = 0.75
    ssim_weight: float = 1.1
    mse_weight: float = 0.0
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    ssim_padding: str = "valid"
    temporal_weight: float = 0.0
    temporal_alpha: float = 50.0
    contrastive_weight: float = 0.0
    contrastive_features: str = "filterbank"
    contrastive_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("temporal_weight", "temporal_alpha", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.contrastive_features not in FEATURES:
            raise ValueError(f"loss.contrastive_features must be one of {FEATURES}, got "
                             f"{self.contrastive_features!r}")
        if self.contrastive_weight and self.contrastive_features != "filterbank" and not self.contrastive_weights:
            raise ValueError(f"loss.contrastive_features={self.contrastive_features!r} needs loss.contrastive_weights "
                             f"(a torchvision state dict file; nothing can be downloaded), or use 'filterbank'")
        for name in ("l1_weight", "ssim_weight", "mse_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.l1_weight == self.ssim_weight == self.mse_weight == 0:
            raise ValueError("loss: every weight (l1_weight, ssim_weight, mse_weight) is 0; set at least one > 0")
        if self.ssim_padding not in _PADDINGS:
            raise ValueError(f"loss.ssim_padding must be one of {_PADDINGS}, got {self.ssim_padding!r}")


class RestorationLoss(nn.Module):
    """total = l1_w * L1 + ssim_w * (1 - SSIM) + mse_w * MSE (+ contrast_w * contrastive prior, given the
    rainy input); terms with weight 0 are skipped. The temporal term is :meth:`temporal`, which the
    training step adds for batches of shifted windows."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.contrastive: nn.Module | None = None
        if self.config.contrastive_weight:
            self.contrastive = ContrastivePrior(self.config.contrastive_features, self.config.contrastive_weights)

    def temporal(self, out_prev: Tensor, out_cur: Tensor, clean_prev: Tensor, clean_cur: Tensor) -> Tensor:
        """The unweighted short-term temporal loss (see :mod:`nas_restore.temporal`)."""
        return temporal_loss(out_prev, out_cur, clean_prev, clean_cur, alpha=self.config.temporal_alpha)

    def forward(self, pred: Tensor, target: Tensor,
                rainy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the weighted total and the unweighted parts (``l1``, ``ssim_loss`` = 1-SSIM, ``mse``,
        ``contrastive`` when its weight is > 0 and ``rainy`` [B, 3, H, W] is given)."""
        if pred.shape != target.shape:
            raise ValueError(f"loss: prediction shape {tuple(pred.shape)} differs from target shape "
                             f"{tuple(target.shape)}")
        cfg = self.config
        parts: dict[str, Tensor] = {}
        total = pred.new_zeros(())
        if cfg.l1_weight:
            parts["l1"] = F.l1_loss(pred, target)
            total = total + cfg.l1_weight * parts["l1"]
        if cfg.ssim_weight:
            ssim = ssim_torch(pred, target, cfg.ssim_window, cfg.ssim_sigma, 1.0, cfg.ssim_padding)
            parts["ssim_loss"] = 1.0 - ssim
            total = total + cfg.ssim_weight * parts["ssim_loss"]
        if cfg.mse_weight:
            parts["mse"] = F.mse_loss(pred, target)
            total = total + cfg.mse_weight * parts["mse"]
        if self.contrastive is not None and rainy is not None:
            parts["contrastive"] = self.contrastive(pred, target, rainy)
            total = total + cfg.contrastive_weight * parts["contrastive"]
        return total, parts
