"""Benchmark of one search step of a one-shot strategy on the TMICS space: time, memory, speed vs the machine's peak.

Usage:  python benchmarks/search_step.py [--configs cpu,paper,paper-chain] [--strategies darts,pcdarts,gdas:hard=true,spos]
                                         [--precision fp32,bf16] [--repeats 3] [--json FILE]
                                         [--report reports/search_step_cpu.md] [--device cpu]

What one step is: the strategy's own NNI supernet, built through the strategy registry
(``strategies.find_strategy(name).build(options).mutate_model(space)``; for darts, every candidate op
on every edge and one alpha vector per label), driven the way the strategy's NNI Lightning module
drives it, without Lightning around it:

- DARTS family (darts, gdas, pcdarts: the module's ``training_step`` is ``DartsLightningModule``'s): an
  architecture step (resample, forward + backward of the L1+SSIM search loss on a validation batch,
  Adam on the architecture parameters: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3) then a weight
  step (resample, forward + backward on a training batch, gradient norm clipped to 5, Adam lr 1e-3 on
  the weights). So two forward/backward passes through the mixed supernet.
- single path (spos: ``RandomSamplingLightningModule``'s ``training_step``): resample one path, then a
  weight step on a training batch.

A strategy whose step is neither (darts2's second-order step, tmics's triple-level step), a
multi-trial strategy (no supernet) or a name not registered yet is skipped with its reason.
``--strategies`` entries take options as ``NAME:KEY=VALUE:KEY=VALUE`` (values in YAML), e.g.
``gdas:hard=true``. ``--precision`` runs the supernet's forward under autocast (bf16: weights
channels_last; the loss in fp32), as ``nas-restore search --precision`` does.
Data are random tensors of the right shapes (the cost does not depend on the pixels).

Each row (config x strategy x precision) runs in a fresh Python process, so its memory figures are
its own. Memory is the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
at the end, and that peak minus the resident size just before the first step (read from
``/proc/self/statm``): the step's working memory (activations of every candidate op, gradients,
Adam states). Time is the median of ``--repeats`` steps after one untimed warm-up step; when a warm
forward pass predicts a step over ``--slow-s`` seconds, only the forward pass is timed, and when the
warm-up step itself takes longer, a single timed step follows (both said in the report).
Speed: the FLOPs of the timed unit (the step's forward and backward passes, or the forward alone) as
torch's ``FlopCounterMode`` counts them during the untimed warm-up, over the median time: achieved
GFLOP/s, and its fraction of the machine's peak, a 96->96 3x3 conv measured by
``nas_restore.profiling.conv_peak`` in the same precision at the start of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    # the CPU default of `nas-restore search`: preset cpu, SearchConfig/DataConfig defaults (batch 4, patch 48)
    "cpu": {"preset": "cpu", "settings": {}, "batch": 4, "patch": 48},
    # the paper's size: 96 channels, 4 + 4 cells of 4 nodes, 5 frames; patch 64, batch 1
    "paper": {"preset": "paper", "settings": {}, "batch": 1, "patch": 64},
    # the same with TMICS's released chain cells (4 ops in sequence) instead of DARTS cells
    "paper-chain": {"preset": "paper", "settings": {"cell": "chain"}, "batch": 1, "patch": 64},
    # a smoke test of the script itself (seconds): the cpu preset on one 16 px patch
    "tiny": {"preset": "cpu", "settings": {}, "batch": 1, "patch": 16},
}
DEFAULT_CONFIGS = "cpu,paper,paper-chain"


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parse_strategy(entry: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:KEY=VALUE...]`` -> (name, options); values are YAML (``hard=true``, ``k=2``)."""
    import yaml

    name, *pairs = entry.strip().split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"strategy entry {entry!r}: options are NAME:KEY=VALUE, got {pair!r}")
        options[key.strip()] = yaml.safe_load(value)
    return name.strip(), options


class Skip(Exception):
    """A strategy this benchmark cannot build or drive (yet): the row says why."""


