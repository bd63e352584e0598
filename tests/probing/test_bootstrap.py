"""Bootstrap intervals and paired comparisons."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.probing.bootstrap import bootstrap_metrics, paired_bootstrap, resample_indices


def noisy_scores(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    logit = signal * (2 * y - 1) + rng.normal(size=n)
    p = 1 / (1 + np.exp(-logit))
    return y, np.stack([1 - p, p], axis=1)


def test_interval_contains_the_point_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (40, 800):
        y, scores = noisy_scores(n, 1.0, seed=n)
        result = bootstrap_metrics(y, scores, n_resamples=300, seed=0)
        for name, entry in result.items():
            assert entry["low"] <= entry["value"] <= entry["high"], name
        widths.append(result["auroc"]["high"] - result["auroc"]["low"])
    assert widths[1] < widths[0] / 2


def test_resamples_are_seeded_and_stratified():
    y = np.array([0] * 5 + [1] * 15)
    a, b = resample_indices(y, 20, seed=3), resample_indices(y, 20, seed=3)
    assert np.array_equal(a, b)
    assert all((y[rows] == 0).sum() == 5 for rows in a)  # every resample keeps the class counts


def test_paired_comparison():
    y, good = noisy_scores(400, 2.0, seed=1)
    _, weak = noisy_scores(400, 0.3, seed=2)
    same = paired_bootstrap(y, good, good, n_resamples=200)
    assert same["auroc"]["difference"] == 0 and same["auroc"]["p_value"] == 1.0
    better = paired_bootstrap(y, good, weak, n_resamples=200)
    assert better["auroc"]["difference"] > 0 and better["auroc"]["low"] > 0
    assert better["auroc"]["p_value"] < 0.01
    with pytest.raises(ValueError, match="same test rows"):
        paired_bootstrap(y, good, weak[:10])
