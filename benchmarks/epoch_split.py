"""Where a retraining epoch's time goes: data, the network's own work, validation, metrics, Lightning.

Usage:  python benchmarks/epoch_split.py [--genotypes rescnn,space:tmics:demo] [--precision fp32,bf16]
            [--data ../shared/data/rain100l --split fit] [--patch 64] [--batch 8] [--epochs 3]
            [--report reports/epoch_split_cpu.md]

Per genotype and precision it measures, on the same data and recipe as ``nas-restore retrain``:

- ``data``: one pass over the training DataLoader alone (reading, decoding, cropping, augmenting);
- ``steps``: the training steps on those batches held in memory (forward, fp32 loss, backward, Adam);
- ``validation``: the validation split's forward passes, and ``metrics``: its PSNR/SSIM alone;
- ``denormals``: the steps again with ``torch.set_flush_denormal(True)`` (a gain means denormal floats
  cost time);
- ``retrain epoch``: the median epoch of a real ``retrain()`` run (Lightning, checkpoints, logging),
  and the ``overhead``: that epoch minus data, steps and validation.

Timings are medians over epochs, on whatever machine runs it: the report states the machine and load.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from nas_restore.build import build_model
from nas_restore.datasets import DataConfig, train_val_datasets
from nas_restore.losses import LossConfig, RestorationLoss, ssim_torch
from nas_restore.metrics import psnr_torch
from nas_restore.precision import full_precision, resolve_precision
from nas_restore.report_common import markdown_table, write_report
from nas_restore.sources import load_genotype
from nas_restore.study import machine_info, machine_line
from nas_restore.training import RetrainConfig, retrain


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def split_one(source: str, precision_name: str, data: DataConfig, batch: int, epochs: int) -> dict[str, float]:
    genotype = load_genotype(source)
    frames = int(genotype.space_config.get("frames", 1))
    train, val = train_val_datasets(data, frames, seed=0)
    loader = DataLoader(train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val, batch_size=batch)
    precision = resolve_precision(precision_name, "cpu")
    torch.manual_seed(0)
    model = precision.prepare(build_model(genotype))
    criterion = RestorationLoss(LossConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [b for b in loader]
    val_batches = [b for b in val_loader]

    def steps() -> None:
        model.train()
        for frames_, target in batches:
            with precision.autocast():
                pred = model(frames_)
            with full_precision("cpu"):
                loss, _ = criterion(pred.float(), target, rainy=frames_[:, frames_.shape[1] // 2])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    outputs: list[torch.Tensor] = []

    def validation() -> None:
        model.eval()
        outputs.clear()
        with torch.no_grad():
            for frames_, target in val_batches:
                with precision.autocast():
                    outputs.append(model(frames_).float())

    def metrics() -> None:
        for pred, (_, target) in zip(outputs, val_batches):
            psnr_torch(pred.clamp(0, 1), target, y_channel=False).mean()
            ssim_torch(pred.clamp(0, 1), target)

    row = {"data": _median_time(lambda: [b for b in loader], epochs)}
    steps()  # warm-up (oneDNN picks its kernels)
    row["steps"] = _median_time(steps, epochs)
    validation()
    row["validation"] = _median_time(validation, epochs)
    row["metrics"] = _median_time(metrics, epochs)
    torch.set_flush_denormal(True)
    row["steps, denormals flushed"] = _median_time(steps, epochs)
    torch.set_flush_denormal(False)
    with tempfile.TemporaryDirectory() as tmp:
        config = RetrainConfig(epochs=epochs, batch_size=batch, device="cpu", progress=False, precision=precision_name)
        torch.manual_seed(0)
        result = retrain(build_model(genotype), train, val, config, Path(tmp))
        seconds = pd.read_csv(result.metrics_csv)["seconds"].dropna().tolist()
    row["retrain epoch"] = statistics.median(seconds[1:] or seconds)  # the first epoch warms up
    row["overhead"] = row["retrain epoch"] - row["data"] - row["steps"] - row["validation"] - row["metrics"]
    row["steps per epoch"] = len(batches)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotypes", default="rescnn,space:tmics:demo")
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--data", default=None, help="a folder of pairs (default: built-in synthetic rain)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--items", type=int, default=256, help="synthetic data: training items")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (medians)")
    parser.add_argument("--report", default="reports/epoch_split_cpu.md")
    parser.add_argument("--label", default=None, help="what this run measures, for the title (e.g. a commit)")
    args = parser.parse_args()
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    data = DataConfig(folder=args.data, split=args.split, patch_size=args.patch, train_items=args.items,
                      val_items=max(8, args.items // 8))
    columns = ["data", "steps", "steps, denormals flushed", "validation", "metrics", "retrain epoch", "overhead"]
    rows = []
    for source in [g.strip() for g in args.genotypes.split(",") if g.strip()]:
        for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
            row = split_one(source, precision, data, args.batch, args.epochs)
            print(source, precision, {k: round(v, 3) for k, v in row.items()}, flush=True)
            rows.append([source, precision, int(row["steps per epoch"]), *(f"{row[c]:.2f}" for c in columns),
                         f"{100 * row['steps'] / row['retrain epoch']:.0f}%"])
    command = shlex.join(["python", "benchmarks/epoch_split.py", *sys.argv[1:]])
    lines = [
        "# Where a retraining epoch's time goes" + (f" ({args.label})" if args.label else ""),
        "",
        f"Regenerate: `{command}`",
        "",
        f"- machine: {machine_line(machine_info('cpu'))} (load before the run: {load_before})",
        f"- data: {args.data or 'built-in synthetic rain'}{f', split {args.split}' if args.split else ''}; patches "
        f"of {args.patch} px, batch {args.batch}; validation on the run's validation split; seconds are medians "
        f"of {args.epochs} epochs",
        "",
        markdown_table(["genotype", "precision", "steps/epoch", *(f"{c} (s)" for c in columns), "network share"],
                       rows),
        "",
        "`steps` is the network's own work (forward, fp32 loss, backward, Adam) on batches held in memory; "
        "`overhead` = the Lightning epoch minus data, steps, validation and metrics (checkpoints, logging, "
        "callbacks, hooks); `network share` = steps / retrain epoch.",
        "",
    ]
    write_report(args.report, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