def build_supernet(entry: str, space: Any) -> tuple[Any, str]:
    """The strategy's NNI supernet made from ``space`` in place, and the kind of step its module takes."""
    from nas_restore.nni_layer import nni  # noqa: F401  (our NNI import set-up first)
    import pytorch_lightning as pl
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
    from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule

    from nas_restore.errors import UnknownNameError
    from strategies import find_strategy

    name, options = parse_strategy(entry)
    try:
        spec = find_strategy(name)
    except UnknownNameError as err:
        raise Skip(f"not registered (yet): {err}") from None
    if not spec.one_shot:
        raise Skip(f"{name} is a {spec.family} strategy: it trains separate networks, no supernet step")
    try:
        strategy = spec.build(options)
    except Exception as err:  # noqa: BLE001  (a bad option or a strategy not finished: say it, skip)
        raise Skip(f"cannot build {entry}: {type(err).__name__}: {err}") from None
    if not hasattr(strategy, "mutate_model") or not hasattr(strategy, "configure_oneshot_module"):
        raise Skip(f"{name}: its NNI strategy {type(strategy).__name__} has no one-shot supernet")
    module_type = type(strategy.configure_oneshot_module(pl.LightningModule()))
    if module_type.training_step is DartsLightningModule.training_step:
        kind = "bilevel"
    elif module_type.training_step is RandomSamplingLightningModule.training_step:
        kind = "single-path"
    else:
        raise Skip(f"{name}: its step ({module_type.__name__}.training_step) is neither DARTS's bilevel step nor "
                   "a single-path step; this benchmark does not model it")
    try:
        return strategy.mutate_model(space), kind
    except Exception as err:  # noqa: BLE001
        raise Skip(f"cannot build the {entry} supernet of this space: {type(err).__name__}: {err}") from None


