"""The contrastive prior of RDMC: the restored image is pulled towards the clean target and pushed away
from the rainy input, in a feature space.

    L = sum_i w_i * d(f_i(restored), f_i(clean)) / (d(f_i(restored), f_i(rainy)) + eps)

``d`` is the mean absolute difference and ``f_i`` the i-th level of a fixed feature extractor. RDMC/DRNet
uses ImageNet VGG19 features; no weights can be downloaded here, so two extractors are offered:

- ``"filterbank"`` (default, no weights): a fixed multi-scale bank of oriented first- and second-derivative
  of gaussian filters on the luminance, plus the two opponent colour channels. Oriented second derivatives
  are line detectors, so thin bright rain streaks give strong responses at their orientation; the scales
  (1, 1/2, 1/4 resolution) cover streak widths of about 1 to 8 px.
- ``"vgg16"`` / ``"vgg19"``: the convolutional trunk of VGG, defined here so that a torchvision state dict
  (keys ``features.N.weight`` / ``features.N.bias``) loads from a user-supplied file with
  ``torch.load(weights_only=True)``. Levels are the outputs of ``features[0, 2, 4, 8, 12]`` with weights
  1/32, 1/16, 1/8, 1/4, 1, as in the DRNet code (RESEARCH.md, RDMC); inputs are ImageNet-normalised.

The ratio is taken level by level (the formula above); DRNet divides the weighted sums instead.
Unlike DRNet's code, which detaches the restored features (so the term passes no gradient), the restored
image's features keep their graph here: the prior trains the network. Clean and rainy features are
constants (computed without gradient). The extractor's own weights are frozen buffers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURES = ("filterbank", "vgg16", "vgg19")
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
VGG_TAPS = (0, 2, 4, 8, 12)             # conv1_1, conv1_2, pool1, relu2_2, conv3_2 (DRNet)
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILTER_LEVELS = 3                        # resolutions 1, 1/2, 1/4, with sigma-1 px derivative filters
FILTER_ORIENTATIONS = 8
FILTER_WEIGHTS = (1.0, 1.0, 1.0)


def oriented_bank(sigma: float, orientations: int = FILTER_ORIENTATIONS) -> Tensor:
    """[2*orientations, 1, k, k] first- and second-derivative of gaussian kernels (zero mean, unit L1)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    ax = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    g = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    kernels = []
    for k in range(orientations):
        theta = math.pi * k / orientations
        u = x * math.cos(theta) + y * math.sin(theta)       # coordinate across the orientation
        first = -u / sigma**2 * g
        second = (u**2 / sigma**4 - 1 / sigma**2) * g       # responds to lines along theta + 90 degrees
        for kern in (first, second):
            kern = kern - kern.mean()
            kernels.append(kern / kern.abs().sum())
    return torch.stack(kernels).unsqueeze(1).float()


