"""Cost of a network: parameters, FLOPs and latency, measured one way everywhere.

Search objectives (multi-objective strategies), ``compare`` tables, benchmarks and reports all read
their cost figures from here, so that a "FLOPs" column means the same thing in every file.

FLOPs follow the convention of torch's ``FlopCounterMode``: one multiply-add counts as two FLOPs
(so a 3x3 conv from 3 to 8 channels on 32x32 costs 2*3*8*9*32*32 FLOPs). Papers that report MACs
("FLOPs" in many NAS papers) give half of this figure.

Speed is read against the machine's own limit: :func:`conv_peak` measures what one 96->96 3x3
convolution (the bulk of every network here) reaches in GFLOP/s in a precision, and
:func:`profile_network` gives a network's latency, frames/s, achieved GFLOP/s, peak memory and, when
given those peaks, its fraction of that limit, per precision (``nas-restore profile``, the benchmarks).

Peak memory of one forward pass, as live tensor bytes at their highest: on CUDA
``torch.cuda.max_memory_allocated`` (reset just before); on CPU the bytes already held by the model
(parameters, buffers) and its input, plus the highest running sum of the allocations and frees that
torch's CPU allocator reports to ``torch.profiler`` (``profile_memory=True``) during the pass:
activations, autocast's weight copies, the output and the buffers oneDNN takes through torch. The
allocator tracks only what is allocated while profiling, hence the running sum over the pass rather
than its reported totals. It is exact for torch's tensors, unlike the resident set size
(``ru_maxrss`` is the process's lifetime peak, and freed memory stays resident in glibc's arenas);
memory that a library allocates on its own is not in it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from nas_restore.config import ConfigError
from nas_restore.precision import Precision, resolve_precision

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

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# --------------------------------------------------------------------------------------------------
# the machine's measured limit, and a network's figures against it

CONV_PEAK_CHANNELS = 96
CONV_PEAK_SHAPE = (1, CONV_PEAK_CHANNELS, 240, 320)  # N, C, H, W: one TMICS-width feature map


def _as_precision(precision: str | Precision, device: torch.device) -> Precision:
    return precision if isinstance(precision, Precision) else resolve_precision(precision, device)


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def conv_flops(channels_in: int, channels_out: int, kernel: int, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of a stride-1, same-padded ``kernel`` x ``kernel`` convolution, as ``FlopCounterMode`` counts them."""
    return 2 * batch * channels_in * channels_out * kernel * kernel * height * width


@dataclass
class ConvPeak:
    """What a 96->96 3x3 convolution reaches on this machine in one precision (the speed limit of a row)."""

    precision: str
    device: str
    shape: list[int]
    memory_format: str
    flops: int
    seconds: float          # median of the timed runs
    gflops: float           # flops / seconds / 1e9
    repeats: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        n, c, h, w = self.shape
        return (f"{self.precision}: {self.gflops:.1f} GFLOP/s ({c}->{c} 3x3 conv on {n}x{c}x{h}x{w}, "
                f"{self.memory_format}, median of {self.repeats}: {1e3 * self.seconds:.1f} ms)")


@torch.no_grad()
def conv_peak(precision: str | Precision = "fp32", device: str | torch.device = "cpu",
              shape: Sequence[int] = CONV_PEAK_SHAPE, repeats: int = 5, warmup: int = 2) -> ConvPeak:
    """GFLOP/s of one 96->96 3x3 convolution (padding 1) in ``precision``: the machine's practical peak.

    fp32 runs NCHW in float32 (TF32 allowed on CUDA, as :func:`resolve_precision` sets); a mixed
    precision runs in its own format: weights and input already in its dtype and ``channels_last``,
    so the figure is the kernel's alone (a network's autocast adds the casts). Median of ``repeats``
    runs after ``warmup`` untimed ones; a benchmark figure, never a test assertion.
    """
    device = torch.device(device)
    precision = _as_precision(precision, device)
    n, c, h, w = (int(v) for v in shape)
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device).eval()
    x = torch.rand(n, c, h, w, device=device)
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    if precision.mixed:
        conv = conv.to(dtype=precision.dtype)
        x = x.to(dtype=precision.dtype)
    conv = conv.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    sync = _sync(device)
    for _ in range(max(0, warmup)):
        conv(x)
    sync()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        conv(x)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = conv_flops(c, c, 3, h, w, n)
    return ConvPeak(precision=precision.name, device=str(device), shape=[n, c, h, w],
                    memory_format="channels_last" if precision.channels_last else "NCHW", flops=flops,
                    seconds=seconds, gflops=flops / seconds / 1e9, repeats=len(times), threads=torch.get_num_threads())


CPU_MEMORY_METHOD = "model + input + the pass's peak allocations (torch CPU allocator via torch.profiler)"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated"


