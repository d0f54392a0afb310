"""The numeric precision a network computes in: one setting for every command, resolved per device.

``--precision fp32|bf16|fp16|auto`` (and the ``precision`` field of every config) picks how the
*network's* forward (and backward) runs. Losses, metrics and the optimiser state always stay fp32,
and ``model.pt`` always holds fp32 weights, so a model trained in bf16 is evaluated, exported or
fine-tuned in any precision.

- ``bf16``: ``torch.autocast`` with bfloat16. On a CPU with AVX512-BF16 or AMX the convolutions run
  several times faster than fp32 (oneDNN); bfloat16 has fp32's range, so no loss scaling is needed.
- ``fp16``: autocast with float16 and a gradient scaler (Lightning's ``16-mixed``); for GPUs without
  fast bf16. CPUs get no speed from it.
- ``auto``: bf16 on a CPU with AVX512-BF16 or AMX and on a CUDA GPU that supports bf16; fp16 on an
  older CUDA GPU; fp32 elsewhere.

Where a precision below fp32 is used, the network's weights are also put in ``channels_last`` memory
format, which oneDNN and cuDNN need for their fast convolution kernels (measured in
``reports/inference_speed_cpu.md``). On CUDA, fp32 matrix products may use TF32 (``allow_tf32``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from nas_restore.config import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN needs it to be fast."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    mkldnn = getattr(torch.ops, "mkldnn", None)  # not Linux: ask oneDNN (true also where bf16 is emulated)
    try:
        return bool(mkldnn is not None and mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """A resolved precision on one device type: how to run a network's forward in it."""

    name: str            # fp32, bf16 or fp16 (never auto)
    device_type: str     # cpu, cuda or mps

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    @property
    def channels_last(self) -> bool:
        return self.mixed and self.device_type in ("cpu", "cuda")

    @property
    def lightning(self) -> str:
        """Lightning's ``Trainer(precision=...)`` value (it runs autocast and, for fp16, the grad scaler)."""
        return _LIGHTNING[self.name]

    @classmethod
    def from_lightning(cls, value: str, device_type: str) -> "Precision":
        """The precision a Lightning ``Trainer(precision=...)`` value stands for (what a training loop runs in)."""
        names = {flag: name for name, flag in _LIGHTNING.items()}
        return cls(names.get(str(value), "fp32"), device_type)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a network's forward runs in (a no-op for fp32)."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put the model's weights in the memory format this precision's kernels want (in place)."""
        if self.channels_last:
            to_channels_last(model)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` run in this precision, returning fp32 outputs (for inference); itself for fp32."""
        return AutocastModel(model, self) if self.mixed else model


class AutocastModel(nn.Module):
    """A network whose forward runs under autocast (weights channels_last); its outputs come back fp32."""

    def __init__(self, model: nn.Module, precision: Precision):
        super().__init__()
        self.model = precision.prepare(model)
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            out = self.model(x)
        return out.float()


def resolve_precision(name: str, device: torch.device | str = "cpu") -> Precision:
    """``fp32|bf16|fp16|auto`` on ``device`` -> a :class:`Precision`; a clear error where it cannot run."""
    text = str(name).strip().lower()
    if text not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if text == "auto":
        text = _auto(device_type)
    if text == "fp16" and device_type == "cpu":
        raise ConfigError("precision fp16 is for GPUs: on a CPU use bf16 (fast with AVX512-BF16 or AMX) or fp32")
    if device_type == "mps" and text == "bf16":
        raise ConfigError("precision bf16 is not supported on mps here: use fp32 or fp16")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls and convolutions on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return Precision(text, device_type)


def _auto(device_type: str) -> str:
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's weights channels_last (in place), except dilated convolutions, which stay NCHW.

    torch 2.13's CPU kernels (oneDNN) give wrong weight gradients for bf16 channels_last convolutions
    with dilation > 1 on inputs of 32 px and more: relative errors about 1, up to 1e33 and NaN, for
    depthwise and dense ones alike (the bf16 demo search turned NaN within two epochs). NCHW is right, so
    dilated convolutions keep NCHW weights and get NCHW inputs; ``tests/test_ops.py`` checks every op.
    """
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.dilation) > 1 and not getattr(module, "_nchw", False):
            # clone, not contiguous(): a [C, 1, k, k] depthwise weight counts as contiguous in either
            # layout, and its channels_last strides alone steer the kernel to the faulty path
            module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)
            module.register_forward_pre_hook(_nchw_input)
            module._nchw = True
    return model


def _nchw_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(),) + tuple(args[1:])


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Turn autocast off (losses and metrics stay fp32 inside a mixed-precision step)."""
    with torch.autocast(device_type, enabled=False):
        yield


__all__ = ["PRECISIONS", "Precision", "AutocastModel", "to_channels_last", "resolve_precision", "cpu_has_fast_bf16", "full_precision"]
