"""The `nas-restore` command line. Every flag maps to a config field; errors name the problem and the fix."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="folder of pairs (input/+target/ or rainy/+clean/) or of clips; "
                                                "default: built-in synthetic rain")
    p.add_argument("--split", default=None, help="a split of the folder's SPLITS.txt, e.g. fit")
    p.add_argument("--patch-size", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-restore", description=__doc__.split(".")[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="search, render, retrain and evaluate on built-in synthetic rain")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--search-epochs", type=int, default=None)
    p.add_argument("--retrain-epochs", type=int, default=None)
    _add_common(p)

    p = sub.add_parser("search", help="search a space with a strategy; writes runs/NAME/genotype.json")
    p.add_argument("--space", default=None)
    p.add_argument("--strategy", default=None)
    p.add_argument("--preset", default=None, help="space preset: cpu, demo, paper")
    p.add_argument("--frames", type=int, default=None, help="input frames (odd; 1 = images)")
    p.add_argument("--config", default=None, help="YAML file with search settings")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    _add_data(p)
    _add_common(p)

    p = sub.add_parser("render", help="draw a genotype's cells and network (SVG/PNG + .gv); of a run folder also "
                                      "its search history; --diff A B: two genotypes' differences")
    p.add_argument("genotype", nargs="?", default=None,
                   help="genotype.json, a run folder (with alphas.csv: the search history too), or a DARTS "
                        "Genotype(...) text file")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), default=None,
                   help="draw the differences between two genotypes (each: genotype.json, run folder, DARTS text; "
                        "FILE:NAME picks one Genotype of a text file)")
    p.add_argument("--name", default=None, help="which NAME = Genotype(...) of a text file holding several")
    p.add_argument("--out", default=None, help="output folder (default: <genotype folder>/render; --diff: ./diff)")
    p.add_argument("--format", default="svg,png", help="comma-separated: svg, png, pdf")

    p = sub.add_parser("inspect", help="depth, op histogram, longest path and parameters of a genotype")
    p.add_argument("genotype", help="genotype.json, a run folder, or a DARTS Genotype(...) text file")
    p.add_argument("--name", default=None, help="which NAME = Genotype(...) of a text file holding several")
    p.add_argument("--channels", type=int, default=None,
                   help="channel width for op parameter counts (default: the genotype's space_config.channels)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("retrain", help="train a genotype from scratch; writes model.pt, checkpoints, metrics")
    p.add_argument("genotype")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="YAML file with 'train:' and 'data:' settings")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--num-nodes", type=int, default=None)
    _add_data(p)
    _add_common(p)

    p = sub.add_parser("evaluate", help="PSNR/SSIM on a folder; without a model, of the rainy input itself")
    p.add_argument("model", nargs="?", default=None, help="model.pt from `retrain` (omit to score the input)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--frames", type=int, default=None, help="frames per window (default: the model's)")
    p.add_argument("--crop-border", type=int, default=0)
    p.add_argument("--rgb", action="store_true", help="score RGB instead of the Y channel")
    p.add_argument("--save-outputs", default=None, help="folder for the derained images")
    p.add_argument("--out", default=None, help="folder for per_item.csv and summary.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")

    for name, what in (("spaces", "search spaces"), ("strategies", "search strategies"), ("ops", "operations")):
        p = sub.add_parser(name, help=f"list the {what}")
        p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; re-run the same command to resume where it resumes",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001
        if _is_user_error(err) and not args.verbose:
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


def _configure_logging(verbose: bool) -> None:
    """Console: warnings (or info with -v); the root logger passes INFO on to run folders' log files."""
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(console)
    root.setLevel(logging.INFO)


def _is_user_error(err: Exception) -> bool:
    from nas_restore.config import ConfigError
    from nas_restore.genotype import GenotypeError

    try:
        from nas_restore.data.folders import DataError
    except ImportError:  # pragma: no cover
        DataError = ValueError  # noqa: N806
    return isinstance(err, (ConfigError, GenotypeError, DataError, FileNotFoundError, KeyError, ValueError))


