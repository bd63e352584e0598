"""Logistic regression on standardised global embeddings (scikit-learn), the regularisation C chosen on val.

RETFound-Green's probe is StandardScaler + `LogisticRegression(max_iter=20_000, random_state=42)` at scikit-learn's
default C = 1, fitted on train and scored on test (its `Eval_*.ipynb`); the C grid chosen on val is this toolkit's
(a one-value `c_grid` with `max_iter=20000` is RETFound-Green's). Multi-label: one binary regression per label (a
label constant in train gets its training rate as a constant score).
"""
from __future__ import annotations

import warnings

import numpy as np

from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import classification_metrics, selection_score
from multimeditron.probing.protocols.common import ProbeInputs, ProbeResult

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, n_classes: int, multilabel: bool, max_iter: int = 1000):
    """A fitted pipeline whose `scores(x)` gives (n, n_classes) probabilities, whatever classes train lacks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at tiny C/large C are part of the grid search
        if multilabel:
            models = [None if len(np.unique(y[:, j])) < 2 else
                      LogisticRegression(C=c, max_iter=max_iter, random_state=42).fit(xs, y[:, j])
                      for j in range(y.shape[1])]
            rates = y.mean(axis=0)

            def scores(q: np.ndarray) -> np.ndarray:
                qs = scaler.transform(q)
                return np.stack([np.full(len(q), rates[j]) if m is None else m.predict_proba(qs)[:, 1]
                                 for j, m in enumerate(models)], axis=1)
            return scores
        if len(np.unique(y)) < 2:
            raise ValueError(f"logistic regression: the training rows hold one class only ({np.unique(y)[0]})")
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=42).fit(xs, y)

    def scores(q: np.ndarray) -> np.ndarray:
        out = np.zeros((len(q), n_classes))
        out[:, model.classes_] = model.predict_proba(scaler.transform(q))
        return out
    return scores


def logreg_probe(data: ProbeInputs, c_grid: tuple[float, ...] = C_GRID, select_metric: str = "auroc",
                 max_iter: int = 1000, retrain: bool = False) -> ProbeResult:
    """`retrain`: the chosen C is fitted again on train + val before the test score."""
    x_train, x_val = data.train.embeddings.pooled, data.val.embeddings.pooled
    kwargs = data.metric_kwargs()
    fitted = {c: fit_logreg(x_train, data.train.labels, c, data.n_classes, data.multilabel, max_iter)
              for c in c_grid}
    grid = {c: fast_metrics(data.val.labels, fitted[c](x_val), **kwargs) for c in c_grid}
    best = max(c_grid, key=lambda c: selection_score(grid[c], select_metric))
    notes = []
    if len(c_grid) == 1:
        notes.append(f"fixed C={best:g}: nothing chosen on val")
    model = fitted[best]
    if retrain:
        model = fit_logreg(np.concatenate([x_train, x_val]), np.concatenate([data.train.labels, data.val.labels]),
                           best, data.n_classes, data.multilabel, max_iter)
        notes.append("the chosen C was fitted again on train + val before the test score")
    scores = model(data.test.embeddings.pooled)
    return ProbeResult("logreg", {"C": best}, grid[best], classification_metrics(data.test.labels, scores, **kwargs),
                       scores, data.test.labels, notes,
                       {"val_grid": {f"{c:g}": selection_score(m, select_metric)[0] for c, m in grid.items()}})
