"""Cost of a network: parameters, FLOPs and latency, measured one way everywhere.

Search objectives (multi-objective strategies), ``compare`` tables, benchmarks and reports all read
their cost figures from here, so that a "FLOPs" column means the same thing in every file.

FLOPs follow the convention of torch's ``FlopCounterMode``: one multiply-add counts as two FLOPs
(so a 3x3 conv from 3 to 8 channels on 32x32 costs 2*3*8*9*32*32 FLOPs). Papers that report MACs
("FLOPs" in many NAS papers) give half of this figure.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameter elements of ``model`` (the toolkit's one count; every network's are trainable)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def input_shape(frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    """The ``[B, T, 3, H, W]`` shape every restoration network of the toolkit takes."""
    return (batch, frames, 3, height, width)


@torch.no_grad()
def count_flops(model: nn.Module, shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """FLOPs of one forward pass on a zero-free random input of ``shape`` (2 FLOPs per multiply-add).

    Counted by torch's dispatcher-level ``FlopCounterMode`` (convolutions, matmuls, attention);
    element-wise operations, warping and pooling are not counted, as in every common counter.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.rand(shape, device=device)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class Latency:
    """Wall-clock seconds per forward pass (median and spread over ``repeats`` timed runs)."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    threads: int
    device: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@torch.no_grad()
def measure_latency(model: nn.Module, shape: tuple[int, ...], device: str | torch.device = "cpu",
                    repeats: int = 3, warmup: int = 1) -> Latency:
    """Time ``repeats`` forward passes after ``warmup`` untimed ones (CUDA synchronised).

    A benchmark figure, never a test assertion: it depends on the machine's load.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return Latency(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeats=len(times),
                   threads=torch.get_num_threads(), device=str(device))


def peak_cuda_memory(device: torch.device) -> int | None:
    """Peak allocated CUDA bytes since the last reset, or None off CUDA (use RSS there)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux/macOS ``ru_maxrss``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
