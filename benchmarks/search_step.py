"""Benchmark of one DARTS search step on the TMICS space: time and peak memory, CPU default and paper size.

Usage:  python benchmarks/search_step.py [--configs cpu,paper,paper-chain] [--repeats 3]
                                         [--report reports/search_step_cpu.md] [--device cpu]

What one step is: NNI's own DARTS supernet (``DARTS().mutate_model(space)``: every candidate op on
every edge, one alpha vector per label) driven the way NNI's ``DartsLightningModule.training_step``
drives it, without Lightning around it: an architecture step (forward + backward of the L1+SSIM
search loss on a validation batch, Adam on the alphas: lr 3e-4, betas (0.5, 0.999), weight decay
1e-3) then a weight step (forward + backward on a training batch, gradient norm clipped to 5, Adam
lr 1e-3 on the weights). So two forward/backward passes through the whole mixed supernet.
Data are random tensors of the right shapes (the cost does not depend on the pixels).

Each configuration runs in a fresh Python process, so its memory figures are its own. Memory is the
process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end, and
that peak minus the resident size just before the first step (read from ``/proc/self/statm``):
the step's working memory (activations of every candidate op, gradients, Adam states). Time is the
median of ``--repeats`` steps after one untimed warm-up step; when a warm forward pass predicts a
step over ``--slow-s`` seconds, only the forward pass is timed, and when the warm-up step itself
takes longer, a single timed step follows (both said in the report).
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
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(name: str, repeats: int, slow_s: float, device: str) -> dict[str, Any]:
    """One configuration, in this process: build the supernet, time the steps, read the memory."""
    import torch

    from nas_restore.losses import RestorationLoss
    from nas_restore.nni_layer import darts_supernet, labelled_alphas
    from search_spaces import find_space

    spec_cfg = CONFIGS[name]
    torch.manual_seed(0)
    space_spec = find_space("tmics")
    config = space_spec.config(spec_cfg["preset"], **spec_cfg["settings"])
    started = time.perf_counter()
    supernet = darts_supernet(space_spec.make_space(config)).to(device)
    build_s = time.perf_counter() - started
    alphas = [alpha for _, alpha, _ in labelled_alphas(supernet)]
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in supernet.parameters() if id(p) not in alpha_ids]
    arch_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    weight_opt = torch.optim.Adam(weights, lr=1e-3)
    criterion = RestorationLoss()
    b, p, t = spec_cfg["batch"], spec_cfg["patch"], config.frames
    gen = torch.Generator().manual_seed(0)
    batches = {split: (torch.rand(b, t, 3, p, p, generator=gen).to(device),
                       torch.rand(b, 3, p, p, generator=gen).to(device)) for split in ("train", "val")}

    def step() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        arch_opt.zero_grad(set_to_none=True)          # architecture step, on the validation batch
        x, y = batches["val"]
        criterion(supernet(x), y)[0].backward()
        arch_opt.step()
        weight_opt.zero_grad(set_to_none=True)        # weight step, on the training batch
        x, y = batches["train"]
        criterion(supernet(x), y)[0].backward()
        torch.nn.utils.clip_grad_norm_(weights, 5.0)
        weight_opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def forward() -> float:
        """One forward pass with its autograd graph kept (as in training), then released."""
        t0 = time.perf_counter()
        x, y = batches["train"]
        loss = criterion(supernet(x), y)[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        del loss
        return elapsed

    before = rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    first_forward = forward()   # cold: allocations and kernel selection
    warm_forward = forward()
    # a step is two passes of forward + backward (backward ~ 2 forwards): about 6 forwards
    mode = "step" if 6 * warm_forward <= slow_s else "forward"
    if mode == "step":
        warmup = step()
        timed = [step() for _ in range(repeats if warmup <= slow_s else 1)]
    else:
        warmup = first_forward
        timed = [warm_forward]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {
        "name": name, "channels": config.channels, "frames": t, "cells_per_branch": config.cells_per_branch,
        "nodes_per_cell": config.nodes_per_cell, "ops_per_node": config.ops_per_node, "cell": config.cell,
        "operations": len(config.operations), "batch": b, "patch": p,
        "alpha_labels": len(alphas), "alpha_values": sum(a.numel() for a in alphas),
        "weights": sum(w.numel() for w in weights), "build_s": build_s,
        "warmup_s": warmup, "timed_s": timed, "median_s": statistics.median(timed),
        "rss_before_bytes": before, "peak_rss_bytes": peak, "step_rss_bytes": peak - before,
        "torch_threads": torch.get_num_threads(), "device": device, "mode": mode, "slow_s": slow_s,
        "first_forward_s": first_forward,
    }
    if device.startswith("cuda"):
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


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


def report(results: list[dict[str, Any]], command: str, load: tuple[float, float, float]) -> str:
    lines = [
        "# One DARTS search step on the TMICS space",
        "",
        f"Regenerate: `{command}`",
        "",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average when it started "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min: other work on the machine slows the figures)",
        "- step: NNI's DARTS supernet (`DARTS().mutate_model`), driven as NNI's `DartsLightningModule` does, "
        "without Lightning: an architecture step (forward + backward on a validation batch, Adam on the alphas) "
        "then a weight step (forward + backward on a training batch, grad-norm clip 5, Adam on the weights); "
        "L1 + SSIM loss; random data",
        "- time: median of the timed steps after one untimed warm-up step (wall clock); a configuration whose warm "
        "forward pass predicts a step over `--slow-s` is measured on the forward pass only (said below); every row first runs two forward passes (cold, warm) "
        "to make that call",
        "- memory: peak resident set size of the process (`ru_maxrss`), and that peak minus the resident size "
        "just before the first step (`/proc/self/statm`): the step's own working memory. One fresh process per row.",
        "",
        "| config | channels | frames | cells | nodes | cell | ops | batch x patch | weights | alphas (labels) "
        "| measured | time (median) | timed runs (s) | peak RSS | working memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 13)
            continue
        timed = ", ".join(f"{s:.2f}" for s in r["timed_s"])
        lines.append(
            f"| {r['name']} | {r['channels']} | {r['frames']} | {r['cells_per_branch']} + {r['cells_per_branch']} "
            f"| {r['nodes_per_cell']} | {r['cell']} | {r['operations']} | {r['batch']} x {r['patch']}² "
            f"| {r['weights'] / 1e6:.2f} M | {r['alpha_values']} ({r['alpha_labels']}) "
            f"| {'full step' if r['mode'] == 'step' else 'forward only'} | **{r['median_s']:.2f} s** | {timed} (warm-up {r['warmup_s']:.2f}) | {gib(r['peak_rss_bytes'])} "
            f"| {gib(r['step_rss_bytes'])} |")
    slow = [r["name"] for r in results if "error" not in r and r["mode"] == "step" and len(r["timed_s"]) == 1]
    forward = [r for r in results if "error" not in r and r["mode"] == "forward"]
    lines += [""]
    if slow:
        lines.append(f"Rows timed on a single step after the warm-up (the warm-up took longer than the "
                     f"`--slow-s` limit): {', '.join(slow)}.")
        lines.append("")
    for r in forward:
        lines.append(
            f"**{r['name']}: forward pass only.** Its second (warm) forward pass took {r['median_s']:.1f} s, "
            f"so a full step (two forward + backward passes, about 6 forwards: ~{6 * r['median_s'] / 60:.1f} min) "
            f"was predicted over the `--slow-s` limit of {r.get('slow_s', 0):g} s; "
            "the row gives the time of one forward pass with its "
            "autograd graph kept, after a first untimed one, and the memory that graph holds (a full step adds "
            "the weight gradients and Adam's two moments, 3 x the weights in float32, and backward's temporaries).")
        lines.append("")
    lines += [
        "Reading the figures: a DAG cell of 4 nodes has 2 + 3 + 4 + 5 = 14 edges, each running every candidate "
        "op (plus DARTS's zero op), and each of the 8 cells has its own weights (cells of a branch share only the alphas), so the paper-size DAG supernet runs "
        "8 x 14 = 112 mixed edges; the chain-cell space runs 8 x 4 = 32 mixed positions. The searched network "
        "itself is a small fraction of either (one op per edge, two edges per node).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="cpu,paper,paper-chain", help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-s", type=float, default=120.0, help="warm-up longer than this: one timed step")
    parser.add_argument("--report", default="reports/search_step_cpu.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.slow_s, args.device)))
        return 0

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    load = os.getloadavg()
    started = time.perf_counter()
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats), "--slow-s", str(args.slow_s),
               "--device", args.device]
        print(f"{name}: measuring ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name}: failed ({tail})", flush=True)
            results.append({"name": name, "error": tail})
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{name}: {result['weights'] / 1e6:.2f} M weights, {result['alpha_values']} alphas; step "
              f"{result['median_s']:.2f} s (median of {len(result['timed_s'])}, warm-up {result['warmup_s']:.2f} s); "
              f"peak RSS {gib(result['peak_rss_bytes'])}, step memory {gib(result['step_rss_bytes'])}", flush=True)
    command = (f"python benchmarks/search_step.py --configs {','.join(names)} --repeats {args.repeats} "
               f"--slow-s {args.slow_s:g} --report {args.report} --device {args.device}")
    text = report(results, command, load)
    end_load = os.getloadavg()
    text += (f"\nLoad average when it ended: {end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}; "
             f"wall time of the whole benchmark {time.perf_counter() - started:.0f} s.\n")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
