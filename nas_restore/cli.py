"""The `nas-restore` command line. Every flag maps to a config field; errors name the problem and the fix.

Each command is flags -> config (through :func:`nas_restore.config.from_dict`, so a bad value is a
``ConfigError``) -> one library call, then prints the result: the library logs, only this module
prints. A :class:`~nas_restore.errors.UserError` prints as one ``error:`` line (exit 2); anything else
is a bug and keeps its traceback. The commands import their library modules inside the function, so
that ``nas-restore --help`` and the listings stay fast (NNI, Lightning and torch load only when needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from nas_restore import config as cfg
from nas_restore.errors import UserError
from nas_restore.outputs import is_secondary_rank
from nas_restore.threads import JobSlot

warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16", "auto"),
                   help="what the network computes in: fp32 (default), bf16 (fast on CPUs with AVX512-BF16 or "
                        "AMX and on recent GPUs), fp16 (GPUs), auto (the fastest that this device does well); "
                        "losses, metrics and saved weights stay fp32")


def _add_space_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=None, metavar="FILE.py:CLASS",
                   help="the user space file that the genotype names, trusted to be imported (a genotype or model "
                        "file alone never makes nas-restore run code)")


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
    _add_precision(p)
    _add_common(p)

    p = sub.add_parser("search", help="search a space with a strategy; writes runs/NAME/genotype.json")
    p.add_argument("--space", default=None)
    p.add_argument("--strategy", default=None)
    p.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option (repeatable; VALUE is YAML: 0.01, null, true, [a, b]); "
                        "`nas-restore strategies --json` lists each strategy's options")
    p.add_argument("--skip-cap", default=None, metavar="N|off",
                   help="differentiable strategies: most skip_connect edges per derived cell (default 2; off: no cap)")
    p.add_argument("--skip-stop", default=None, metavar="N|off",
                   help="differentiable strategies: stop once a derived cell has more than N skips (default off)")
    p.add_argument("--preset", default=None, help="space preset: cpu, demo, paper")
    p.add_argument("--frames", type=int, default=None, help="input frames (odd; 1 = images)")
    p.add_argument("--config", default=None, help="YAML file with search settings")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-trials", type=int, default=None, help="multi-trial strategies: most trials (default 8)")
    p.add_argument("--trial-epochs", type=int, default=None,
                   help="multi-trial strategies: training epochs of each trial (default 1)")
    p.add_argument("--parallel", type=int, default=None,
                   help="multi-trial strategies: trials at once, in separate processes through NNI's "
                        "training-service engine (default 1: NNI's sequential engine, in-process)")
    p.add_argument("--objectives", default=None, metavar="psnr[,params|flops|latency]",
                   help="multi-trial strategies: psnr alone, or psnr and one cost; keeps the Pareto front")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="wall-clock search budget in seconds: a one-shot search stops when it is spent, a "
                        "multi-trial search starts no new trial")
    p.add_argument("--devices", type=int, default=None,
                   help="one-shot strategies: train the supernet on N processes (DDP: GPUs, or CPU processes with "
                        "gloo), the architecture weights kept identical on all (default 1)")
    p.add_argument("--fresh", action="store_true",
                   help="start the search over: without it, re-running a search in the same --out continues it "
                        "(one-shot: from its checkpoint, docs/strategies.md; multi-trial: from its finished trials)")
    _add_precision(p)
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
    _add_space_file(p)
    p.add_argument("--format", default="svg,png", help="comma-separated: svg, png, pdf")

    p = sub.add_parser("inspect", help="depth, op histogram, longest path and parameters of a genotype")
    p.add_argument("genotype", help="genotype.json, a run folder, or a DARTS Genotype(...) text file")
    p.add_argument("--name", default=None, help="which NAME = Genotype(...) of a text file holding several")
    p.add_argument("--channels", type=int, default=None,
                   help="channel width for op parameter counts (default: the genotype's space_config.channels)")
    _add_space_file(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("retrain", help="train a genotype from scratch; writes model.pt, checkpoints, metrics")
    p.add_argument("genotype")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="YAML file with 'train:' and 'data:' settings")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    _add_space_file(p)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--num-nodes", type=int, default=None)
    _add_precision(p)
    _add_data(p)
    _add_common(p)

    p = sub.add_parser("evaluate", help="PSNR/SSIM on a folder; without a model, of the rainy input itself; on a "
                                        "folder of frames without targets, the no-reference temporal measures")
    p.add_argument("model", nargs="?", default=None, help="model.pt from `retrain` (omit to score the input)")
    p.add_argument("--data", required=True, help="input/+target/ pairs or clips, or a folder of rainy video frames "
                                                 "without targets (then: static-region flicker and warping error "
                                                 "of the input and the output)")
    p.add_argument("--no-warp-error", action="store_true",
                   help="frames without targets: skip the warping error (its optical flow takes about 1 s a frame)")
    p.add_argument("--split", default=None)
    p.add_argument("--frames", type=int, default=None, help="frames per window (default: the model's)")
    p.add_argument("--crop-border", type=int, default=0)
    p.add_argument("--rgb", action="store_true", help="score RGB instead of the Y channel")
    _add_space_file(p)
    p.add_argument("--save-outputs", default=None, help="folder for the derained images")
    p.add_argument("--out", default=None, help="folder for per_item.csv and summary.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tile", type=int, default=None, help="run the model in tiles of this size (bounded memory)")
    p.add_argument("--tile-overlap", type=int, default=16)
    _add_precision(p)

    p = sub.add_parser("derain", help="derain an image, a folder of images or frames, or a video file")
    p.add_argument("model", help="model.pt from `retrain` (or its folder)")
    p.add_argument("input", help="image, folder of images / video frames, or video file (needs imageio-ffmpeg)")
    p.add_argument("--out", required=True, help="output folder (file names kept)")
    p.add_argument("--mode", default="auto", choices=("auto", "images", "frames"),
                   help="a folder's images: independent stills, or a video's frames (auto: frames when the "
                        "model takes several frames and the images share a size)")
    p.add_argument("--tile", type=int, default=256, help="tile size in px; 0 = whole frames")
    p.add_argument("--tile-overlap", type=int, default=16)
    p.add_argument("--figure", default=None, help="also write a before/after PNG figure of a few frames")
    _add_space_file(p)
    p.add_argument("--figure-frames", type=int, default=3)
    p.add_argument("--video", default=None, metavar="FILE.mp4",
                   help="a folder of frames: also write the derained clip as an mp4 (needs imageio-ffmpeg)")
    p.add_argument("--video-layout", default="output", choices=("output", "side-by-side"),
                   help="--video shows the output alone, or the rainy input | the output")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of --video (default 10)")
    p.add_argument("--report", default=None, metavar="FILE.json",
                   help="a folder of frames: also measure the input and the output without targets (static-region "
                        "flicker, warping error) and write them to this JSON file")
    p.add_argument("--no-warp-error", action="store_true",
                   help="--report without the warping error (its optical flow takes about 1 s a frame)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    _add_precision(p)

    p = sub.add_parser("export", help="export a retrained model to run with torch alone (torch.export/trace)")
    p.add_argument("model", help="model.pt from `retrain` (or its folder)")
    p.add_argument("--out", required=True, help="output file, e.g. model.pt2")
    p.add_argument("--height", type=int, default=64, help="example input height")
    _add_space_file(p)
    p.add_argument("--width", type=int, default=64, help="example input width")

    p = sub.add_parser("continual", help="continual learning across rain types: fine-tuning, distillation, "
                                         "replay and joint training compared task after task")
    p.add_argument("genotype", help="genotype.json, a run folder or a reference name (the paper uses rrgnet)")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/continual_cpu (re-run to resume)")
    p.add_argument("--config", default=None, help="YAML file with continual settings (nas_restore.continual)")
    p.add_argument("--tasks", default=None, help="comma-separated, in order, e.g. light,heavy,slanted,accumulation")
    p.add_argument("--schemes", default=None, help="comma-separated: finetune, distill, replay, distill+replay, "
                                                   "joint")
    p.add_argument("--steps-per-task", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patch-size", type=int, default=None)
    _add_space_file(p)
    p.add_argument("--replay-size", type=int, default=None, help="samples kept in the rain-review buffer")
    p.add_argument("--replay-policy", default=None, help="quota (equal share per old task) or reservoir")
    p.add_argument("--space-config", default=None,
                   help="KEY=VALUE,... overrides of the genotype's space_config, e.g. channels=12,frames=3")
    _add_precision(p)
    _add_common(p)

    p = sub.add_parser("compare", help="every strategy x seed under one budget, retrained alike, scored on held-out "
                                       "synthetic clips; results.csv, summary.md, plots (re-run to resume)")
    p.add_argument("--space", default=None, help="search space (default tmics), or several comma-separated, e.g. "
                                                 "tmics,rrgnet,rdmc: each searched by every strategy x seed alike")
    p.add_argument("--preset", default=None, help="space preset (default demo)")
    p.add_argument("--strategies", default=None, help="comma-separated, e.g. darts,gdas,random")
    p.add_argument("--seeds", type=int, default=None, help="seeds per strategy (0..K-1 from --first-seed)")
    p.add_argument("--first-seed", type=int, default=None)
    p.add_argument("--budget", type=float, default=None, help="search budget per run, in --budget-unit")
    p.add_argument("--budget-unit", choices=("epochs", "seconds"), default=None,
                   help="epochs (default: epoch-equivalents, fair on a shared machine) or wall-clock seconds")
    p.add_argument("--trial-epochs", type=int, default=None, help="multi-trial: epochs per trial")
    p.add_argument("--retrain-epochs", type=int, default=None)
    p.add_argument("--config", default=None, help="YAML file with compare settings (nas_restore.compare)")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--device", default=None)
    p.add_argument("--progress", action="store_true", help="progress bars of every search and retraining")
    _add_precision(p)

    p = sub.add_parser("rank", help="retrain genotypes alike and rank them on an evaluation split only, beside the "
                                    "rainy input; params, FLOPs, frames/s (re-run to resume)")
    p.add_argument("entries", nargs="+", metavar="GENOTYPE",
                   help="genotype.json / run folder / DARTS text (FILE:NAME), a reference name (tmics-heavy, "
                        "tmics-light), random:N (N random genotypes of the like genotype's space), space:NAME[:PRESET]")
    p.add_argument("--train-data", default=None, help="folder to train on (default: built-in synthetic rain)")
    p.add_argument("--train-split", default=None, help="split of the training folder's SPLITS.txt, e.g. fit")
    p.add_argument("--eval-data", default=None, help="folder to score (default: held-out synthetic clips)")
    p.add_argument("--eval-split", default=None, help="split of the evaluation folder, e.g. holdout")
    p.add_argument("--like", default=None, help="genotype whose space config random:N (and --reference-size like) "
                                                "use; default: the first genotype file listed")
    _add_space_file(p)
    p.add_argument("--reference-size", choices=("released", "like"), default=None,
                   help="TMICS references at their released size (default) or rebuilt at the like genotype's size")
    p.add_argument("--random-seed", type=int, default=None, help="random:N draws seeds S, S+1, ... (default 0)")
    p.add_argument("--match-size", default=None, metavar="TOL|off",
                   help="keep random:N draws whose parameters and MACs are within TOL (a fraction) of the like "
                        "genotype's (default 0.15; at most 50 N tries, a shortfall is reported); off: uniform draws")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="retrain every entry with K seeds (--seed, +1, ...): mean ± std per entry and a bootstrap "
                        "interval of its difference to the random rows (default 1)")
    p.add_argument("--profile-size", default=None, help="WxH for FLOPs and frames/s (default 640x480)")
    p.add_argument("--config", default=None, help="YAML file with rank settings (retrain: {train:, data:}, ...)")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    _add_precision(p)

    p = sub.add_parser("trust", help="can a one-shot run's ranking be trusted? N architectures scored by its trained "
                                     "supernet and by short standalone training; Kendall tau, Spearman rho (re-run "
                                     "to resume)")
    p.add_argument("run", metavar="RUN", help="a finished one-shot search run folder (darts, darts2, gdas, tmics, "
                                              "pcdarts, spos) with its supernet.pt")
    p.add_argument("--samples", type=int, default=None, help="architectures, the searched genotype included "
                                                             "(default 8)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each standalone training (default 10)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="optimiser steps per standalone epoch (default: the whole train split)")
    p.add_argument("--batch-size", type=int, default=None, help="standalone batch size (default: the search's)")
    p.add_argument("--lr", type=float, default=None, help="standalone learning rate (default: the search's)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples of the intervals (default 2000)")
    p.add_argument("--out", default=None, help="output folder (default RUN/trust)")
    _add_space_file(p)
    _add_common(p)
    _add_precision(p)
    p.add_argument("--json", action="store_true", help="print trust.json's figures as one JSON object")

    p = sub.add_parser("study", help="one config, one report folder: searches, trust checks, every genotype "
                                     "retrained with seeds against random and hand designs, profiles, findings "
                                     "(re-run to resume)")
    p.add_argument("--config", default=None, help="YAML file with study settings (`nas-restore config study`)")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--device", default=None, help="auto (GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--dry-run", action="store_true",
                   help="print the units it would run (finished ones marked) and their cost; run nothing")
    p.add_argument("--progress", action="store_true", help="progress bars of every search and retraining")
    _add_precision(p)

    p = sub.add_parser("profile", help="parameters, MACs, latency, frames/s, GFLOP/s against the machine's conv "
                                       "peak, and peak memory of a genotype's network, per precision")
    p.add_argument("genotype", help="genotype.json, a run folder, a reference name (tmics-heavy, rescnn) or "
                                    "space:NAME[:PRESET]")
    p.add_argument("--size", default="480x640", metavar="HxW", help="input frame size, height x width "
                                                                  "(default 480x640)")
    p.add_argument("--frames", type=int, default=None,
                   help="input frames (default: the genotype's; only for networks with a frames setting)")
    p.add_argument("--precision", default="fp32,auto", help="comma-separated: fp32, bf16, fp16, auto "
                                                            "(default fp32,auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    _add_space_file(p)
    p.add_argument("--repeats", type=int, default=5, help="timed passes (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-peak", action="store_true",
                   help="skip measuring the machine's peak (a 96->96 3x3 conv) and the fraction of it")
    p.add_argument("--json", action="store_true", help="print one JSON object (its rows: one per precision)")

    p = sub.add_parser("synth", help="paired rainy/clean clips (input/<clip>/, target/<clip>/) from your own clean "
                                     "video or frame folder: moving rain, scene cuts as clip boundaries")
    p.add_argument("input", nargs="+", help="clean video file(s) (mp4, avi, ...; need imageio-ffmpeg) or folder(s) "
                                            "of frames")
    p.add_argument("--out", required=True, help="output folder (new, empty, or one synth wrote before)")
    p.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="hold out the last FRACTION of each video's frames (e.g. 0.25): writes SPLITS.txt with fit "
                        "and holdout clips that share no source frame")
    p.add_argument("--holdout-gap", type=int, default=None, metavar="N",
                   help="frames between the fit and holdout parts used by no clip (default and least: --frames)")
    p.add_argument("--rain", default="light", help="rain types given to the clips in turn, comma-separated: light, "
                                                   "heavy, slanted, accumulation (default light)")
    p.add_argument("--size", default=None, metavar="HxW", help="output frame size (resized to cover, centre-cropped; "
                                                               "default: the source size)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 5)")
    p.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: --frames)")
    p.add_argument("--max-clips", type=int, default=None, help="at most this many clips per video, spread over it")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--wind", type=float, default=None,
                   help="largest turn of the fall direction, degrees per frame (drawn per clip; default 1)")
    p.add_argument("--speed", type=float, default=None, help="fall speed in px per frame (default: the rain type's)")
    p.add_argument("--haze", type=float, default=None, help="accumulation veil 0..0.95 (default: the rain type's)")
    p.add_argument("--fresh", type=float, default=None, help="share of the streaks new in every frame (default 0.2)")
    p.add_argument("--cut-k", type=float, default=None,
                   help="scene-cut threshold: median + K x MAD of the neighbours' frame differences (default 6)")
    p.add_argument("--no-cuts", action="store_true", help="do not detect scene cuts (one shot)")
    p.add_argument("--keep-repeats", action="store_true",
                   help="keep frames that repeat the previous one (dropped by default: a decoder's padding)")

    p = sub.add_parser("config", help="print the default settings of a command as YAML (a start for --config)")
    p.add_argument("kind", choices=tuple(CONFIG_CLASSES), help="which command's settings")
    p.add_argument("--print", action="store_true", help="print to stdout (the default; kept as an alias)")

    for name, what in (("spaces", "search spaces"), ("strategies", "search strategies"), ("ops", "operations")):
        p = sub.add_parser(name, help=f"list the {what}")
        p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # DDP (--devices N) starts the other processes by running sys.argv again: that is this command only when
    # main() runs the command line itself, not an argv handed to it from Python
    args.relaunchable = argv is None or list(argv) == sys.argv[1:]
    _configure_logging(args.verbose)
    _allow_named_space_files(getattr(args, "space", None))
    try:
        with JobSlot():  # counted among the running jobs: torch takes this job's share of the cores
            return int(COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; re-run the same command to resume where it resumes",
              file=sys.stderr)
        return 130
    except UserError as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception:
        print("internal error: this is a bug in nas-restore, not a problem with your input; please report it "
              "with the command and the traceback below", file=sys.stderr)
        raise


def _check_relaunchable(args: argparse.Namespace, processes: int) -> None:
    """Several processes (``--devices N``) are started by running this process's command line again (Lightning's
    "ddp"): refuse when that command line is not this command (``main([...])`` called from Python, a test)."""
    if processes > 1 and not getattr(args, "relaunchable", True):
        raise UserError(f"{args.command} with {processes} processes (--devices/--num-nodes) starts the others by "
                        "running this process's command line again, which is not this command (main() was called "
                        f"from Python): run `nas-restore {args.command} ... --devices N` from a shell, or use one "
                        "device")


def _allow_named_space_files(spaces: str | None) -> None:
    """A space file named on the command line (``--space FILE.py:CLASS``, comma-separated for compare) is the
    user's own choice: genotypes that name it may import it."""
    from search_spaces import allow_space_file, is_space_path

    for name in (spaces or "").split(","):
        if is_space_path(name.strip()):
            allow_space_file(name.strip())


