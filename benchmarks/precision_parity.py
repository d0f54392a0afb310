"""Does bf16 change what a network learns or scores? The same genotypes retrained in fp32 and in bf16.

Usage:  python benchmarks/precision_parity.py --config benchmarks/configs/parity_rain100l_cpu.yaml \
            --entries rescnn,runs/demo/search --out runs/parity --report reports/precision_parity_cpu.md

For each precision (``--precisions fp32,bf16``) it runs ``nas-restore rank`` on the entries with one
config (same data, recipe and seed), so each genotype is retrained from the same initial weights once per
precision and scored on the config's evaluation split; then it scores each fp32-trained model again with
bf16 inference (``nas-restore evaluate --precision bf16``'s path). The report gives per entry the PSNR of
each training precision, their difference (training parity), the bf16-inference difference (inference
parity), and the retraining seconds of each (a speed figure only on a quiet machine: the load is stated).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from nas_restore import config as cfg
from nas_restore.build import load_trained
from nas_restore.evaluation import evaluate_folder
from nas_restore.precision import resolve_precision
from nas_restore.rank import RankConfig, run_rank
from nas_restore.report_common import fmt, markdown_table, write_report
from nas_restore.study import machine_info, machine_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a rank config (recipe, training and evaluation data)")
    parser.add_argument("--entries", required=True, help="comma-separated rank entries (genotypes, references)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", default="runs/parity")
    parser.add_argument("--report", default="reports/precision_parity_cpu.md")
    args = parser.parse_args()

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    data = cfg.load_yaml(args.config, "rank")
    results = {}
    for precision in precisions:
        config = cfg.from_dict(RankConfig, {**data, "precision": precision}, "rank")
        result = run_rank(entries, config, Path(args.out) / precision, say=print)
        results[precision] = result.results.set_index("entry")
    base = precisions[0]
    table = results[base]
    eval_root = Path(config.eval_data) if config.eval_data else Path(args.out) / base / "data" / "test"
    rows = []
    for entry in [e for e in table.index if e != "rainy input"]:
        row = [entry, f"`{table.loc[entry, 'genotype_id']}`"]
        for precision in precisions:
            row += [fmt(results[precision].loc[entry, "psnr"]), fmt(results[precision].loc[entry, "retrain_seconds"], 0)]
        row.append(f"{results[precisions[-1]].loc[entry, 'psnr'] - table.loc[entry, 'psnr']:+.3f}")
        # inference parity: the fp32-trained model scored again with the last precision's inference
        folder = next((Path(args.out) / base / "entries").glob(f"*-{table.loc[entry, 'genotype_id']}"))
        model, genotype = load_trained(folder / "retrain" / "model.pt")
        wrapped = resolve_precision(precisions[-1], config.device).wrap(model)
        frames = int(genotype.space_config.get("frames", 1))
        scored = evaluate_folder(eval_root, wrapped, frames=frames, device=config.device,
                                 split=config.eval_split, progress=False).summary["psnr"]
        row.append(f"{scored - table.loc[entry, 'psnr']:+.3f}")
        rows.append(row)
    header = ["entry", "genotype"]
    for precision in precisions:
        header += [f"PSNR trained {precision} (dB)", f"retrain s ({precision})"]
    header += [f"Δ trained {precisions[-1]} - {base} (dB)", f"Δ {precisions[-1]} inference of the {base} model (dB)"]
    command = shlex.join(["python", "benchmarks/precision_parity.py", *sys.argv[1:]])
    lines = [
        "# bf16 against fp32: the same genotypes retrained and scored in each precision",
        "",
        f"Regenerate: `{command}`",
        "",
        f"- machine: {machine_line(machine_info(config.device))} (load before the run: {load_before})",
        f"- config: `{args.config}` (rank recipe: {config.retrain.train.epochs} epochs, batch "
        f"{config.retrain.train.batch_size}, lr {config.retrain.train.lr:g}, seed {config.retrain.train.seed}; "
        f"training data {config.retrain.data.folder or 'built-in synthetic rain'}"
        f"{f', split {config.retrain.data.split}' if config.retrain.data.split else ''}; evaluation "
        f"{config.eval_data or 'held-out synthetic clips'}{f', split {config.eval_split}' if config.eval_split else ''})",
        "- each precision retrains from the same initial weights (seeded per entry) on the same batches; bf16 "
        "runs the network under autocast with channels_last weights (dilated convolutions NCHW), the loss, "
        "metrics, optimiser state and saved weights in fp32",
        "",
        markdown_table(header, rows),
        "",
        f"Input (rainy) PSNR on the evaluation data: {fmt(table.loc['rainy input', 'psnr'])} dB.",
        "",
    ]
    write_report(args.report, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
