"""Pick the torch device and the matching pytorch-lightning accelerator settings.

One place for this so that every command (search, retrain, derain) accepts the same
``--device auto|cpu|cuda|cuda:N|mps`` spelling and fails the same clear way on a CPU-only torch.
"""
from __future__ import annotations

import logging

import torch

from nas_restore.errors import UserError

log = logging.getLogger(__name__)


class DeviceError(UserError, ValueError):
    """A device the user asked for that this machine or this torch build does not have."""


CUDA_MISSING = ("CUDA requested but torch.cuda.is_available() is False (this torch is a CPU build?): "
                "use --device cpu or auto")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name into a ``torch.device``; "auto" prefers cuda, then mps, then cpu."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        log.debug("device auto -> %s", device)
        return device
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(CUDA_MISSING)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name!r} asked for GPU {device.index} but only {count} CUDA device(s) "
                             f"are visible: use cuda:0..cuda:{count - 1} or auto")
    elif device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {name!r}: torch.backends.mps.is_available() is False: use --device cpu or auto")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def lightning_accelerator(device: torch.device, devices: int = 1) -> tuple[str, int | list[int]]:
    """``(accelerator, devices)`` for ``pl.Trainer``: an indexed cuda device pins that one GPU,
    otherwise ``devices`` (a count) is passed through."""
    if devices < 1:
        raise DeviceError(f"devices must be >= 1, got {devices}")
    if device.type == "cuda":
        if device.index is not None:
            if devices != 1:
                raise DeviceError(f"device {device} names one GPU but devices={devices}: use device 'cuda' "
                                 f"with devices={devices}, or devices=1")
            return "gpu", [device.index]
        return "gpu", devices
    if device.type == "mps":
        return "mps", 1
    if device.type == "cpu":
        return "cpu", devices
    raise DeviceError(f"no lightning accelerator for device {device}: use cpu, cuda or mps")
