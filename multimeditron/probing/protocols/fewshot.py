"""Few-shot: N training patients (or images) per class, a logistic regression on their frozen embeddings (C
chosen on the full val split), several random draws per N; mean and spread of the test metrics.

With a `patient`/`study` grouping the draw takes whole groups (rows are already one per group after aggregation).
Multi-label: N positive rows per label, pooled.

`sampling="systematic"` is DINOv2-on-radiology's (`data/wrappers.py::FewShotDatasetWrapper`): N rows IN TOTAL,
every (n / N)-th of the training split in its order, one draw (nothing random); `head="linear"` trains its SGD
linear heads (`linear.linear_probe`) on those rows instead of a logistic regression.
"""
from __future__ import annotations

import numpy as np

from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import METRICS, classification_metrics, is_defined, selection_score
from multimeditron.probing.protocols.common import ProbeInputs, ProbeResult
from multimeditron.probing.protocols.logreg import fit_logreg

SHOTS = (1, 2, 4, 8, 16)
FEWSHOT_C_GRID = (1e-2, 1e-1, 1.0, 10.0)


def draw_shots(labels: np.ndarray, n: int, rng: np.random.Generator, multilabel: bool) -> np.ndarray:
    """Row ids: n per class (all of a class that has fewer), sorted."""
    columns = labels.T if multilabel else [labels == c for c in np.unique(labels)]
    picked: set[int] = set()
    for mask in columns:
        rows = np.flatnonzero(mask)
        picked.update(rng.choice(rows, size=min(n, len(rows)), replace=False).tolist())
    return np.array(sorted(picked), dtype=np.int64)


def systematic_rows(n_rows: int, n: int) -> np.ndarray:
    """DINOv2-on-radiology's few-shot rows: `np.arange(0, n_rows, n_rows / n).round()` (all rows when n >= n_rows)."""
    if n >= n_rows:
        return np.arange(n_rows)
    return np.unique(np.minimum(np.arange(0, n_rows, n_rows / n).round().astype(np.int64), n_rows - 1))


def _subset(data: ProbeInputs, rows: np.ndarray) -> ProbeInputs:
    from dataclasses import replace

    from multimeditron.probing.protocols.common import Labelled

    train = data.train
    embeddings = train.embeddings.take(rows)
    return replace(data, train=Labelled(embeddings, train.labels[rows],
                                        None if train.groups is None else train.groups[rows]))


def fewshot_probe(data: ProbeInputs, shots: tuple[int, ...] = SHOTS, draws: int = 5, seed: int = 0,
                  c_grid: tuple[float, ...] = FEWSHOT_C_GRID, select_metric: str = "auroc",
                  sampling: str = "per_class", head: str = "logreg",
                  linear_options: dict | None = None) -> ProbeResult:
    x, y = data.train.embeddings.pooled, data.train.labels
    kwargs = data.metric_kwargs()
    per_shot: dict[str, dict] = {}
    notes = []
    if sampling not in ("per_class", "systematic") or head not in ("logreg", "linear"):
        raise ValueError(f"fewshot: sampling {sampling!r} / head {head!r} not in per_class|systematic, logreg|linear")
    if sampling == "systematic":
        draws = 1  # a systematic sample has no randomness to repeat
        notes.append("N images in total, systematic sampling over the training order, one draw")
    smallest = int(y.sum(axis=0).min()) if data.multilabel else int(np.bincount(y).min())
    if sampling == "per_class" and max(shots) > smallest:
        notes.append(f"the rarest class has {smallest} training rows: larger N take all of it")
    last_scores = None
    for n in shots:
        runs = []
        for draw in range(draws):
            if sampling == "systematic":
                rows = systematic_rows(len(y), n)
            else:
                rows = draw_shots(y, n, np.random.default_rng([seed, n, draw]), data.multilabel)
            if not data.multilabel and len(np.unique(y[rows])) < 2:
                continue
            if head == "linear":
                from multimeditron.probing.protocols.linear import linear_probe

                result = linear_probe(_subset(data, rows), seed=seed, select_metric=select_metric,
                                      **(linear_options or {}))
                runs.append(result.test)
                continue
            fitted = {c: fit_logreg(x[rows], y[rows], c, data.n_classes, data.multilabel) for c in c_grid}
            val = {c: fast_metrics(data.val.labels, f(data.val.embeddings.pooled), **kwargs)
                   for c, f in fitted.items()}
            best = max(c_grid, key=lambda c: selection_score(val[c], select_metric))
            last_scores = fitted[best](data.test.embeddings.pooled)
            runs.append(classification_metrics(data.test.labels, last_scores, **kwargs))
        summary = {}
        for m in METRICS:
            values = [r[m] for r in runs if is_defined(r[m])]
            summary[m] = ({"value": float(np.mean(values)), "std": float(np.std(values)), "draws": len(values)}
                          if values else {"value": "undefined: one class" if runs else "undefined: no draw"})
        per_shot[str(n)] = summary
    top = str(max(shots))
    test = {m: per_shot[top][m]["value"] for m in METRICS}
    unit = "in total" if sampling == "systematic" else "per class"
    notes.append(f"test row: N={top} {unit}, mean over {draws} draw(s) (spread in details)")
    chosen = {"shots": list(shots), "draws": draws, "reported_shots": int(top)}
    if sampling != "per_class" or head != "logreg":
        chosen.update(sampling=sampling, head=head)
    return ProbeResult("fewshot", chosen, {}, test, None, None, notes, {"per_shot": per_shot})
