"""The figures of a strategy comparison: anytime curves, PSNR against parameters, PSNR per strategy.

Each function reads the tidy frames `compare` writes (results.csv rows, anytime.csv per run) and
saves one PNG; matplotlib runs headless (Agg).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from nas_restore.multitrial import pareto_front

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib  # optional and slow to import: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(names: list[str]) -> dict[str, object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def step_on_grid(cost: np.ndarray, best: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The best-so-far value at each grid point (NaN before the run's first result)."""
    order = np.argsort(cost)
    cost, best = cost[order], best[order]
    idx = np.searchsorted(cost, grid, side="right") - 1
    out = np.full(grid.shape, np.nan)
    ok = idx >= 0
    out[ok] = best[idx[ok]]
    return out


def anytime_plot(curves: dict[str, list[pd.DataFrame]], path: Path, cost_column: str = "cost_epochs") -> Path | None:
    """Per strategy: each seed's best-so-far curve (thin), the median over seeds and the min-max band."""
    curves = {k: [c for c in v if len(c) and cost_column in c] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    plt = _pyplot()
    colours = _colours(list(curves))
    top = max(float(c[cost_column].max()) for runs in curves.values() for c in runs)
    grid = np.linspace(0.0, top, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        values = np.stack([step_on_grid(c[cost_column].to_numpy(float), c["best_val_psnr"].to_numpy(float), grid)
                           for c in runs])
        for c in runs:  # each seed's own points, so that short runs (one or two points) still show
            c = c.sort_values(cost_column)
            ax.step(c[cost_column], c["best_val_psnr"], where="post", color=colours[name], alpha=0.35,
                    linewidth=0.8, marker="o", markersize=3)
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            lo, mid, hi = np.nanmin(values, 0), np.nanmedian(values, 0), np.nanmax(values, 0)
        ax.fill_between(grid, lo, hi, color=colours[name], alpha=0.15, linewidth=0)
        ax.plot(grid, mid, color=colours[name], linewidth=2, label=f"{name} (median of {len(runs)})")
    ax.set_xlabel("search cost (" + ("epoch-equivalents" if cost_column == "cost_epochs" else "seconds") + ")")
    ax.set_ylabel("best validation PSNR so far (dB)")
    ax.set_title("Anytime curves (band: min-max over seeds)\none-shot: supernet PSNR; multi-trial: trained trials",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class _quiet_nan_warnings:
    """All-NaN columns (before a run's first result) are expected; numpy's warning about them is not news."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def pareto_plot(results: pd.DataFrame, path: Path, psnr_input: float | None = None) -> Path | None:
    """PSNR on the test set against parameters, every finished run, with the Pareto front."""
    done = results[results["status"] == "done"].dropna(subset=["params", "psnr"])
    if done.empty:
        return None
    plt = _pyplot()
    colours = _colours(list(dict.fromkeys(results["strategy"])))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, sub in done.groupby("strategy", sort=False):
        ax.scatter(sub["params"].astype(float), sub["psnr"].astype(float), color=colours[name], label=name, s=30,
                   alpha=0.85)
    params, psnr = done["params"].to_numpy(float), done["psnr"].to_numpy(float)
    front = np.asarray(pareto_front(list(zip(psnr, params))), dtype=int)  # by parameters, equal points kept
    ax.step(params[front], psnr[front], where="post", color="black", linewidth=1, linestyle="--",
            label="Pareto front")
    if psnr_input is not None:
        ax.axhline(psnr_input, color="grey", linewidth=0.8, linestyle=":", label="rainy input")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("Retrained genotypes: PSNR against size", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def box_plot(results: pd.DataFrame, path: Path, psnr_input: float | None = None) -> Path | None:
    """Test PSNR per strategy over seeds (box) with every run as a dot."""
    done = results[results["status"] == "done"].dropna(subset=["psnr"])
    if done.empty:
        return None
    plt = _pyplot()
    names = [n for n in dict.fromkeys(results["strategy"]) if n in set(done["strategy"])]
    data = [done[done["strategy"] == n]["psnr"].to_numpy(float) for n in names]
    colours = _colours(list(dict.fromkeys(results["strategy"])))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4.5))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, (name, values) in enumerate(zip(names, data), 1):
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(values)), values, color=colours[name], s=18, zorder=3)
    if psnr_input is not None:
        ax.axhline(psnr_input, color="grey", linewidth=0.8, linestyle=":", label="rainy input")
        ax.legend(fontsize=8)
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("Test PSNR per strategy over seeds", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_plots(results: pd.DataFrame, out: Path, curves: dict[str, list[pd.DataFrame]],
                  cost_column: str = "cost_epochs", psnr_input: float | None = None) -> list[Path]:
    """The three figures of a comparison folder (``anytime.png``, ``pareto.png``, ``box.png``)."""
    written = [anytime_plot(curves, out / "anytime.png", cost_column),
               pareto_plot(results, out / "pareto.png", psnr_input),
               box_plot(results, out / "box.png", psnr_input)]
    return [p for p in written if p is not None]


__all__ = ["step_on_grid", "anytime_plot", "pareto_plot", "box_plot", "compare_plots"]
