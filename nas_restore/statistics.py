"""Is one row of a study better than chance? Spreads over seeds and paired bootstrap intervals.

A retrained network's score depends on its retraining seed as much as on its architecture (on small
budgets the seed spread is often larger than the gaps between architectures), and a mean over a few
test images carries sampling noise of its own. A ranking therefore says "A beats B" only when the
paired difference stays away from 0 once both sources of noise are accounted for:

- :func:`seed_summary`: per row, the mean ± std over its seeds (how much the seed alone moves it);
- :func:`score_matrices`: per row, a ``[seeds, images]`` matrix of per-image scores on the images every
  row was scored on (pairing is per image: the same image is hard or easy for every network);
- :func:`paired_difference_ci`: per row, its per-image difference to the mean of baseline rows (the
  random genotypes of ``rank``), with a percentile-bootstrap interval that resamples the test images
  and, per row, its seeds (one shared resample per bootstrap draw, so a row that is also a baseline row
  is resampled consistently on both sides);
- :func:`separable` and :func:`separation_sentence`: the verdict, in numbers and in words.

Pure numpy/pandas (no torch), so that any study (``rank`` now, ``compare`` later) can use it on its
results tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


def seed_summary(results: pd.DataFrame, columns: Sequence[str] = ("psnr", "ssim"), by: str = "entry",
                 seed_column: str = "seed") -> pd.DataFrame:
    """Per ``by`` value (in order of first appearance): ``seeds`` (rows with a finite score) and, per column,
    ``<column>_mean`` and ``<column>_std`` (sample std, n-1; NaN for a single seed).

    Why: one seed is one draw of the retraining noise; the std says how large that noise is, which is the
    scale any gap between rows has to be judged against."""
    rows = []
    for key, group in results.groupby(by, sort=False):
        row: dict[str, Any] = {by: key}
        for column in columns:
            values = pd.to_numeric(group[column], errors="coerce")
            values = values[np.isfinite(values)]
            row[f"{column}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row.setdefault("seeds", int(len(values)))
        if seed_column in group:
            row["seed_list"] = [s for s in group[seed_column].tolist() if s == s and s is not None]
        rows.append(row)
    return pd.DataFrame(rows)


def score_matrices(per_image: pd.DataFrame, value: str = "psnr", by: str = "entry", seed_column: str = "seed",
                   item_column: str = "name") -> tuple[dict[str, np.ndarray], list[str]]:
    """Per ``by`` value, the ``[seeds, images]`` matrix of ``value`` from a long table (one line per row,
    seed and image), on the images that every row has for every one of its seeds; and those image names.

    Why: a paired comparison needs the same images on both sides; an image missing for one seed of one
    row (a failed or partial evaluation) is dropped for all rather than biasing one row's mean."""
    if per_image.empty:
        return {}, []
    table = per_image.copy()
    table[item_column] = table[item_column].astype(str)
    pivots = {}
    for key, group in table.groupby(by, sort=False):
        pivot = group.pivot_table(index=seed_column, columns=item_column, values=value, aggfunc="mean",
                                  dropna=False)
        pivots[str(key)] = pivot
    common: set[str] | None = None
    for pivot in pivots.values():
        complete = set(pivot.columns[pivot.notna().all(axis=0)])
        common = complete if common is None else common & complete
    names = sorted(common or ())
    return {key: pivot[names].to_numpy(dtype=float) for key, pivot in pivots.items()}, names


@dataclass
class DifferenceCI:
    """A row's mean paired difference to the baseline mean, with its bootstrap interval."""

    difference: float     # mean over images of (row's seed mean - mean of the baseline rows' seed means)
    lo: float
    hi: float
    confidence: float
    resamples: int
    images: int
    seeds: int            # the row's seeds
    baseline_rows: int

    @property
    def separable(self) -> bool:
        return separable(self)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "separable": self.separable}


def _check_scores(name: str, scores: Any) -> np.ndarray:
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name}: expected a [seeds, images] matrix with at least one seed and one image, "
                         f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: scores must be finite (cap infinite PSNR, e.g. at metrics.MAX_PSNR, first)")
    return array


