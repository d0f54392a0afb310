"""nas_restore.statistics: seed spreads, per-image matrices, the paired bootstrap interval and its verdict."""

import numpy as np
import pandas as pd
import pytest

from nas_restore.statistics import (DifferenceCI, paired_difference_ci, score_matrices, seed_summary, separable,
                                    separation_sentence)


def synthetic(seed=0, images=30, seeds=3, randoms=5, gain=1.0, noise=0.05):
    """Per-image scores: image difficulty shared by every row, a seed offset per (row, seed), small noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(25, 35, size=images)

    def row(shift):
        return (difficulty + shift + rng.normal(0, noise, size=(seeds, 1))
                + rng.normal(0, noise, size=(seeds, images)))

    scores = {f"random-{k}": row(0.0) for k in range(randoms)}
    scores["better"] = row(gain)
    scores["equal"] = row(0.0)
    return scores, [f"random-{k}" for k in range(randoms)]


def test_a_clearly_better_row_is_separable_and_an_equal_one_is_not():
    scores, baseline = synthetic()
    cis = paired_difference_ci(scores, baseline, resamples=2000, seed=1)
    better, equal = cis["better"], cis["equal"]
    assert better.difference == pytest.approx(1.0, abs=0.1)
    assert 0 < better.lo < better.difference < better.hi
    assert separable(better) and better.separable
    assert equal.lo < 0 < equal.hi and not separable(equal)
    assert better.resamples == 2000 and better.images == 30 and better.seeds == 3 and better.baseline_rows == 5
    assert separation_sentence(better) == "separable from random (interval excludes 0)"
    assert separation_sentence(equal).startswith("not separable from random: the interval [")
    assert separation_sentence(equal).endswith("] includes 0")


def test_worse_is_separable_too_and_the_baseline_mean_is_the_reference():
    scores, baseline = synthetic(gain=-1.0)
    cis = paired_difference_ci(scores, baseline, seed=0)
    assert cis["better"].hi < 0 and separable(cis["better"])
    # the baseline rows' differences average to 0 by construction
    assert np.mean([cis[b].difference for b in baseline]) == pytest.approx(0.0, abs=1e-9)


def test_same_seed_same_interval_other_seed_other_interval():
    scores, baseline = synthetic()
    a = paired_difference_ci(scores, baseline, seed=3)
    b = paired_difference_ci(scores, baseline, seed=3)
    c = paired_difference_ci(scores, baseline, seed=4)
    assert a == b
    assert (a["equal"].lo, a["equal"].hi) != (c["equal"].lo, c["equal"].hi)
    assert a["equal"].difference == c["equal"].difference  # the point estimate does not depend on the draws


def test_seed_noise_widens_the_interval():
    """The same per-image means, but seeds that disagree: resampling seeds must widen the interval."""
    rng = np.random.default_rng(0)
    base = rng.uniform(25, 35, size=40)
    baseline = {"r": np.stack([base, base])}
    calm = np.stack([base + 0.5, base + 0.5])
    noisy = np.stack([base - 1.5, base + 2.5])   # the same mean, +0.5
    cis = paired_difference_ci({**baseline, "calm": calm, "noisy": noisy}, ["r"], seed=0)
    assert cis["calm"].difference == pytest.approx(0.5) and cis["noisy"].difference == pytest.approx(0.5)
    assert (cis["noisy"].hi - cis["noisy"].lo) > 5 * (cis["calm"].hi - cis["calm"].lo)
    assert separable(cis["calm"]) and not separable(cis["noisy"])


def test_bad_inputs_are_refused_with_the_reason():
    scores, baseline = synthetic(images=5)
    with pytest.raises(ValueError, match="at least one baseline row"):
        paired_difference_ci(scores, [])
    with pytest.raises(ValueError, match="not among the scores"):
        paired_difference_ci(scores, ["nope"])
    with pytest.raises(ValueError, match="same images"):
        paired_difference_ci({**scores, "short": np.zeros((2, 4))}, baseline)
    with pytest.raises(ValueError, match="finite"):
        paired_difference_ci({**scores, "inf": np.full((1, 5), np.inf)}, baseline)
    # a vector is one seed
    one = paired_difference_ci({"a": np.arange(5.0), "b": np.arange(5.0) + 1}, ["b"], resamples=50)
    assert one["a"].seeds == 1 and one["a"].difference == pytest.approx(-1.0)
    assert separable((0.1, 0.3)) and separable((-0.3, -0.1)) and not separable((-0.1, 0.1))
    assert set(one["a"].as_dict()) >= {"difference", "lo", "hi", "separable"}
    assert isinstance(one["a"], DifferenceCI)


def test_seed_summary_and_score_matrices_from_long_tables():
    per_image = pd.DataFrame([
        {"entry": e, "seed": s, "name": f"{i:04d}", "psnr": 30.0 + s + i + (1 if e == "b" else 0), "ssim": 0.9}
        for e in ("a", "b") for s in (0, 1) for i in range(3)
    ])
    per_image = per_image[~((per_image["entry"] == "b") & (per_image["seed"] == 1) & (per_image["name"] == "0002"))]
    matrices, names = score_matrices(per_image)
    assert names == ["0000", "0001"]  # 0002 is missing for one seed of b: dropped for every row
    assert matrices["a"].shape == (2, 2) and matrices["b"].tolist() == [[31.0, 32.0], [32.0, 33.0]]

    results = pd.DataFrame({"entry": ["a", "a", "b", "c"], "seed": [0, 1, 0, 0], "psnr": [30.0, 32.0, 29.0, np.nan],
                            "ssim": [0.8, 0.9, 0.7, np.nan]})
    summary = seed_summary(results).set_index("entry")
    assert summary.loc["a", "psnr_mean"] == pytest.approx(31.0)
    assert summary.loc["a", "psnr_std"] == pytest.approx(np.sqrt(2.0))
    assert summary.loc["a", "seeds"] == 2 and summary.loc["b", "seeds"] == 1 and summary.loc["c", "seeds"] == 0
    assert np.isnan(summary.loc["b", "psnr_std"]) and np.isnan(summary.loc["c", "psnr_mean"])
    assert list(summary.index) == ["a", "b", "c"]