# --------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from nas_restore.demo import DemoConfig, run_demo

    config = DemoConfig()
    for flag, field_name in (("device", "device"), ("seed", "seed"), ("search_epochs", "search_epochs"),
                             ("retrain_epochs", "retrain_epochs")):
        if getattr(args, flag) is not None:
            setattr(config, field_name, getattr(args, flag))
    config.progress = not args.no_progress
    summary = run_demo(args.out, config)
    out = Path(args.out)
    print()
    print("Done in {:.0f} s.".format(summary["seconds"]))
    print(f"  rainy input : PSNR {summary['psnr_input']:.2f} dB  SSIM {summary['ssim_input']:.4f}")
    print(f"  derained    : PSNR {summary['psnr_output']:.2f} dB  SSIM {summary['ssim_output']:.4f}"
          f"   ({summary['gain_db']:+.2f} dB on {summary['count']} held-out synthetic frames)")
    print(f"  protocol    : {summary['protocol']}")
    print(f"  genotype    : {summary['genotype']}")
    print(f"  cell graphs : {summary['render_dir']}")
    print(f"  model       : {summary['model']}")
    print(f"  outputs     : {summary['outputs_dir']}")
    print(f"  summary     : {out / 'summary.json'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nas_restore import config as cfg
    from nas_restore.search import SearchConfig, run_search

    data = cfg.load_yaml(args.config) if args.config else {}
    overrides: dict[str, Any] = {
        "space": args.space, "strategy": args.strategy, "preset": args.preset, "epochs": args.epochs,
        "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
        "data": {"folder": args.data, "split": args.split, "patch_size": args.patch_size},
    }
    if args.frames is not None:
        overrides["space_settings"] = {"frames": args.frames}
    if args.no_progress:
        overrides["progress"] = False
    config = cfg.from_dict(SearchConfig, cfg.merge(data, overrides), "search")
    result = run_search(config, args.out)
    g = result.genotype
    print(f"genotype {g.genotype_id()} -> {result.genotype_path}  ({result.seconds:.0f} s)")
    print(f"  macro: {g.macro}")
    for name, cell in g.cells.items():
        print(f"  {name}: " + ", ".join(f"{e.op}<-{e.input}" for node in cell.nodes for e in node))
    return 0


def _genotype_argument(text: str, name: str | None = None):
    """``PATH`` or ``PATH:NAME`` (one Genotype of a DARTS text file) -> (genotype, label)."""
    from nas_restore.analysis import load_any_genotype

    path = Path(text)
    if not path.exists() and ":" in text:
        text, name = text.rsplit(":", 1)
        path = Path(text)
    genotype = load_any_genotype(path, name=name)
    label = " ".join(p for p in (str(path), name or (genotype.metadata or {}).get("name"),
                                 genotype.genotype_id()) if p)
    return genotype, label


def cmd_render(args: argparse.Namespace) -> int:
    from nas_restore.render import render_genotype

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if args.diff:
        from nas_restore.analysis import diff_genotypes
        from nas_restore.render import render_diff

        if args.genotype is not None:
            raise ValueError(f"render --diff A B takes no other genotype (got {args.genotype!r}); "
                             "drop it or render it separately")
        (a, a_label), (b, b_label) = (_genotype_argument(x) for x in args.diff)
        diff = diff_genotypes(a, b, a_label, b_label)
        result = render_diff(diff, Path(args.out or "diff"), formats=formats)
        print(diff.summary())
        for message in result.messages:
            print(message, file=sys.stderr)
        for written in result.paths:
            print(written)
        return 0
    if args.genotype is None:
        raise ValueError("render needs a GENOTYPE (genotype.json, run folder, DARTS text) or --diff A B")
    path = Path(args.genotype)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "render"
    from nas_restore.render_run import is_run_folder, render_run

    if is_run_folder(path):
        if args.name:
            raise ValueError("--name picks a Genotype(...) of a text file; a run folder has one genotype.json")
        result = render_run(path, out, formats=formats)
    else:
        genotype, _ = _genotype_argument(args.genotype, args.name)
        result = render_genotype(genotype, out, formats=formats)
    for message in result.messages:
        print(message, file=sys.stderr)
    for written in result.paths:
        print(written)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from nas_restore.analysis import format_report, inspect_genotype

    genotype, _ = _genotype_argument(args.genotype, args.name)
    report = inspect_genotype(genotype, channels=args.channels)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from nas_restore import config as cfg
    from nas_restore.retraining import RetrainRunConfig, run_retrain

    data = cfg.load_yaml(args.config) if args.config else {}
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "device": args.device, "devices": args.devices, "num_nodes": args.num_nodes}
    if args.no_progress:
        train["progress"] = False
    overrides = {"train": train, "data": {"folder": args.data, "split": args.split, "patch_size": args.patch_size}}
    config = cfg.from_dict(RetrainRunConfig, cfg.merge(data, overrides), "retrain")
    result = run_retrain(args.genotype, config, args.out)
    print(f"best val PSNR {result.best_val_psnr:.2f} dB / SSIM {result.best_val_ssim:.4f} after "
          f"{result.epochs_run} epoch(s) in {result.seconds:.0f} s")
    print(f"  model   : {result.model_path}")
    print(f"  metrics : {result.metrics_csv}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas_restore.evaluation import evaluate_folder
    from nas_restore.metrics import Protocol

    protocol = Protocol(y_channel=not args.rgb, crop_border=args.crop_border)
    model, frames = None, args.frames or 1
    if args.model:
        from nas_restore.build import load_trained
        from nas_restore.device import resolve_device

        device = resolve_device(args.device)
        model, genotype = load_trained(args.model, map_location=device)
        model.to(device)
        frames = args.frames or int(genotype.space_config.get("frames", 1))
    result = evaluate_folder(Path(args.data), model, protocol=protocol, frames=frames,
                             device=args.device if args.model else "cpu", split=args.split,
                             save_outputs=Path(args.save_outputs) if args.save_outputs else None,
                             progress=not (args.no_progress or args.json))
    if args.out:
        result.save(Path(args.out))
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        s = result.summary
        if "psnr_input" in s:
            print(f"input : PSNR {s['psnr_input']:.2f} dB  SSIM {s['ssim_input']:.4f}")
        print(f"{'output' if model is not None else 'input '}: PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.4f}"
              f"  ({s['count']} items; {s['protocol']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]]
    if args.command == "spaces":
        from search_spaces import list_spaces

        rows = [{"name": s.name, "description": s.description, "presets": list(s.presets)} for s in list_spaces()]
    elif args.command == "strategies":
        from strategies import list_strategies

        rows = [{"name": s.name, "family": s.family, "description": s.description, "defaults": s.defaults}
                for s in list_strategies()]
    else:
        from nas_restore.ops import OPS

        rows = [{"name": o.name, "family": o.family, "description": o.description} for o in OPS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}")
    return 0


COMMANDS = {"demo": cmd_demo, "search": cmd_search, "render": cmd_render, "inspect": cmd_inspect,
            "retrain": cmd_retrain,
            "evaluate": cmd_evaluate, "spaces": cmd_list, "strategies": cmd_list, "ops": cmd_list}


if __name__ == "__main__":
    sys.exit(main())
