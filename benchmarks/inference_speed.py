"""Inference speed, peak memory, parameters and FLOPs of derainers, plus one training step's time.

Usage:  python benchmarks/inference_speed.py [--demo-run runs/demo] [--genotypes tmics-heavy,tmics-light]
                                             [--repeats 2] [--warmup 1] [--height 480 --width 640]
                                             [--train-patch 64 --train-batch 2] [--threads N] [--device cpu]
                                             [--precision fp32,bf16] [--report reports/inference_speed_cpu.md]

Rows: the demo's genotype (when ``--demo-run`` names a demo run folder) and each ``--genotypes`` entry
(a reference name such as ``tmics-heavy``, or a genotype.json / run folder), built with
``build_model(load_genotype(...))`` at the size its genotype states (the TMICS references: the paper's).
Weights do not change the cost, so untrained networks are timed.

Each row runs in a fresh Python process, so its memory figure is its own: on CPU the process's peak
resident set size (``ru_maxrss``) minus the resident size before the model was built (the model, its
activations and the allocator's caches); on CUDA ``torch.cuda.max_memory_allocated``.
Inference: one [1, T, 3, H, W] window per output frame, full frame (no tiles), ``torch.no_grad``;
``--warmup`` untimed passes (the first also counts FLOPs with torch's FlopCounterMode: 2 FLOPs per
multiply-add, see nas_restore.profiling), then ``--repeats`` timed passes: frames per second = 1 / median.
Training step: forward + backward of the default L1 + SSIM loss and an Adam step on a random batch of
``--train-batch`` windows of ``--train-patch`` px, median of ``--repeats`` after one warm-up step.

``--precision fp32,bf16`` gives one row per network and precision (``nas_restore.precision``: bf16 runs
the network under autocast with channels_last weights and fp32 outputs, the training loss in fp32).
Achieved GFLOP/s = FLOPs / seconds per frame; the report states the machine's peak, one 96->96 3x3
conv in each precision (``nas_restore.profiling.conv_peak``, measured at the start), and each row's
fraction of the peak of its precision.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _find_genotype(spec: str):
    from nas_restore.sources import load_genotype

    if spec.startswith("space:"):  # space:NAME:PRESET, e.g. space:rrgnet:paper (its seed-0 draw, as `rank` does)
        from nas_restore.sources import space_genotype

        return space_genotype(spec)
    path = Path(spec)
    if path.is_dir() and not (path / "genotype.json").exists():
        found = sorted(path.glob("retrain-*/genotype.json")) or sorted(path.rglob("genotype.json"))
        if not found:
            raise SystemExit(f"error: no genotype.json under {path}")
        path = found[0]
    return load_genotype(path if path.exists() else spec)


def measure(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row (one network in one precision), in this process."""
    import torch

    from nas_restore.precision import resolve_precision

    from nas_restore.build import build_model
    from nas_restore.device import resolve_device
    from nas_restore.losses import LossConfig, RestorationLoss
    from nas_restore.profiling import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    genotype = _find_genotype(spec)
    frames = int(genotype.space_config.get("frames", 1))
    precision = resolve_precision(args.child_precision, device)
    base_rss = _rss_now()
    model = build_model(genotype).to(device).eval()
    net = precision.wrap(model)  # the network itself for fp32; autocast + channels_last weights otherwise
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.rand(1, frames, 3, args.height, args.width, device=device)
    flops = None
    times = []
    with torch.no_grad():
        for i in range(args.warmup):
            if i == 0:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    net(x)
                flops = int(counter.get_total_flops())
            else:
                net(x)
        sync()
        for _ in range(args.repeats):
            start = time.perf_counter()
            net(x)
            sync()
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss() - base_rss)
    infer_peak_rss = _peak_rss()

    # training step
    model.train()
    criterion = RestorationLoss(LossConfig(ssim_padding="reflect"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = torch.rand(args.train_batch, frames, 3, args.train_patch, args.train_patch, device=device)
    target = torch.rand(args.train_batch, 3, args.train_patch, args.train_patch, device=device)
    step_times = []
    for i in range(1 + args.repeats):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            out = model(batch)
        loss, _ = criterion(out.float(), target)  # the loss in fp32
        loss.backward()
        optimizer.step()
        sync()
        if i:
            step_times.append(time.perf_counter() - start)
    name = (genotype.metadata or {}).get("name") or spec
    return {
        "name": str(name), "spec": spec, "precision": precision.name, "genotype_id": genotype.genotype_id(),
        "frames": frames, "gflops": (flops / statistics.median(times) / 1e9) if flops else None,
        "params": count_parameters(model), "flops": flops, "height": args.height, "width": args.width,
        "latency_s": statistics.median(times), "latency_min_s": min(times), "repeats": len(times),
        "fps": 1.0 / statistics.median(times), "peak_memory_bytes": int(peak),
        "peak_rss_bytes": int(infer_peak_rss), "memory_kind": "cuda allocated" if device.type == "cuda" else
        "RSS over the pre-model baseline", "train_step_s": statistics.median(step_times),
        "train_batch": args.train_batch, "train_patch": args.train_patch,
        "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__,
    }


def _demo_psnr(run: Path | None) -> tuple[float, float] | None:
    if run is None or not (run / "summary.json").is_file():
        return None
    summary = json.loads((run / "summary.json").read_text())
    try:
        return float(summary["psnr_output"]), float(summary["psnr_input"])
    except (KeyError, TypeError, ValueError):
        return None


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def refs_name(rows: list[dict[str, Any]]) -> str:
    names = [r["spec"] for r in rows if r["spec"].startswith("tmics-")]
    return "tmics-heavy" if "tmics-heavy" in names else (names[0] if names else "a reference")


def peak_line(peaks: dict[str, dict[str, Any]]) -> str:
    if not peaks:
        return "not measured (--no-peak)"
    some = next(iter(peaks.values()))
    return (", ".join(f"{k} **{v['gflops']:.1f} GFLOP/s** ({v['memory_format']})" for k, v in peaks.items())
            + f" (one 96->96 3x3 conv on {'x'.join(map(str, some['shape']))}, median of {some['repeats']})")


LOAD_BEFORE = "n/a"  # set by main: the load average when the run started


def write_report(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path, command: str,
                 peaks: dict[str, dict[str, Any]] | None = None) -> str:
    from nas_restore.study import machine_info, machine_line

    peaks = peaks or {}
    first = rows[0]
    demo = _demo_psnr(Path(args.demo_run)) if args.demo_run else None
    lines = [
        "# Inference speed and cost of derainers",
        "",
        f"Made by `{command}`.",
        "",
        f"Machine: {machine_line(machine_info(first['device']))}; load before the run: {LOAD_BEFORE}.",
        f"Inference: one {args.width}x{args.height} frame per pass from a window of T frames, whole frame (no "
        f"tiles), {args.warmup} warm-up + {args.repeats} timed pass(es), median. Training step: batch "
        f"{args.train_batch} of {args.train_patch}x{args.train_patch} px, L1 + SSIM, Adam, median of "
        f"{args.repeats} after 1 warm-up. FLOPs: torch FlopCounterMode, 2 per multiply-add, one frame at "
        f"{args.width}x{args.height}. Memory: {first['memory_kind']} during inference.",
        "",
        f"The machine's peak: {peak_line(peaks)}. A row's GFLOP/s is its FLOPs per frame over its seconds per "
        "frame, and \"of peak\" that over the peak of its precision (bf16 rows: autocast, channels_last weights, "
        "fp32 outputs).",
        "",
        "| network | precision | T | parameters | GFLOPs / frame | s / frame | frames / s | GFLOP/s | of peak "
        "| speed-up vs " + (refs_name(rows)) + " | peak memory | train step (s) | PSNR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        refs = ([q for q in rows if q["spec"] == "tmics-heavy" and q["precision"] == r["precision"]]
                or [q for q in rows if q["spec"].startswith("tmics-") and q["precision"] == r["precision"]])
        ref_latency = refs[0]["latency_s"] if refs else None
        psnr = "—"
        if demo and r.get("is_demo"):
            psnr = f"{demo[0]:.2f} dB (input {demo[1]:.2f}; demo test clips)"
        speed = f"{ref_latency / r['latency_s']:.1f}x" if ref_latency else "—"
        flops = f"{r['flops'] / 1e9:.1f}" if r["flops"] is not None else "—"
        achieved = f"{r['gflops']:.1f}" if r.get("gflops") else "—"
        share = f"{100 * r['fraction_of_peak']:.1f}%" if r.get("fraction_of_peak") is not None else "—"
        lines.append(f"| {r['name']} (`{r['genotype_id']}`) | {r['precision']} | {r['frames']} | {r['params']:,} | "
                     f"{flops} | {r['latency_s']:.3f} | {r['fps']:.2f} | {achieved} | {share} | {speed} | "
                     f"{_fmt_bytes(r['peak_memory_bytes'])} | {r['train_step_s']:.3f} | {psnr} |")
    lines += ["", "The TMICS reference networks are untrained here (cost does not depend on the weights), so they "
              "have no PSNR in this table; the trained comparison at equal budget is the real-data report. "
              "Timings depend on the machine's load: regenerate on a quiet machine before quoting them.", ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (path.with_suffix(".json")).write_text(json.dumps(rows, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-run", default=None, help="a `nas-restore demo` run folder: adds its genotype")
    parser.add_argument("--genotypes", default="tmics-heavy,tmics-light",
                        help="comma-separated reference names or genotype.json paths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--train-patch", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, fp16, auto (a row each)")
    parser.add_argument("--no-peak", action="store_true", help="skip the machine's conv peak")
    parser.add_argument("--report", default="reports/inference_speed_cpu.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global LOAD_BEFORE
    LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be >= 1")
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args)))
        return 0
    specs = [s.strip() for s in args.genotypes.split(",") if s.strip()]
    if args.demo_run:
        specs = [args.demo_run] + specs
    from nas_restore.precision import resolve_precision

    try:
        precisions = list(dict.fromkeys(resolve_precision(p, args.device).name
                                        for p in args.precision.split(",") if p.strip()))
    except ValueError as err:  # ConfigError: an unknown precision, or fp16 on a CPU
        parser.error(str(err))
    if not precisions:
        parser.error("--precision needs at least one of fp32, bf16, fp16, auto")
    peaks: dict[str, dict[str, Any]] = {}
    if not args.no_peak:
        import torch

        from nas_restore.profiling import conv_peak

        if args.threads:
            torch.set_num_threads(args.threads)
        peaks = {p: conv_peak(p, args.device).to_dict() for p in precisions}
        for k, v in peaks.items():
            print(f"peak {k}: {v['gflops']:.1f} GFLOP/s (96->96 3x3 conv, {v['memory_format']})", flush=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for spec in specs:
        for precision in precisions:
            print(f"measuring {spec} in {precision} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, *passthrough, "--child", spec,
                                   "--child-precision", precision], capture_output=True, text=True, cwd=ROOT)
            results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not results:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(results[-1][len("RESULT "):])
            row["is_demo"] = spec == args.demo_run
            if row["is_demo"]:
                row["name"] = "demo genotype (searched)"
            peak = peaks.get(precision)
            row["conv_peak_gflops"] = peak["gflops"] if peak else None
            row["fraction_of_peak"] = row["gflops"] / peak["gflops"] if peak and row.get("gflops") else None
            rows.append(row)
            share = f" ({100 * row['fraction_of_peak']:.1f}% of peak)" if row["fraction_of_peak"] is not None else ""
            print(f"  {row['name']} {precision}: {row['params']:,} params, {row['fps']:.3f} frames/s, "
                  f"{(row['flops'] or 0) / 1e9:.1f} GFLOPs, {row['gflops'] or 0:.1f} GFLOP/s{share}, "
                  f"train step {row['train_step_s']:.2f} s", flush=True)
    command = "python benchmarks/inference_speed.py " + " ".join(passthrough)
    print(write_report(rows, args, ROOT / args.report if not Path(args.report).is_absolute() else
                       Path(args.report), command.strip(), peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