def _allocation_peak(prof: Any, device_type: str = "cpu") -> int | None:
    """The highest running sum of a profiled region's allocations and frees (None: no allocation events)."""
    from torch._C._profiler import _EventType

    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == device_type:
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    if not events:
        return None
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def held_bytes(*items: nn.Module | torch.Tensor) -> int:
    """Bytes of the tensors a model (parameters, buffers) or a tensor holds; shared storage counted once."""
    seen: dict[int, int] = {}
    for item in items:
        tensors = [item] if isinstance(item, torch.Tensor) else [*item.parameters(), *item.buffers()]
        for t in tensors:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def _without_kineto_banner() -> Iterator[None]:
    """Drop the ``USDT:``/``STAGE:`` lines torch's profiler library writes to fd 2; other stderr output is kept."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(("USDT:", "STAGE:"))]
            if kept:
                sys.stderr.write("".join(kept))


def peak_forward_memory(fn: Callable[[], Any], device: str | torch.device = "cpu",
                        held: int = 0) -> tuple[int, str]:
    """(peak bytes, how measured) of running ``fn`` once: live tensor bytes at their highest.

    CUDA: ``max_memory_allocated`` after a reset (everything live on the device). CPU: ``held`` (the
    bytes already live that count, e.g. :func:`held_bytes` of the model and its input) plus the highest
    running sum of the allocations during ``fn`` (see the module docstring); where the profiler gives
    no allocation events, the process's peak resident set size, said in the method.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), CUDA_MEMORY_METHOD
    from torch.profiler import ProfilerActivity, profile

    peak = None
    try:
        with _without_kineto_banner(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        peak = _allocation_peak(prof, "cpu")
    except (AttributeError, ImportError, RuntimeError) as err:  # a torch without these internals
        log.warning("CPU allocator peak unavailable (%s): reporting peak RSS", err)
    if peak is None:
        fn()
        return peak_rss_bytes(), "process peak RSS (ru_maxrss; the allocator peak was unavailable)"
    return held + peak, CPU_MEMORY_METHOD


@dataclass
class ProfileRow:
    """One network in one precision: its cost, its speed and that speed against the machine's peak."""

    precision: str
    device: str
    threads: int
    shape: list[int]
    memory_format: str
    params: int
    flops: int                      # per forward (one output frame per window), 2 per multiply-add
    macs: int                       # flops / 2
    seconds_per_frame: float        # median of the timed passes / batch
    latency_min_s: float
    latency_max_s: float
    repeats: int
    warmup: int
    fps: float
    gflops: float                   # flops / seconds_per_frame / 1e9 (achieved)
    peak_memory_bytes: int
    memory_method: str
    conv_peak_gflops: float | None = None
    fraction_of_peak: float | None = None   # gflops / conv_peak_gflops of this precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _no_grad_call(model: nn.Module, x: torch.Tensor) -> None:
    model(x)


def resolve_precisions(names: Iterable[str | Precision], device: str | torch.device) -> list[Precision]:
    """Each name resolved on ``device`` (``auto`` included), duplicates after resolving dropped, order kept."""
    device = torch.device(device)
    out: list[Precision] = []
    for name in names:
        precision = _as_precision(name, device)
        if precision not in out:
            out.append(precision)
    if not out:
        raise ConfigError("no precision given: use one or more of fp32, bf16, fp16, auto")
    return out


def profile_network(model: nn.Module, shape: tuple[int, ...], precisions: Iterable[str | Precision] = ("fp32",),
                    device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 2,
                    peaks: dict[str, ConvPeak] | None = None) -> list[ProfileRow]:
    """One :class:`ProfileRow` per precision of ``model`` on inputs of ``shape`` (``[B, T, 3, H, W]``).

    FLOPs are counted once (they do not depend on the precision); each precision runs on its own
    copy of the model (:meth:`Precision.wrap`: autocast, ``channels_last`` weights, fp32 outputs), is
    timed by :func:`measure_latency` and then run once more for its peak memory
    (:func:`peak_forward_memory`). ``peaks`` (by precision name, from :func:`conv_peak`) add each
    row's fraction of the machine's peak.
    """
    device = torch.device(device)
    resolved = resolve_precisions(precisions, device)
    model = model.to(device).eval()
    params = count_parameters(model)
    flops = count_flops(model, shape, device)
    batch = int(shape[0])
    rows = []
    for precision in resolved:
        net = precision.wrap(copy.deepcopy(model)).to(device).eval()
        latency = measure_latency(net, shape, device, repeats=repeats, warmup=warmup)
        x = torch.rand(shape, device=device)

        peak_bytes, method = peak_forward_memory(functools.partial(_no_grad_call, net, x), device,
                                                 held=held_bytes(net, x))
        seconds = latency.median_s / batch
        gflops = flops / batch / seconds / 1e9
        peak = (peaks or {}).get(precision.name)
        rows.append(ProfileRow(
            precision=precision.name, device=str(device), threads=latency.threads, shape=list(shape),
            memory_format="channels_last" if precision.channels_last else "NCHW", params=params,
            flops=flops // batch, macs=flops // batch // 2, seconds_per_frame=seconds,
            latency_min_s=latency.min_s / batch, latency_max_s=latency.max_s / batch, repeats=latency.repeats,
            warmup=warmup, fps=1.0 / seconds, gflops=gflops, peak_memory_bytes=peak_bytes, memory_method=method,
            conv_peak_gflops=peak.gflops if peak else None,
            fraction_of_peak=gflops / peak.gflops if peak else None))
    return rows
