"""`nas-restore demo`: the whole journey on built-in data, sized for a 2-core CPU.

synthesise rainy clips -> DARTS search of the TMICS space -> render the cells -> retrain the genotype
from scratch -> derain held-out synthetic clips nobody trained or searched on -> summary.json
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nas_restore.build import load_trained
from nas_restore.datasets import DataConfig
from nas_restore.device import resolve_device
from nas_restore.evaluation import evaluate_folder
from nas_restore.losses import LossConfig
from nas_restore.precision import resolve_precision
from nas_restore.render import render_genotype
from nas_restore.retraining import RetrainRunConfig, run_retrain
from nas_restore.search import SearchConfig, run_search
from nas_restore.study import HeldOutConfig, write_test_clips
from nas_restore.training import RetrainConfig

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """The demo's sizes; the defaults finish in minutes on a 2-core CPU (see README for figures)."""

    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"      # fp32, bf16, fp16 or auto (search, retraining and scoring)
    frames: int = 3
    search_epochs: int = 3
    search_items: int = 96
    search_patch: int = 32
    retrain_epochs: int = 12
    retrain_items: int = 384
    retrain_patch: int = 48
    test_clips: int = 4
    test_frames: int = 7
    test_size: int = 96
    progress: bool = True
    rain_types: list[str] = field(default_factory=lambda: ["light", "heavy", "slanted", "accumulation"])


def run_demo(out_dir: str | Path, config: DemoConfig | None = None,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every stage; returns (and writes) the summary."""
    say = say or log.info  # the CLI passes print: the library only logs

    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    say(f"[1/5] synthesising held-out rainy test clips -> {out / 'data' / 'test'}")
    t0 = time.perf_counter()
    test_dir = write_test_clips(HeldOutConfig(clips=config.test_clips, frames_per_clip=config.test_frames,
                                              size=config.test_size, seed=10_000 * config.seed + 7,
                                              rain_types=list(config.rain_types)), out / "data" / "test")
    stage("data", t0)

    say("[2/5] searching the TMICS space with DARTS (alignment OFM/TGM, DNA and CNA cells)")
    t0 = time.perf_counter()
    search_config = SearchConfig(
        space="tmics", preset="demo", space_settings={"frames": config.frames}, strategy="darts",
        strategy_options={"arc_learning_rate": 3e-3}, epochs=config.search_epochs, batch_size=8, lr=2e-3,
        data=DataConfig(patch_size=config.search_patch, train_items=config.search_items,
                        val_items=config.search_items, rain_types=list(config.rain_types)),
        seed=config.seed, device=config.device, precision=config.precision, progress=config.progress)
    search = run_search(search_config, out / "search")
    stage("search", t0)
    say(f"      genotype {search.genotype.genotype_id()}: alignment={search.genotype.macro.get('alignment')}, "
        f"dna={search.genotype.cells['dna'].ops}, cna={search.genotype.cells['cna'].ops}")

    say(f"[3/5] rendering the searched cells -> {out / 'render'}")
    t0 = time.perf_counter()
    rendered = render_genotype(search.genotype, out / "render")
    for message in rendered.messages:
        say(f"      {message}")
    stage("render", t0)

    say("[4/5] retraining the genotype from scratch")
    t0 = time.perf_counter()
    retrain_config = RetrainRunConfig(
        train=RetrainConfig(epochs=config.retrain_epochs, batch_size=8, lr=2e-3, min_lr=1e-5,
                            loss=LossConfig(), seed=config.seed, device=config.device, progress=config.progress,
                            precision=config.precision),
        data=DataConfig(patch_size=config.retrain_patch, train_items=config.retrain_items, val_items=48,
                        rain_types=list(config.rain_types)))
    # one folder per architecture: a re-run with another seed never resumes a different network
    retrained = run_retrain(search.genotype, retrain_config, out / f"retrain-{search.genotype.genotype_id()}")
    stage("retrain", t0)

    say(f"[5/5] deraining the held-out clips -> {out / 'outputs'}")
    t0 = time.perf_counter()

    model, _ = load_trained(retrained.model_path)
    precision = resolve_precision(config.precision, resolve_device(config.device))
    model = precision.wrap(model)
    evaluation = evaluate_folder(test_dir, model, frames=config.frames, save_outputs=out / "outputs",
                                 progress=config.progress)
    evaluation.save(out / "evaluation")
    stage("evaluate", t0)

    s = evaluation.summary
    summary = {
        "psnr_input": s["psnr_input"], "psnr_output": s["psnr"],
        "ssim_input": s["ssim_input"], "ssim_output": s["ssim"],
        "gain_db": s["psnr"] - s["psnr_input"],
        "count": s["count"], "protocol": s["protocol"],
        "genotype": str(search.genotype_path), "genotype_id": search.genotype.genotype_id(),
        "model": str(retrained.model_path), "render_dir": str(out / "render"),
        "outputs_dir": str(out / "outputs"), "test_data": str(test_dir),
        "best_val_psnr": retrained.best_val_psnr, "precision": precision.name,
        "seconds": round(time.perf_counter() - started, 1), "stage_seconds": timings,
        "config": {k: v for k, v in config.__dict__.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