def measure(name: str, strategy: str, precision_name: str, repeats: int, slow_s: float, device: str) -> dict[str, Any]:
    """One row, in this process: build the supernet, time the steps, read the memory."""
    import torch
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
    from torch.utils.flop_counter import FlopCounterMode

    from nas_restore.losses import RestorationLoss
    from nas_restore.precision import resolve_precision
    from search_spaces import find_space

    spec_cfg = CONFIGS[name]
    torch.manual_seed(0)
    precision = resolve_precision(precision_name, device)
    space_spec = find_space("tmics")
    config = space_spec.config(spec_cfg["preset"], **spec_cfg["settings"])
    started = time.perf_counter()
    supernet, kind = build_supernet(strategy, space_spec.make_space(config))
    supernet = precision.prepare(supernet.to(device))
    build_s = time.perf_counter() - started
    supernet_modules = [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]
    alphas = list({id(p): p for m in supernet_modules if hasattr(m, "arch_parameters")
                   for p in m.arch_parameters()}.values())
    if kind == "bilevel" and not alphas:
        raise Skip(f"{strategy}: the supernet has no architecture parameters")
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in supernet.parameters() if id(p) not in alpha_ids]
    arch_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3) if alphas else None
    weight_opt = torch.optim.Adam(weights, lr=1e-3)
    scaler = torch.amp.GradScaler(device.split(":")[0]) if precision.name == "fp16" else None
    criterion = RestorationLoss()
    b, p, t = spec_cfg["batch"], spec_cfg["patch"], config.frames
    gen = torch.Generator().manual_seed(0)
    batches = {split: (torch.rand(b, t, 3, p, p, generator=gen).to(device),
                       torch.rand(b, 3, p, p, generator=gen).to(device)) for split in ("train", "val")}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def resample() -> None:
        memo: dict[str, Any] = {}
        for module in supernet_modules:
            memo.update(module.resample(memo=memo))

    def loss_of(split: str) -> torch.Tensor:
        x, y = batches[split]
        with precision.autocast():
            out = supernet(x)
        return criterion(out.float(), y)[0]  # the loss in fp32

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler else loss).backward()

    def optimiser_step(opt: torch.optim.Optimizer, clip: list[torch.Tensor] | None = None) -> None:
        if scaler:
            scaler.unscale_(opt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 5.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def step() -> float:
        sync()
        t0 = time.perf_counter()
        if kind == "bilevel":
            resample()
            arch_opt.zero_grad(set_to_none=True)          # architecture step, on the validation batch
            backward(loss_of("val"))
            optimiser_step(arch_opt)
        resample()
        weight_opt.zero_grad(set_to_none=True)            # weight step, on the training batch
        backward(loss_of("train"))
        optimiser_step(weight_opt, clip=weights)
        sync()
        return time.perf_counter() - t0

    def forward() -> float:
        """One forward pass with its autograd graph kept (as in training), then released."""
        t0 = time.perf_counter()
        resample()
        loss = loss_of("train")
        sync()
        elapsed = time.perf_counter() - t0
        del loss
        return elapsed

    before = rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    first_forward = forward()   # cold: allocations and kernel selection
    warm_forward = forward()
    passes = 2 if kind == "bilevel" else 1
    # a step is `passes` forward + backward (backward ~ 2 forwards): about 3 forwards a pass
    mode = "step" if 3 * passes * warm_forward <= slow_s else "forward"
    counter = FlopCounterMode(display=False)
    if mode == "step":
        with counter:        # the untimed warm-up step also counts the FLOPs (forward and backward)
            warmup = step()
        timed = [step() for _ in range(repeats if warmup <= slow_s else 1)]
    else:
        with counter:
            forward()
        warmup = first_forward
        timed = [warm_forward]
    flops = int(counter.get_total_flops())
    median = statistics.median(timed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {
        "config": name, "strategy": strategy, "precision": precision.name, "step_kind": kind,
        "step_seconds": median, "peak_rss_bytes": peak,
        "channels": config.channels, "frames": t, "cells_per_branch": config.cells_per_branch,
        "nodes_per_cell": config.nodes_per_cell, "ops_per_node": config.ops_per_node, "cell": config.cell,
        "operations": len(config.operations), "batch": b, "patch": p,
        "alpha_tensors": len(alphas), "alpha_values": sum(a.numel() for a in alphas),
        "weights": sum(w.numel() for w in weights), "build_s": build_s,
        "warmup_s": warmup, "timed_s": timed, "median_s": median,
        "flops": flops, "gflops": flops / median / 1e9,
        "rss_before_bytes": before, "step_rss_bytes": peak - before,
        "torch_threads": torch.get_num_threads(), "device": device, "mode": mode, "slow_s": slow_s,
        "first_forward_s": first_forward,
    }
    if device.startswith("cuda"):
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def measure_or_skip(name: str, strategy: str, precision: str, repeats: int, slow_s: float,
                    device: str) -> dict[str, Any]:
    try:
        return measure(name, strategy, precision, repeats, slow_s, device)
    except Skip as skip:
        return {"config": name, "strategy": strategy, "precision": precision, "skipped": str(skip)}


def conv_peaks(precisions: list[str], device: str) -> dict[str, dict[str, Any]]:
    from nas_restore.profiling import conv_peak

    return {p: conv_peak(p, device).to_dict() for p in precisions}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def peak_line(peaks: dict[str, dict[str, Any]]) -> str:
    if not peaks:
        return "not measured"
    shape = "x".join(map(str, next(iter(peaks.values()))["shape"]))
    return ", ".join(f"{k} **{v['gflops']:.1f} GFLOP/s** ({v['memory_format']})" for k, v in peaks.items()) + \
        f" (one 96->96 3x3 conv on {shape}, `nas_restore.profiling.conv_peak`, median of {next(iter(peaks.values()))['repeats']})"


def report(results: list[dict[str, Any]], command: str, load: tuple[float, float, float],
           peaks: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# One search step on the TMICS space, per strategy and precision",
        "",
        f"Regenerate: `{command}`",
        "",
        f"- machine: {machine()}",
        f"- the machine's peak: {peak_line(peaks)}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average when it started "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min: other work on the machine slows the figures)",
        "- step: the strategy's own NNI supernet (`find_strategy(name).build(options).mutate_model(space)`), driven as "
        "its NNI Lightning module does, without Lightning: DARTS family (bilevel) an architecture step (forward + "
        "backward on a validation batch, Adam on the architecture parameters) then a weight step (forward + backward "
        "on a training batch, grad-norm clip 5, Adam on the weights); single path (spos) one resampled path's weight "
        "step. L1 + SSIM loss in fp32; the supernet's forward under autocast for bf16/fp16 (weights channels_last); "
        "random data",
        "- time: median of the timed steps after one untimed warm-up step (wall clock); a row whose warm "
        "forward pass predicts a step over `--slow-s` is measured on the forward pass only (said below); every row "
        "first runs two forward passes (cold, warm) to make that call",
        "- speed: FLOPs of the timed unit (torch `FlopCounterMode` during the warm-up: forward and backward) over the "
        "median time, and that as a fraction of the peak of the row's precision",
        "- memory: peak resident set size of the process (`ru_maxrss`), and that peak minus the resident size "
        "just before the first step (`/proc/self/statm`): the step's own working memory. One fresh process per row.",
        "",
        "| config | strategy | precision | channels | frames | cells | nodes | cell | ops | batch x patch | weights "
        "| arch values (tensors) | measured | time (median) | timed runs (s) | GFLOP/s | of peak | peak RSS "
        "| working memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"| {r['config']} | {r['strategy']} | {r['precision']} "
        if "error" in r or "skipped" in r:
            what = f"failed: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(head + f"| {what} |" + " |" * 15)
            continue
        timed = ", ".join(f"{s:.2f}" for s in r["timed_s"])
        share = f"{100 * r['fraction_of_peak']:.1f}%" if r.get("fraction_of_peak") is not None else "—"
        lines.append(
            head + f"| {r['channels']} | {r['frames']} | {r['cells_per_branch']} + {r['cells_per_branch']} "
            f"| {r['nodes_per_cell']} | {r['cell']} | {r['operations']} | {r['batch']} x {r['patch']}² "
            f"| {r['weights'] / 1e6:.2f} M | {r['alpha_values']} ({r['alpha_tensors']}) "
            f"| {'full step' if r['mode'] == 'step' else 'forward only'} ({r['step_kind']}) "
            f"| **{r['median_s']:.2f} s** | {timed} (warm-up {r['warmup_s']:.2f}) | {r['gflops']:.1f} | {share} "
            f"| {gib(r['peak_rss_bytes'])} | {gib(r['step_rss_bytes'])} |")
    done = [r for r in results if "error" not in r and "skipped" not in r]
    slow = [f"{r['config']}/{r['strategy']}/{r['precision']}" for r in done
            if r["mode"] == "step" and len(r["timed_s"]) == 1]
    forward = [r for r in done if r["mode"] == "forward"]
    lines += [""]
    if slow:
        lines.append(f"Rows timed on a single step after the warm-up (the warm-up took longer than the "
                     f"`--slow-s` limit): {', '.join(slow)}.")
        lines.append("")
    for r in forward:
        lines.append(
            f"**{r['config']}/{r['strategy']}/{r['precision']}: forward pass only.** Its second (warm) forward pass "
            f"took {r['median_s']:.1f} s, so a full step was predicted over the `--slow-s` limit of "
            f"{r.get('slow_s', 0):g} s; the row gives the time of one forward pass with its "
            "autograd graph kept, after a first untimed one, and the memory that graph holds (a full step adds "
            "the weight gradients and Adam's two moments, 3 x the weights in float32, and backward's temporaries).")
        lines.append("")
    lines += ratio_lines(done)
    over = [f"{r['config']}/{r['strategy']}/{r['precision']}" for r in done
            if r.get("fraction_of_peak") is not None and r["fraction_of_peak"] > 1]
    if over:
        lines += [f"Above 100 % of peak: {', '.join(over)}. The reference peak is one forward 96->96 convolution "
                  "in the row's precision; a step's FLOPs are mostly backward passes and larger batched shapes, "
                  "which the CPU's kernels run faster than that reference, so a share above 1 says the reference "
                  "is not the precision's limit on this machine, not that the count is wrong.", ""]
    lines += [
        "Reading the figures: a DAG cell of 4 nodes has 2 + 3 + 4 + 5 = 14 edges, each running every candidate "
        "op (plus DARTS's zero op) under darts and gdas (soft), 1/k of the channels under pcdarts, one sampled op "
        "under gdas with hard=true and spos; each of the 8 cells has its own weights (cells of a branch share only "
        "the alphas), so the paper-size DAG supernet runs 8 x 14 = 112 mixed edges; the chain-cell space runs "
        "8 x 4 = 32 mixed positions. The searched network itself is a small fraction of either (one op per edge, "
        "two edges per node). Small convolutions (16 channels, small patches) reach a small fraction of the "
        "96-channel peak.",
    ]
    return "\n".join(lines) + "\n"


def ratio_lines(done: list[dict]) -> list[str]:
    """Each config's rows against its darts fp32 step (the speed issue's targets are such ratios, measured in
    one run): how many times faster, and what share of its peak memory."""
    lines = []
    for config in dict.fromkeys(r["config"] for r in done):
        base = next((r for r in done if r["config"] == config and r["strategy"] == "darts"
                     and r["precision"] == "fp32" and r["mode"] != "forward"), None)
        if base is None:
            continue
        rows = [[r["strategy"], r["precision"], f"{base['median_s'] / r['median_s']:.2f}x",
                 f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}"]
                for r in done if r["config"] == config and r is not base and r["mode"] != "forward"]
        if rows:
            lines += [f"Against darts fp32 at the {config} size ({base['median_s']:.2f} s, "
                      f"{gib(base['peak_rss_bytes'])}):", "",
                      "| strategy | precision | faster than darts fp32 | peak RSS as a share of darts fp32's |",
                      "|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows), ""]
    return lines


def split_list(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--strategies", default="darts",
                        help="comma-separated one-shot strategies, each NAME[:KEY=VALUE...], e.g. "
                             "darts,pcdarts,gdas:hard=true,spos")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, fp16, auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-s", type=float, default=120.0, help="warm-up longer than this: one timed step")
    parser.add_argument("--report", default="reports/search_step_cpu.md")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows as a JSON list")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-peak", action="store_true", help="skip the machine's conv peak")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    parser.add_argument("--one-strategy", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure_or_skip(args.one, args.one_strategy, args.precision, args.repeats, args.slow_s,
                                         args.device)))
        return 0

    names = split_list(args.configs)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    strategies = split_list(args.strategies)
    try:
        for entry in strategies:
            parse_strategy(entry)
        from nas_restore.precision import resolve_precision

        precisions = list(dict.fromkeys(resolve_precision(p, args.device).name for p in split_list(args.precision)))
    except ValueError as err:  # ConfigError is a ValueError too
        parser.error(str(err))
    if not strategies or not precisions:
        parser.error("--strategies and --precision need at least one entry each")
    load = os.getloadavg()
    started = time.perf_counter()
    peaks = {} if args.no_peak else conv_peaks(precisions, args.device)
    for k, v in peaks.items():
        print(f"peak {k}: {v['gflops']:.1f} GFLOP/s (96->96 3x3 conv, {v['memory_format']})", flush=True)
    results = []
    for name in names:
        for strategy in strategies:
            for precision in precisions:
                label = f"{name}/{strategy}/{precision}"
                cmd = [sys.executable, __file__, "--one", name, "--one-strategy", strategy, "--precision", precision,
                       "--repeats", str(args.repeats), "--slow-s", str(args.slow_s), "--device", args.device]
                print(f"{label}: measuring ...", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{label}: failed ({tail})", flush=True)
                    results.append({"config": name, "strategy": strategy, "precision": precision, "error": tail})
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(result)
                if "skipped" in result:
                    print(f"{label}: skipped: {result['skipped']}", flush=True)
                    continue
                peak = peaks.get(precision)
                result["conv_peak_gflops"] = peak["gflops"] if peak else None
                result["fraction_of_peak"] = result["gflops"] / peak["gflops"] if peak else None
                share = f", {100 * result['fraction_of_peak']:.1f}% of peak" if peak else ""
                print(f"{label}: {result['weights'] / 1e6:.2f} M weights, {result['alpha_values']} arch values; "
                      f"{result['mode']} {result['median_s']:.2f} s (median of {len(result['timed_s'])}, warm-up "
                      f"{result['warmup_s']:.2f} s), {result['gflops']:.1f} GFLOP/s{share}; peak RSS "
                      f"{gib(result['peak_rss_bytes'])}, step memory {gib(result['step_rss_bytes'])}", flush=True)
    command = (f"python benchmarks/search_step.py --configs {','.join(names)} --strategies {','.join(strategies)} "
               f"--precision {','.join(precisions)} --repeats {args.repeats} --slow-s {args.slow_s:g} "
               f"--report {args.report} --device {args.device}" + (f" --json {args.json}" if args.json else ""))
    text = report(results, command, load, peaks)
    end_load = os.getloadavg()
    text += (f"\nLoad average when it ended: {end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}; "
             f"wall time of the whole benchmark {time.perf_counter() - started:.0f} s.\n")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
