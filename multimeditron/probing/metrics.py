"""Classification metrics from (y_true, scores), with scikit-learn, that say "undefined" instead of crashing.

Multi-class: `y_true` (n,) class ids, `scores` (n, C) class probabilities; predictions are the argmax; AUROC and
AUPR are one-vs-rest macro averages over the classes present (binary: the positive class). Multi-label: `y_true`
(n, C) 0/1, `scores` (n, C) per-class probabilities; predictions are scores >= 0.5; every metric is the mean over
the classes where it is defined (AUROC/AUPR/kappa/balanced accuracy need both values of a class).
"""
from __future__ import annotations

import typing
import warnings

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "aupr", "kappa")
ONE_CLASS = "undefined: one class"


def is_defined(value: float | str) -> bool:
    return not isinstance(value, str)


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, *, multilabel: bool = False,
                           ordinal: bool = False) -> dict[str, float | str]:
    """Every metric of `METRICS`; a metric that needs two classes on a one-class split is `ONE_CLASS`.

    `ordinal`: Cohen's kappa with quadratic weights (graded classes such as diabetic retinopathy levels).
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if len(y_true) != len(scores):
        raise ValueError(f"metrics: {len(y_true)} labels but {len(scores)} score rows")
    if len(y_true) == 0:
        return {name: "undefined: no samples" for name in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns on ill-defined metrics; we report them ourselves
        if multilabel:
            return _multilabel(y_true, scores, ordinal)
        return _multiclass(y_true, scores, ordinal)


def _multiclass(y_true: np.ndarray, scores: np.ndarray, ordinal: bool) -> dict[str, float | str]:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        roc_auc_score,
    )

    n_classes = scores.shape[1]
    labels = np.arange(n_classes)
    pred = scores.argmax(axis=1)
    present = np.unique(y_true)
    out: dict[str, float | str] = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1_macro": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
    }
    if len(present) < 2:
        return {**out, "balanced_accuracy": ONE_CLASS, "auroc": ONE_CLASS, "aupr": ONE_CLASS, "kappa": ONE_CLASS}
    out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, pred))
    kappa = cohen_kappa_score(y_true, pred, labels=labels, weights="quadratic" if ordinal else None)
    out["kappa"] = float(kappa) if np.isfinite(kappa) else "undefined: constant predictions"
    if n_classes == 2:
        out["auroc"] = float(roc_auc_score(y_true, scores[:, 1]))
        out["aupr"] = float(average_precision_score(y_true, scores[:, 1]))
    else:
        onehot = (y_true[:, None] == labels[None, :]).astype(int)
        aurocs = [roc_auc_score(onehot[:, c], scores[:, c]) for c in present]
        auprs = [average_precision_score(onehot[:, c], scores[:, c]) for c in present]
        out["auroc"], out["aupr"] = float(np.mean(aurocs)), float(np.mean(auprs))
    return {name: out[name] for name in METRICS}


def _multilabel(y_true: np.ndarray, scores: np.ndarray, ordinal: bool) -> dict[str, float | str]:
    from sklearn.metrics import average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

    pred = (scores >= 0.5).astype(int)
    both = [c for c in range(y_true.shape[1]) if len(np.unique(y_true[:, c])) == 2]
    out: dict[str, float | str] = {
        "accuracy": float((pred == y_true).mean()),
        "f1_macro": float(f1_score(y_true, pred, average="macro", zero_division=0)),
    }
    if not both:
        return {**out, "balanced_accuracy": ONE_CLASS, "auroc": ONE_CLASS, "aupr": ONE_CLASS, "kappa": ONE_CLASS}
    recalls = [((pred[:, c] == 1) & (y_true[:, c] == 1)).sum() / max(1, y_true[:, c].sum()) for c in both]
    specificities = [((pred[:, c] == 0) & (y_true[:, c] == 0)).sum() / max(1, (1 - y_true[:, c]).sum())
                     for c in both]
    out["balanced_accuracy"] = float(np.mean([(r + s) / 2 for r, s in zip(recalls, specificities)]))
    out["auroc"] = float(np.mean([roc_auc_score(y_true[:, c], scores[:, c]) for c in both]))
    out["aupr"] = float(np.mean([average_precision_score(y_true[:, c], scores[:, c]) for c in both]))
    kappas = [cohen_kappa_score(y_true[:, c], pred[:, c], weights="quadratic" if ordinal else None) for c in both]
    kappas = [k for k in kappas if np.isfinite(k)]
    out["kappa"] = float(np.mean(kappas)) if kappas else "undefined: constant predictions"
    return {name: out[name] for name in METRICS}


# RETFound's model-selection score (`main_finetune.py`): the mean of these validation metrics, those defined.
RETFOUND_SCORE = ("f1_macro", "auroc", "kappa")
# What a recipe's `select_metric` may name, in `probe` and `finetune`: "retfound", then METRICS.
SelectionMetric = typing.Literal["retfound", "accuracy", "balanced_accuracy", "f1_macro", "auroc", "aupr", "kappa"]
SELECTION_METRICS: tuple[str, ...] = typing.get_args(SelectionMetric)


def selection_value(metrics: dict[str, float | str], metric: str = "auroc") -> float:
    """The one selection score, for probes' hyperparameters and fine-tuning's best epoch alike: `retfound` = the
    mean of macro F1, AUROC and kappa (of those defined), any other name that metric; accuracy (always defined) when
    none of them is defined on val."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"select metric {metric!r} is not one of {list(SELECTION_METRICS)}")
    names = RETFOUND_SCORE if metric == "retfound" else (metric,)
    values = [float(metrics[m]) for m in names if is_defined(metrics.get(m, "undefined"))]
    return float(np.mean(values)) if values else float(metrics["accuracy"])


def selection_score(metrics: dict[str, float | str], metric: str = "auroc") -> tuple[float, float]:
    """What a protocol maximises on val: (`selection_value`, accuracy as the tie-break)."""
    return (selection_value(metrics, metric), float(metrics["accuracy"]))