class FilterBankFeatures(nn.Module):
    """Fixed multi-scale oriented filter responses: a weight-free feature space that sees rain streaks."""

    def __init__(self, levels: int = FILTER_LEVELS, orientations: int = FILTER_ORIENTATIONS):
        super().__init__()
        self.levels = int(levels)
        # level i filters a 2^i times downsampled image: a 1-px sigma there is 2^i px at full size
        self.register_buffer("bank", oriented_bank(1.0, orientations), persistent=False)
        self.register_buffer("opponent", torch.tensor([[0.299, 0.587, 0.114], [0.5, -0.5, 0.0],
                                                       [0.25, 0.25, -0.5]]), persistent=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = torch.einsum("kc,bchw->bkhw", self.opponent.to(x.dtype), x)
        levels = []
        bank = self.bank.to(x.dtype)
        for i in range(self.levels):
            if i:
                x = F.avg_pool2d(x, 2, ceil_mode=True)
            r = bank.shape[-1] // 2
            lum = F.pad(x[:, :1], (r, r, r, r), mode="replicate")
            responses = F.conv2d(lum, bank)
            levels.append(torch.cat([responses, x[:, 1:]], dim=1))  # oriented structure + colour
        return levels


class VGGFeatures(nn.Module):
    """The ``features`` trunk of torchvision's VGG16/19 (same module indices, so its state dict loads),
    cut after the last tapped layer; returns the outputs of ``features[i]`` for ``i`` in ``taps``."""

    def __init__(self, arch: str = "vgg19", taps: tuple[int, ...] = VGG_TAPS):
        super().__init__()
        if arch not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG architecture {arch!r}: use one of {sorted(VGG_CONFIGS)}")
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_CONFIGS[arch]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.taps = tuple(sorted(taps))
        self.features = nn.Sequential(*layers[: self.taps[-1] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_torchvision(self, path: str | Path) -> None:
        """Load ``features.N.*`` tensors from a torchvision VGG state dict file (extra keys are ignored)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG weights file {path} does not exist: save a torchvision VGG state dict "
                                    f"there (torch.save(vgg19(weights=...).state_dict(), '{path.name}')) "
                                    f"or use features='filterbank'")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle errors vary
            raise ValueError(f"{path} cannot be loaded with torch.load(weights_only=True) ({err}): save only "
                             f"the state dict (tensors), not the model object") from err
        if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob["state_dict"], dict):
            blob = blob["state_dict"]
        if not isinstance(blob, dict):
            raise ValueError(f"{path} holds a {type(blob).__name__}, not a state dict")
        wanted = self.state_dict()
        state = {k: v for k, v in blob.items() if k in wanted}
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"{path} lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}: expected a "
                             f"torchvision VGG state dict with keys features.N.weight / features.N.bias")
        for key, value in state.items():
            if value.shape != wanted[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(wanted[key].shape)}: is it the right VGG (vgg16 vs vgg19)?")
        self.load_state_dict(state)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class ContrastivePrior(nn.Module):
    """``ContrastivePrior(features, weights_path)(restored, clean, rainy)`` -> scalar loss tensor.

    Images are [B, 3, H, W] in [0, 1]. ``features="vgg16"/"vgg19"`` needs ``weights_path`` (a torchvision
    state dict): randomly initialised VGG features are not a meaningful prior, so they are refused.
    """

    def __init__(self, features: str = "filterbank", weights_path: str | Path | None = None,
                 layer_weights: tuple[float, ...] | None = None, eps: float = 1e-4):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"contrastive features must be one of {FEATURES}, got {features!r}")
        if eps <= 0:
            raise ValueError(f"contrastive eps must be > 0, got {eps}")
        if features == "filterbank":
            if weights_path is not None:
                raise ValueError("contrastive weights_path is for features='vgg16'/'vgg19'; the filter bank "
                                 "has no weights: drop weights_path or pick a VGG")
            self.extractor: nn.Module = FilterBankFeatures()
            default = FILTER_WEIGHTS
        else:
            if weights_path is None:
                raise ValueError(f"contrastive features={features!r} needs weights_path (a torchvision "
                                 f"{features} state dict file; nothing can be downloaded here), or use "
                                 f"features='filterbank'")
            vgg = VGGFeatures(features)
            vgg.load_torchvision(weights_path)
            self.extractor = vgg
            default = VGG_WEIGHTS
        self.features = features
        self.layer_weights = tuple(layer_weights) if layer_weights is not None else default
        self.eps = float(eps)
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.extractor.eval()

    def train(self, mode: bool = True) -> "ContrastivePrior":
        super().train(mode)
        self.extractor.eval()  # frozen: never in training mode
        return self

    def forward(self, restored: Tensor, clean: Tensor, rainy: Tensor) -> Tensor:
        if not restored.shape == clean.shape == rainy.shape or restored.ndim != 4:
            raise ValueError(f"contrastive prior needs restored, clean and rainy of one [B, 3, H, W] shape, got "
                             f"{tuple(restored.shape)}, {tuple(clean.shape)}, {tuple(rainy.shape)}")
        self.extractor.to(restored.device)
        f_out = self.extractor(restored)
        with torch.no_grad():
            f_pos = self.extractor(clean)
            f_neg = self.extractor(rainy)
        if len(self.layer_weights) != len(f_out):
            raise ValueError(f"contrastive layer_weights has {len(self.layer_weights)} entries but the "
                             f"{self.features} extractor gives {len(f_out)} levels")
        total = restored.new_zeros(())
        for w, a, p, n in zip(self.layer_weights, f_out, f_pos, f_neg):
            total = total + w * F.l1_loss(a, p) / (F.l1_loss(a, n) + self.eps)
        return total


__all__ = ["ContrastivePrior", "FilterBankFeatures", "VGGFeatures", "oriented_bank", "FEATURES"]