_CONSOLE = "nas-restore console"


def _configure_logging(verbose: bool) -> None:
    """Console: warnings (or info with -v); the root logger passes INFO on to run folders' log files.

    One console handler per process, made anew on the current stderr at every call: ``main`` may run many
    times in one process (tests, notebooks), each time with its own stderr (an earlier one may be closed)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _CONSOLE]:
        root.removeHandler(old)
    console = logging.StreamHandler(sys.stderr)
    console.set_name(_CONSOLE)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    if is_secondary_rank():  # DDP: the other processes run the same command; rank 0 alone tells what happens
        console.setLevel(logging.ERROR)
    root.addHandler(console)
    root.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from nas_restore.demo import DemoConfig, run_demo

    overrides = {"device": args.device, "seed": args.seed, "search_epochs": args.search_epochs,
                 "retrain_epochs": args.retrain_epochs, "progress": not args.no_progress, "precision": args.precision}
    config = cfg.from_dict(DemoConfig, cfg.merge({}, overrides), "demo")
    summary = run_demo(args.out, config, say=lambda message: print(message, flush=True))
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
    from nas_restore.search import SearchConfig, run_search

    data = cfg.load_yaml(args.config, "search") if args.config else {}
    overrides: dict[str, Any] = {
        "space": args.space, "strategy": args.strategy, "preset": args.preset, "epochs": args.epochs,
        "batch_size": args.batch_size, "seed": args.seed, "device": args.device, "precision": args.precision,
        "data": {"folder": args.data, "split": args.split, "patch_size": args.patch_size},
    }
    if args.frames is not None:
        overrides["space_settings"] = {"frames": args.frames}
    if args.no_progress:
        overrides["progress"] = False
    if args.strategy_option:
        overrides["strategy_options"] = cfg.parse_assignments(args.strategy_option, "--strategy-option",
                                                              "arc_learning_rate=0.01")
    overrides.update(max_trials=args.max_trials, trial_epochs=args.trial_epochs, parallel=args.parallel,
                     budget_seconds=args.budget_seconds, devices=args.devices)
    if args.objectives is not None:
        overrides["objectives"] = [o.strip() for o in args.objectives.split(",") if o.strip()]
    merged = cfg.merge(data, overrides)
    for name in ("skip_cap", "skip_stop"):  # set after the merge: "off" is None, which merge reads as "not given"
        value = getattr(args, name)
        if value is not None:
            merged[name] = _count_or_off(value, "--" + name.replace("_", "-"))
    config = cfg.from_dict(SearchConfig, merged, "search")
    _check_relaunchable(args, config.devices)
    result = run_search(config, args.out, fresh=args.fresh)
    if is_secondary_rank():  # DDP: the other processes say nothing (rank 0 prints the result)
        return 0
    g = result.genotype
    print(f"genotype {g.genotype_id()} -> {result.genotype_path}  ({result.seconds:.0f} s)")
    print(f"  macro: {g.macro}")
    for name, cell in g.cells.items():
        print(f"  {name}: " + ", ".join(f"{e.op}<-{e.input}" for node in cell.nodes for e in node))
    return 0


def _count_or_off(text: str, flag: str) -> int | None:
    if text.strip().lower() in ("off", "none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise cfg.ConfigError(f"{flag} takes a whole number >= 0 or 'off', got {text!r}") from None


def _genotype_argument(text: str, name: str | None = None):
    """``PATH`` or ``PATH:NAME`` (one Genotype of a DARTS text file) -> (genotype, label)."""
    from nas_restore.sources import load_genotype

    genotype = load_genotype(text, name=name)
    label = " ".join(p for p in (text, name or (genotype.metadata or {}).get("name"), genotype.genotype_id()) if p)
    return genotype, label


def cmd_render(args: argparse.Namespace) -> int:
    from nas_restore.render import render_genotype

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if args.diff:
        from nas_restore.analysis import diff_genotypes
        from nas_restore.render import render_diff

        if args.genotype is not None:
            raise cfg.ConfigError(f"render --diff A B takes no other genotype (got {args.genotype!r}); "
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
        raise cfg.ConfigError("render needs a GENOTYPE (genotype.json, run folder, DARTS text) or --diff A B")
    path = Path(args.genotype)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "render"
    from nas_restore.render_run import render_run
    from nas_restore.run_records import is_run_folder

    if is_run_folder(path):
        if args.name:
            raise cfg.ConfigError("--name picks a Genotype(...) of a text file; a run folder has one genotype.json: "
                                  "drop --name")
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
    if args.channels is not None and args.channels < 1:
        raise UserError(f"--channels must be >= 1, got {args.channels}")
    report = inspect_genotype(genotype, channels=args.channels)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from nas_restore.retraining import RetrainRunConfig, run_retrain

    data = cfg.load_yaml(args.config, "retrain") if args.config else {}
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "device": args.device, "devices": args.devices, "num_nodes": args.num_nodes, "precision": args.precision}
    if args.no_progress:
        train["progress"] = False
    overrides = {"train": train, "data": {"folder": args.data, "split": args.split, "patch_size": args.patch_size}}
    config = cfg.from_dict(RetrainRunConfig, cfg.merge(data, overrides), "retrain")
    _check_relaunchable(args, config.train.devices * config.train.num_nodes)
    result = run_retrain(args.genotype, config, args.out)
    if result.rank:  # DDP: the other processes say nothing (rank 0 prints the result)
        return 0
    print(f"best val PSNR {result.best_val_psnr:.2f} dB / SSIM {result.best_val_ssim:.4f} after "
          f"{result.epochs_run} epoch(s) in {result.seconds:.0f} s")
    print(f"  model   : {result.model_path}")
    print(f"  metrics : {result.metrics_csv}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas_restore.build import check_frames
    from nas_restore.evaluation import evaluate_folder
    from nas_restore.metrics import Protocol

    protocol = Protocol(y_channel=not args.rgb, crop_border=args.crop_border)
    model, frames = None, check_frames(args.frames)  # a model's own is checked against it below
    if args.model:
        from nas_restore.inference import Derainer

        derainer = Derainer.from_checkpoint(args.model, frames=args.frames, device=args.device,
                                            tile=args.tile or None, overlap=args.tile_overlap,
                                            precision=args.precision or "fp32")
        model, frames = derainer.as_module(), derainer.frames
    from nas_restore.evaluation import is_frame_folder

    if is_frame_folder(args.data):
        return _evaluate_frames(args, model, frames)
    if args.save_outputs or args.out:  # folders, never among (or over) the images being scored
        from nas_restore.data.folders import find_pair_dirs
        from nas_restore.outputs import check_not_inside, check_output_folder

        inputs, targets = find_pair_dirs(args.data)
        for flag, value in (("--save-outputs", args.save_outputs), ("--out", args.out)):
            if value:
                check_output_folder(value, flag)
                check_not_inside(value, {"the data's input folder": inputs, "the data's target folder": targets}, flag)
    result = evaluate_folder(Path(args.data), model, protocol=protocol, frames=frames,
                             device=args.device if args.model else "cpu", split=args.split,
                             save_outputs=Path(args.save_outputs) if args.save_outputs else None,
                             progress=not (args.no_progress or args.json))
    if args.out:
        result.save(Path(args.out))
    if args.json:
        from nas_restore.evaluation import _jsonable

        print(json.dumps(_jsonable(result.summary), indent=2))
    else:
        s = result.summary
        if "psnr_input" in s:
            print(f"input : PSNR {s['psnr_input']:.2f} dB  SSIM {s['ssim_input']:.4f}")
        print(f"{'output' if model is not None else 'input '}: PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.4f}"
              f"  ({s['count']} items; {s['protocol']})")
        if "warp_error" in s:
            print(f"warping error x1e3 (lower = steadier): {'output' if model is not None else 'input'} "
                  f"{1e3 * s['warp_error']:.3f}, input {1e3 * s['warp_error_input']:.3f}, clean frames "
                  f"{1e3 * s['warp_error_clean']:.3f}  ({s['temporal_measure']})")
    return 0


def _evaluate_frames(args: argparse.Namespace, model: Any, frames: int) -> int:
    """`evaluate` on a folder of rainy frames without targets: the no-reference temporal measures."""
    from nas_restore.evaluation import _jsonable, evaluate_frames
    from nas_restore.outputs import check_not_inside, check_output_folder

    if args.split:
        raise cfg.ConfigError(f"--split selects pairs of a folder with targets; {args.data} is a folder of frames "
                              "without targets: drop --split")
    for flag, value in (("--save-outputs", args.save_outputs), ("--out", args.out)):
        if value:
            check_output_folder(value, flag)
            check_not_inside(value, {"the frame folder": Path(args.data)}, flag)
    result = evaluate_frames(Path(args.data), model, frames=frames, device=args.device if model is not None else "cpu",
                             save_outputs=Path(args.save_outputs) if args.save_outputs else None,
                             progress=not (args.no_progress or args.json), warp=not args.no_warp_error)
    if args.out:
        result.save(Path(args.out))
    s = result.summary
    if args.json:
        print(json.dumps(_jsonable(s), indent=2))
        return 0
    print(f"{s['count']} frames without targets: no-reference temporal measures over the "
          f"{100 * s['static_share']:.1f}% of the pixels where the scene is static")
    rows = [("input", s["flicker_input"], s["warp_error_input"])]
    if model is not None:
        rows.append(("output", s["flicker"], s["warp_error"]))
    for name, flicker, warp in rows:
        warp_text = f"  warping error x1e3 {1e3 * warp:.3f}" if not args.no_warp_error else ""
        print(f"{name:<6}: static-region flicker x1e3 {1e3 * flicker:.3f}{warp_text}  (lower = steadier)")
    print(f"  ({s['flicker_measure']})")
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    from nas_restore.continual import ContinualConfig, run_continual, scheme_metrics
    from nas_restore.report_common import command_line

    data = cfg.load_yaml(args.config, "continual") if args.config else {}
    split = (lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None)  # noqa: E731
    overrides: dict[str, Any] = {
        "tasks": split(args.tasks), "schemes": split(args.schemes), "steps_per_task": args.steps_per_task,
        "batch_size": args.batch_size, "lr": args.lr, "patch_size": args.patch_size, "seed": args.seed,
        "device": args.device, "precision": args.precision,
        "replay": {"size": args.replay_size, "policy": args.replay_policy},
        "space_config": (cfg.parse_assignments(args.space_config.split(","), "--space-config", "channels=12,frames=3")
                         if args.space_config else None),
    }
    if args.no_progress:
        overrides["progress"] = False
    config = cfg.from_dict(ContinualConfig, cfg.merge(data, overrides), "continual")
    genotype, _ = _genotype_argument(args.genotype)

    def on_stage(scheme: str, k: int, task: str, row: dict[str, Any], skipped: bool) -> None:
        if config.progress:
            scores = ", ".join(f"{t} {v:.2f}" for t, v in row["psnr"].items())
            print(f"{scheme:>15} after {k}:{task:<13} PSNR {scores}{'  (done before)' if skipped else ''}",
                  flush=True)

    result = run_continual(genotype, config, args.out, command=command_line(), on_stage=on_stage)
    print(f"{result.stages_run} stage(s) run ({result.stages_shared} first stage(s) reused from another scheme), "
          f"{result.stages_skipped} already done")
    for scheme, matrix in result.matrices.items():
        m = scheme_metrics(matrix)
        print(f"  {scheme:>15}: avg PSNR {m['avg_psnr']:.2f} dB, forgetting {m['forgetting_db']:.2f} dB, "
              f"BWT {m['bwt_db']:.2f} dB")
    print(f"  summary: {result.summary_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from nas_restore.compare import CompareConfig, run_compare
    from nas_restore.report_common import command_line

    data = cfg.load_yaml(args.config, "compare") if args.config else {}
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    overrides: dict[str, Any] = {
        "space": args.space, "preset": args.preset, "strategies": strategies, "seeds": args.seeds,
        "first_seed": args.first_seed, "budget": args.budget, "budget_unit": args.budget_unit,
        "trial_epochs": args.trial_epochs, "device": args.device, "precision": args.precision,
        "retrain": {"train": {"epochs": args.retrain_epochs}},
    }
    if args.progress:
        overrides["progress"] = True
    config = CompareConfig.from_dict(cfg.merge(data, overrides))
    result = run_compare(config, args.out, command=command_line(), say=lambda m: print(m, flush=True))
    done = result.results[result.results["status"] == "done"]
    print(f"{len(done)}/{len(result.results)} run(s) finished ({len(result.ran)} worked on in this call)")
    keys = ["space", "strategy"] if "space" in done else ["strategy"]  # several spaces: space/strategy
    for key, group in done.groupby(keys, sort=False):
        print(f"  {'/'.join(map(str, key)):>12}: PSNR {group['psnr'].mean():.2f} dB over {len(group)} seed(s)")
    print(f"  results : {result.out / 'results.csv'}")
    print(f"  summary : {result.summary_path}")
    for path in result.plots:
        print(f"  plot    : {path}")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from nas_restore.rank import RankConfig, run_rank
    from nas_restore.report_common import command_line

    data = cfg.load_yaml(args.config, "rank") if args.config else {}
    profile = None
    if args.profile_size:
        try:
            w, h = (int(v) for v in args.profile_size.lower().split("x"))
        except ValueError:
            raise cfg.ConfigError(f"--profile-size expects WxH (e.g. 640x480), got {args.profile_size!r}") from None
        profile = [h, w]
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "device": args.device}
    overrides: dict[str, Any] = {
        "retrain": {"train": train, "data": {"folder": args.train_data, "split": args.train_split,
                                             "patch_size": args.patch_size}},
        "eval_data": args.eval_data, "eval_split": args.eval_split, "like": args.like,
        "reference_size": args.reference_size, "random_seed": args.random_seed, "profile_size": profile,
        "device": args.device, "precision": args.precision, "seeds": args.seeds,
    }
    if args.progress:
        overrides["progress"] = True
    merged = cfg.merge(data, overrides)
    if args.match_size is not None:
        if args.match_size.strip().lower() in ("off", "none", "no"):
            merged["match_tolerance"] = None  # an explicit null: RankConfig.from_dict keeps it (matching off)
        else:
            try:
                merged["match_tolerance"] = float(args.match_size)
            except ValueError:
                raise cfg.ConfigError(f"--match-size expects a fraction (e.g. 0.15 for within 15 %) or off, got "
                                      f"{args.match_size!r}") from None
    config = RankConfig.from_dict(merged)
    result = run_rank(args.entries, config, args.out, command=command_line(), say=lambda m: print(m, flush=True))
    for r in result.results.itertuples():
        score = f"PSNR {r.psnr:.2f} dB  SSIM {r.ssim:.4f}" if r.status == "done" else f"{r.status}: {r.error}"
        seed = f" (seed {int(r.seed)})" if config.seeds > 1 and r.kind != "input" else ""
        print(f"  {r.entry + seed:>24}: {score}")
    for line in result.statistics.itertuples() if result.statistics is not None else ():
        if line.separable is not None and line.psnr_diff_random == line.psnr_diff_random:
            verdict = "separable" if line.separable else "not separable"
            print(f"  {line.entry:>24}: {line.psnr_diff_random:+.2f} dB to the random mean "
                  f"[{line.psnr_diff_lo:+.2f}, {line.psnr_diff_hi:+.2f}], {verdict}")
    print(f"  results : {result.out / 'results.csv'}")
    print(f"  summary : {result.summary_path}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from nas_restore.trust import TrustConfig, run_trust

    overrides = {"samples": args.samples, "standalone_epochs": args.epochs,
                 "standalone_steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size, "lr": args.lr,
                 "seed": args.seed, "bootstrap_resamples": args.resamples, "precision": args.precision,
                 "device": args.device, "progress": not (args.no_progress or args.json)}
    config = cfg.from_dict(TrustConfig, {k: v for k, v in overrides.items() if v is not None}, "trust")
    say = (lambda m: None) if args.json else (lambda m: print(m, flush=True))
    result = run_trust(Path(args.run), config, Path(args.out) if args.out else None, say=say)
    if args.json:
        print(json.dumps({"kendall_tau": result.kendall_tau, "tau_ci": list(result.tau_ci),
                          "spearman_rho": result.spearman_rho, "rho_ci": list(result.rho_ci),
                          "sentence": result.sentence, "searched_genotype_id": result.searched_id,
                          "trained": result.trained, "skipped": result.skipped, "failed": result.failed,
                          "out": str(result.out_dir)}, indent=2))
        return 0
    for row in result.rows:
        mark = "*" if row["searched"] else " "
        print(f" {mark}{row['genotype_id']}  supernet {row['supernet_psnr']:6.2f} dB (rank {row['supernet_rank']:g})  "
              f"standalone {row['standalone_psnr']:6.2f} dB (rank {row['standalone_rank']:g})")
    print(f"  Kendall tau  {result.kendall_tau:.2f} [{result.tau_ci[0]:.2f}, {result.tau_ci[1]:.2f}]")
    print(f"  Spearman rho {result.spearman_rho:.2f} [{result.rho_ci[0]:.2f}, {result.rho_ci[1]:.2f}]")
    print(f"  {result.sentence}")
    print(f"  (* the searched genotype; {len(result.trained)} standalone training(s) run now, "
          f"{len(result.skipped)} finished earlier, {len(result.failed)} failed)")
    for name in ("csv", "json", "md", "png"):
        if name in result.files:
            print(f"  {name:<8}: {result.files[name]}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from nas_restore.evidence import StudyConfig, plan, run_study
    from nas_restore.report_common import command_line

    data = cfg.load_yaml(args.config, "study") if args.config else {}
    overrides: dict[str, Any] = {"device": args.device, "precision": args.precision}
    if args.progress:
        overrides["progress"] = True
    config = StudyConfig.from_dict(cfg.merge(data, overrides))
    if args.dry_run:
        units = plan(config, args.out)
        for unit in units:
            print(f"  {'done' if unit.done else 'todo'}  {unit.stage:<7} {unit.label}: {unit.cost}")
        steps = sum(u.steps or 0 for u in units if not u.done)
        print(f"{sum(not u.done for u in units)} of {len(units)} stage unit(s) to run; about {steps:,} optimiser "
              "steps of searching, trust checks and retraining left (profiles besides)")
        return 0
    result = run_study(config, args.out, command=command_line(), say=lambda m: print(m, flush=True))
    if result.waiting:
        print(f"{len(result.ran)} unit(s) worked on in this call; {len(result.waiting)} still in progress elsewhere")
        return 0
    done = result.results[(result.results["status"] == "done") & (result.results["kind"] != "input")]
    print(f"{len(done)}/{int((result.results['kind'] != 'input').sum())} (entry, seed) row(s) finished "
          f"({len(result.ran)} unit(s) worked on in this call)")
    for line in result.findings:
        print(f"  - {line.replace('**', '')}")
    print(f"  results : {result.out / 'results.csv'}")
    print(f"  summary : {result.summary_path}")
    return 0


def cmd_derain(args: argparse.Namespace) -> int:
    from nas_restore.inference import Derainer, figure_of_result
    from nas_restore.outputs import check_not_inside, check_output_folder

    derainer = Derainer.from_checkpoint(args.model, device=args.device, tile=args.tile or None,
                                        overlap=args.tile_overlap, progress=not args.no_progress,
                                        precision=args.precision or "fp32")
    check_output_folder(args.out)
    source = Path(args.input)  # outputs keep the input file names: in the input's folder they would overwrite it
    if source.is_dir():
        check_not_inside(args.out, {"the input folder": source})
    elif source.exists():
        check_not_inside(args.out, {"the input file's folder": source.parent}, inside=False)
    if (args.video or args.report) and source.is_file():
        raise cfg.ConfigError(f"--video and --report work on a folder of frames; {source} is a file (a video file "
                              "gives an mp4 in --out already): extract its frames (ffmpeg -i VIDEO frames/%05d.png)")
    for flag, value in (("--video", args.video), ("--report", args.report)):
        if value:
            check_not_inside(value, {"the input folder": source}, flag)
    if args.video:
        from nas_restore.inference import check_video_file

        check_video_file(args.video, args.fps)  # before the frames are derained, not after
    result = derainer.run(args.input, args.out, mode=args.mode)
    print(f"derained {len(result.inputs)} {result.mode} -> {args.out}")
    if args.figure:
        print(f"  figure  : {figure_of_result(result, args.figure, args.figure_frames)}")
    if args.video:
        from nas_restore.inference import video_of_result

        print(f"  video   : {video_of_result(result, args.video, args.fps, args.video_layout)} ({args.video_layout}, "
              f"{args.fps:g} fps)")
    if args.report:
        from nas_restore.evaluation import _jsonable
        from nas_restore.inference import temporal_report

        report = temporal_report(result, warp=not args.no_warp_error)
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
        flicker, warp = report["flicker"], report["warp_error"]
        warp_text = "" if args.no_warp_error else (f"; warping error x1e3 input {1e3 * warp['input']:.3f}, output "
                                                   f"{1e3 * warp['output']:.3f}")
        print(f"  report  : {path}: static-region flicker x1e3 input {1e3 * flicker['input']:.3f}, output "
              f"{1e3 * flicker['output']:.3f}{warp_text} ({100 * report['static_share']:.0f}% of the pixels static; "
              "lower = steadier)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nas_restore.export import export_checkpoint

    result = export_checkpoint(args.model, args.out, args.height, args.width)
    if result.message:
        print(result.message, file=sys.stderr)
    loader = "torch.export.load(path).module()" if result.method == "torch.export" else "torch.jit.load(path)"
    print(f"exported with {result.method} ({'any' if result.dynamic else 'only the example'} size; max error "
          f"{result.max_abs_error:.2g} vs the model) -> {result.path}")
    print(f"  load with {loader}; input [1, {result.example_shape[1]}, 3, H, W] in [0, 1]")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from nas_restore.build import build_model
    from nas_restore.device import resolve_device
    from nas_restore.profiling import conv_peak, input_shape, profile_network, resolve_precisions
    from nas_restore.sources import load_genotype, with_frames
    from nas_restore.study import machine_info, machine_line

    def size_hw(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            h = w = 0
        if h < 1 or w < 1:
            raise cfg.ConfigError(f"--size expects HxW, height x width in pixels (e.g. 320x480), got {text!r}")
        return h, w

    height, width = size_hw(args.size)
    if args.repeats < 1 or args.warmup < 0:
        raise cfg.ConfigError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.frames is not None and args.frames < 1:
        raise cfg.ConfigError(f"--frames must be >= 1, got {args.frames}")
    if args.threads is not None:
        if args.threads < 1:
            raise cfg.ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = resolve_precisions([p for p in args.precision.split(",") if p.strip()], device)
    genotype = load_genotype(args.genotype)
    if args.frames is not None:
        genotype = with_frames(genotype, args.frames)
    frames = int(genotype.space_config.get("frames", 1))
    model = build_model(genotype)
    peaks = {} if args.no_peak else {
        p.name: conv_peak(p, device, repeats=args.repeats, warmup=max(1, args.warmup)) for p in precisions}
    rows = profile_network(model, input_shape(frames, height, width), precisions, device,
                           repeats=args.repeats, warmup=args.warmup, peaks=peaks)
    info = machine_info(str(device))
    name = (genotype.metadata or {}).get("name") or args.genotype
    if args.json:
        print(json.dumps({"genotype": args.genotype, "name": str(name), "genotype_id": genotype.genotype_id(),
                          "space": genotype.space, "frames": frames, "height": height, "width": width,
                          "device": str(device), "threads": torch.get_num_threads(), "cpu": info["cpu"],
                          "machine": info, "conv_peak": {k: v.to_dict() for k, v in peaks.items()},
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return 0
    first = rows[0]
    print(f"{name} ({genotype.space}, {genotype.genotype_id()}): input {'x'.join(map(str, first.shape))} "
          f"(T={frames}, {height}x{width}); {first.params:,} parameters; {first.macs / 1e9:.3f} GMACs = "
          f"{first.flops / 1e9:.3f} GFLOPs per frame")
    print(f"machine: {machine_line(info)}")
    for peak in peaks.values():
        print(f"peak {peak.line()}")
    header = f"{'precision':<9}  {'s/frame':>9}  {'frames/s':>9}  {'GFLOP/s':>8}  {'of peak':>7}  {'peak memory':>11}"
    print(header)
    for r in rows:
        share = f"{100 * r.fraction_of_peak:.1f}%" if r.fraction_of_peak is not None else "-"
        print(f"{r.precision:<9}  {r.seconds_per_frame:>9.4f}  {r.fps:>9.2f}  {r.gflops:>8.1f}  {share:>7}  "
              f"{r.peak_memory_bytes / 2**20:>7.1f} MiB")
    print(f"(median of {first.repeats} after {first.warmup} warm-up; memory: {first.memory_method}; "
          "timings depend on the machine's load)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from collections import Counter

    from nas_restore.data.video_synth import SynthConfig, parse_size, synth

    overrides: dict[str, Any] = {
        "rain": [r.strip() for r in args.rain.split(",") if r.strip()],
        "size": parse_size(args.size) if args.size else None, "frames": args.frames, "stride": args.stride,
        "max_clips": args.max_clips, "seed": args.seed, "wind": args.wind, "speed": args.speed, "haze": args.haze,
        "fresh": args.fresh, "cut_k": args.cut_k, "holdout": args.holdout, "holdout_gap": args.holdout_gap,
    }
    if args.no_cuts:
        overrides["detect_cuts"] = False
    if args.keep_repeats:
        overrides["drop_repeats"] = False
    config = cfg.from_dict(SynthConfig, cfg.merge({}, overrides), "synth")
    result = synth(args.input, args.out, config)
    r = result.record
    rains = ", ".join(f"{n} {name}" for name, n in Counter(c["rain"] for c in result.clips).items())
    print(f"wrote {len(result.clips)} clip(s) of {config.frames} frames ({r['size'][0]}x{r['size'][1]}; {rains}) "
          f"-> {result.out}")
    for src in result.sources:
        repeats = f", {len(src['repeated_frames'])} repeated frame(s) dropped" if src["repeated_frames"] else ""
        cuts = (" at " + ", ".join(map(str, src["cuts"][:10])) + (" ..." if len(src["cuts"]) > 10 else "")
                if src["cuts"] else "")
        held = (f"; fit frames {src['fit_frames'][0]}-{src['fit_frames'][1] - 1}, holdout frames "
                f"{src['holdout_frames'][0]}-{src['holdout_frames'][1] - 1}" if "holdout_frames" in src else "")
        print(f"  source  : {src['path']} ({src['frames']} frames{repeats}, {len(src['cuts'])} scene cut(s){cuts}"
              f"{held})")
    print(f"  record  : {result.record_path}")
    split = ""
    if result.splits:
        print(f"  splits  : {result.out / 'SPLITS.txt'} (fit {len(result.splits['fit'])} clip(s), holdout "
              f"{len(result.splits['holdout'])}; no source frame on both sides)")
        split = " --split fit"
    print(f"  train on: nas-restore search --data {result.out}{split} --frames N (N odd, <= {config.frames})")
    return 0


# `nas-restore config KIND`: the config class behind each command's --config file (module, class)
CONFIG_CLASSES = {"search": ("nas_restore.search", "SearchConfig"),
                  "retrain": ("nas_restore.retraining", "RetrainRunConfig"),
                  "compare": ("nas_restore.compare", "CompareConfig"),
                  "rank": ("nas_restore.rank", "RankConfig"),
                  "continual": ("nas_restore.continual", "ContinualConfig"),
                  "study": ("nas_restore.evidence", "StudyConfig")}
assert tuple(CONFIG_CLASSES) == cfg.CONFIG_KINDS


def config_class(kind: str) -> type:
    """The config dataclass of ``kind`` (search, retrain, compare, rank, continual)."""
    import importlib

    module, name = CONFIG_CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    defaults = cfg.to_dict(config_class(args.kind)())
    print(f"# nas-restore {args.kind} --config FILE: the defaults (keep only the settings you change)")
    print(yaml.safe_dump(defaults, sort_keys=False), end="")
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
            "retrain": cmd_retrain, "continual": cmd_continual, "compare": cmd_compare, "rank": cmd_rank,
            "evaluate": cmd_evaluate, "derain": cmd_derain, "export": cmd_export, "config": cmd_config,
            "spaces": cmd_list, "strategies": cmd_list, "ops": cmd_list, "profile": cmd_profile,
            "synth": cmd_synth, "trust": cmd_trust, "study": cmd_study}


if __name__ == "__main__":
    sys.exit(main())
