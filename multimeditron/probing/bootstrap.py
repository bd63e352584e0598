"""Bootstrap confidence intervals of test metrics, and paired bootstrap comparisons of two experts on one test set.

Resamples are stratified (each class, or each label combination for multi-label, is resampled within itself, so a
resample never loses a class) and seeded. Intervals are percentile intervals; the paired comparison resamples the
same rows for both experts and reports the difference, its interval and a two-sided p-value (twice the smaller
share of resampled differences on either side of zero). Point values are scikit-learn's; resamples use the
numpy equivalents of `fast_metrics`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import METRICS, classification_metrics, is_defined


def resample_indices(y_true: np.ndarray, n_resamples: int, seed: int, stratified: bool = True) -> np.ndarray:
    """(n_resamples, n) row indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n))
    keys = y_true if y_true.ndim == 1 else np.unique(y_true, axis=0, return_inverse=True)[1].reshape(-1)
    out = np.empty((n_resamples, n), dtype=np.int64)
    start = 0
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        out[:, start:start + len(rows)] = rows[rng.integers(0, len(rows), size=(n_resamples, len(rows)))]
        start += len(rows)
    return out


def _distribution(y_true: np.ndarray, scores: np.ndarray, indices: np.ndarray, metrics: tuple[str, ...],
                  **metric_kwargs: Any) -> dict[str, np.ndarray]:
    values = {m: np.full(len(indices), np.nan) for m in metrics}
    for i, rows in enumerate(indices):
        computed = fast_metrics(y_true[rows], scores[rows], **metric_kwargs)
        for m in metrics:
            if is_defined(computed[m]):
                values[m][i] = computed[m]
    return values


def bootstrap_metrics(y_true: np.ndarray, scores: np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95, stratified: bool = True, metrics: tuple[str, ...] = METRICS,
                      **metric_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Per metric: {value (on all rows), low, high, n_resamples}; `value` is a string where undefined, and the
    interval is omitted when fewer than half of the resamples define the metric."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    point = classification_metrics(y_true, scores, **metric_kwargs)
    indices = resample_indices(y_true, n_resamples, seed, stratified)
    dist = _distribution(y_true, scores, indices, metrics, **metric_kwargs)
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        entry: dict[str, Any] = {"value": point[m]}
        finite = dist[m][np.isfinite(dist[m])]
        if is_defined(point[m]) and len(finite) >= n_resamples / 2:
            entry.update(low=float(np.quantile(finite, alpha)), high=float(np.quantile(finite, 1 - alpha)),
                         n_resamples=len(finite))
        out[m] = entry
    return out


def paired_bootstrap(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95, metrics: tuple[str, ...] = ("auroc", "accuracy"),
                     **metric_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Per metric: {a, b, difference (a - b), low, high, p_value} on the same resampled rows for both."""
    y_true = np.asarray(y_true)
    if len(scores_a) != len(y_true) or len(scores_b) != len(y_true):
        raise ValueError("paired bootstrap: both score sets must cover the same test rows")
    point_a = classification_metrics(y_true, scores_a, **metric_kwargs)
    point_b = classification_metrics(y_true, scores_b, **metric_kwargs)
    indices = resample_indices(y_true, n_resamples, seed, stratified=True)
    dist_a = _distribution(y_true, np.asarray(scores_a), indices, metrics, **metric_kwargs)
    dist_b = _distribution(y_true, np.asarray(scores_b), indices, metrics, **metric_kwargs)
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        if not (is_defined(point_a[m]) and is_defined(point_b[m])):
            out[m] = {"a": point_a[m], "b": point_b[m], "difference": "undefined"}
            continue
        diff = dist_a[m] - dist_b[m]
        diff = diff[np.isfinite(diff)]
        p_value = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))) if len(diff) else float("nan")
        out[m] = {"a": point_a[m], "b": point_b[m], "difference": float(point_a[m]) - float(point_b[m]),
                  "low": float(np.quantile(diff, alpha)), "high": float(np.quantile(diff, 1 - alpha)),
                  "p_value": float(p_value)}
    return out


def per_label_metrics(y_true: np.ndarray, scores: np.ndarray, names: list[str], *, n_resamples: int = 1000,
                      seed: int = 0) -> dict[str, dict[str, Any]]:
    """Multi-label test metrics label by label (what the means over labels hide: one label at chance): each label
    scored as a binary task (its positives against the rest, the sigmoid score), with bootstrap intervals when
    `n_resamples`, plus its number of positive and of all rows."""
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        y, binary = y_true[:, c], np.stack([1 - scores[:, c], scores[:, c]], axis=1)
        if n_resamples:
            metrics: dict[str, Any] = bootstrap_metrics(y, binary, n_resamples=n_resamples, seed=seed)
        else:
            metrics = {m: {"value": v} for m, v in classification_metrics(y, binary).items()}
        out[name] = {**metrics, "positives": int(y.sum()), "n": int(len(y))}
    return out


def median_bootstrap_auroc(y_true: np.ndarray, scores: np.ndarray, *, n_resamples: int = 100, seed: int = 42,
                           ) -> dict[str, Any]:
    """RETFound-Green's AUROC (its `Eval_*.ipynb::get_bootstrap_aucs`): `n_resamples` resamples of all rows with
    replacement, NOT stratified, drawn by `np.random.RandomState(seed).choice`, the same rows for every class and
    every model (the notebook makes a new RandomState(42) per call); reported as the median. `y_true` (n,) 0/1 and
    `scores` (n,) for one class. Resamples holding one class only (the notebook would stop there) are left out and
    counted."""
    from sklearn.metrics import roc_auc_score

    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64)
    rng = np.random.RandomState(seed)
    rows = list(range(len(y_true)))
    values, skipped = [], 0
    for _ in range(n_resamples):
        chosen = rng.choice(rows, size=len(rows), replace=True)
        if len(np.unique(y_true[chosen])) < 2:
            skipped += 1
            continue
        values.append(float(roc_auc_score(y_true[chosen], scores[chosen])))
    median = float(np.median(values)) if values else "undefined: one class"
    return {"value": median, "n_resamples": len(values), "one_class_resamples": skipped, "resamples": values}


def wilcoxon_comparison(resamples_a: list[float], resamples_b: list[float]) -> dict[str, Any]:
    """RETFound-Green's model comparison: scipy's Wilcoxon signed-rank test on two models' bootstrap AUROCs (paired
    resample by resample, which `median_bootstrap_auroc` guarantees by drawing the same rows for both)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(resamples_a, dtype=np.float64), np.asarray(resamples_b, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"wilcoxon: {len(a)} and {len(b)} bootstrap values; both need the same resamples")
    if np.all(a == b):
        return {"median_a": float(np.median(a)), "median_b": float(np.median(b)), "statistic": None,
                "p_value": 1.0, "note": "identical bootstrap values"}
    test = wilcoxon(a, b)
    return {"median_a": float(np.median(a)), "median_b": float(np.median(b)), "statistic": float(test.statistic),
            "p_value": float(test.pvalue)}