def paired_difference_ci(scores: Mapping[str, Any], baseline: Sequence[str],
                         resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                         seed: int = 0) -> dict[str, DifferenceCI]:
    """For every row of ``scores`` (name -> ``[seeds, images]`` matrix, the same images in the same order
    for every row), its paired difference to the mean of the ``baseline`` rows, with a percentile
    bootstrap interval at ``confidence``.

    The statistic: per image, the row's score averaged over its seeds minus the mean over baseline rows
    of theirs, averaged over images. Each of ``resamples`` bootstrap draws resamples the images with
    replacement (the same images for every row: the pairing) and, for each row separately, its seeds with
    replacement; every row's interval comes from the same draws (a ``numpy.random.Generator`` seeded with
    ``seed``: the same inputs give the same intervals).

    Why both: the images are a sample of the rain the network will meet, and the seeds a sample of the
    retraining noise; an interval over images alone would call a lucky seed a better architecture.
    A row with a single seed contributes no seed noise of its own (nothing to resample)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if not baseline:
        raise ValueError("paired_difference_ci needs at least one baseline row (e.g. the random genotypes)")
    missing = [b for b in baseline if b not in scores]
    if missing:
        raise ValueError(f"baseline row(s) {missing} are not among the scores ({', '.join(map(str, scores))})")
    matrices = {name: _check_scores(str(name), value) for name, value in scores.items()}
    images = {m.shape[1] for m in matrices.values()}
    if len(images) != 1:
        raise ValueError(f"every row must be scored on the same images; image counts: "
                         f"{ {str(k): m.shape[1] for k, m in matrices.items()} }")
    n_images = images.pop()
    rng = np.random.default_rng(seed)
    # how often each image is drawn in each resample: [B, I] (the same for every row)
    picks = rng.integers(0, n_images, size=(resamples, n_images))
    offsets = (np.arange(resamples) * n_images)[:, None]
    image_weights = np.bincount((picks + offsets).ravel(), minlength=resamples * n_images)
    image_weights = image_weights.reshape(resamples, n_images) / n_images
    resampled: dict[str, np.ndarray] = {}   # per row: its mean over resampled images and seeds, [B]
    observed: dict[str, np.ndarray] = {}    # per row: its per-image seed mean, [I]
    for name, matrix in matrices.items():
        n_seeds = matrix.shape[0]
        seed_picks = rng.integers(0, n_seeds, size=(resamples, n_seeds))
        seed_weights = (seed_picks[:, :, None] == np.arange(n_seeds)).sum(axis=1) / n_seeds   # [B, S]
        per_image = seed_weights @ matrix                                                       # [B, I]
        resampled[name] = (per_image * image_weights).sum(axis=1)
        observed[name] = matrix.mean(axis=0)
    base_resampled = np.mean([resampled[b] for b in baseline], axis=0)
    base_observed = np.mean([observed[b] for b in baseline], axis=0)
    alpha = 1.0 - confidence
    out = {}
    for name, matrix in matrices.items():
        draws = resampled[name] - base_resampled
        lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        out[name] = DifferenceCI(difference=float(np.mean(observed[name] - base_observed)), lo=float(lo),
                                 hi=float(hi), confidence=confidence, resamples=resamples, images=n_images,
                                 seeds=int(matrix.shape[0]), baseline_rows=len(baseline))
    return out


def separable(interval: DifferenceCI | tuple[float, float]) -> bool:
    """True when the interval excludes 0 (both ends on the same side of it).

    Why: a difference whose interval includes 0 is compatible with no difference at all; calling it a win
    or a loss would rank noise."""
    lo, hi = (interval.lo, interval.hi) if isinstance(interval, DifferenceCI) else interval
    return bool(lo > 0 or hi < 0)


def separation_sentence(interval: DifferenceCI, against: str = "random", digits: int = 2) -> str:
    """The verdict in words: ``separable from random (interval excludes 0)`` or ``not separable from random:
    the interval [lo, hi] includes 0``."""
    if separable(interval):
        return f"separable from {against} (interval excludes 0)"
    return (f"not separable from {against}: the interval [{interval.lo:.{digits}f}, {interval.hi:.{digits}f}] "
            "includes 0")


# --------------------------------------------------------------------------------------------------
# rank correlations (does one ranking of some architectures agree with another?)


RANK_CORRELATIONS = ("kendall", "spearman")


@dataclass
class CorrelationCI:
    """A rank correlation between two score lists, with a percentile-bootstrap interval over the items."""

    method: str           # "kendall" (tau-b) or "spearman" (rho)
    value: float          # on the items as they are (NaN when either list is constant)
    lo: float
    hi: float
    p_value: float        # scipy's test of no association (a small n makes it conservative)
    confidence: float
    resamples: int        # bootstrap draws asked for
    valid_resamples: int  # draws with a defined correlation (a draw of one repeated item has none)
    n: int                # items (architectures)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rank_correlation(method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy import stats  # scipy comes with scikit-image; imported here: only correlations need it

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = stats.kendalltau(x, y) if method == "kendall" else stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def rank_correlation_ci(x: Sequence[float], y: Sequence[float], method: str = "kendall",
                        resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                        seed: int = 0) -> CorrelationCI:
    """Kendall's tau-b or Spearman's rho between the paired scores ``x`` and ``y`` (one pair per item), with a
    percentile bootstrap interval at ``confidence``: each of ``resamples`` draws takes ``n`` items with
    replacement (pairs stay together) and recomputes the correlation; draws where it is undefined (every
    drawn item the same, or one list constant) are left out and counted (``valid_resamples``).

    Why resample items: the architectures are a sample of the space, and with a handful of them the
    correlation itself is noisy; the interval says how far another draw of architectures could move it.
    Fewer than 3 items give NaN bounds (no spread to resample)."""
    if method not in RANK_CORRELATIONS:
        raise ValueError(f"method must be one of {', '.join(RANK_CORRELATIONS)}, got {method!r}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be two lists of one length, got shapes {xs.shape} and {ys.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("rank correlations need finite scores (leave out the items that failed first)")
    n = len(xs)
    value, p_value = _rank_correlation(method, xs, ys)
    lo = hi = math.nan
    valid = 0
    if n >= 3:
        rng = np.random.default_rng(seed)
        draws = []
        for picks in rng.integers(0, n, size=(resamples, n)):
            stat, _ = _rank_correlation(method, xs[picks], ys[picks])
            if stat == stat:
                draws.append(stat)
        valid = len(draws)
        if draws:
            alpha = 1.0 - confidence
            lo, hi = (float(v) for v in np.quantile(draws, [alpha / 2, 1 - alpha / 2]))
    return CorrelationCI(method=method, value=value, lo=lo, hi=hi, p_value=p_value, confidence=confidence,
                         resamples=resamples, valid_resamples=valid, n=n)


__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_CONFIDENCE", "seed_summary", "score_matrices", "DifferenceCI",
           "paired_difference_ci", "separable", "separation_sentence", "RANK_CORRELATIONS", "CorrelationCI",
           "rank_correlation_ci"]
