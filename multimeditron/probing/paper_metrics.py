"""The metric sets of the expert papers, computed as their code computes them, so that a table can be put beside
the paper's. This toolkit's own definitions (`metrics.classification_metrics`) stay the default; each set here
carries the definition of every number it holds, and results files name the set.

- `retfound`: RETFound's `engine_finetune.py::evaluate`: scikit-learn on the one-hot truth and one-hot argmax
  prediction: accuracy, macro F1 / precision / recall / Jaccard over the one-hot columns, Hamming loss, AUROC
  (`roc_auc_score(onehot, softmax, multi_class="ovr", average="macro")`), AUPR as the macro average precision over
  the one-hot columns (a binary task averages BOTH classes' AP, where ours takes the positive class), unweighted
  kappa, and its selection score (F1 + AUROC + kappa) / 3. One-label data only, as RETFound.
- `dinov2_radiology`: DINOv2-on-radiology's classification metric (`eval/metrics.py`): AUROC per class (one vs
  rest; binary: the positive class) and their macro mean.
- `retfound_green`: RETFound-Green's `Eval_*.ipynb`: per class, the median AUROC of 100 non-stratified bootstrap
  resamples (`bootstrap.median_bootstrap_auroc`); the resample AUROCs are kept for Wilcoxon comparisons.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from multimeditron.probing.bootstrap import median_bootstrap_auroc

PAPER_METRIC_SETS = ("retfound", "dinov2_radiology", "retfound_green")

DEFINITIONS = {
    "retfound": "RETFound engine_finetune.py::evaluate (rmaphoh/RETFound): scikit-learn on one-hot truth and one-hot "
                "argmax predictions; f1/precision/recall/jaccard macro over the one-hot columns; hamming = "
                "hamming_loss(onehot, onehot); auroc = roc_auc_score(onehot, softmax, ovr, macro); aupr = "
                "average_precision_score(onehot, softmax, macro) (binary: the mean of both classes' AP); kappa "
                "unweighted; score = (f1 + auroc + kappa) / 3",
    "dinov2_radiology": "DINOv2-on-radiology eval/metrics.py (MohammedSB/DINOv2ForRadiology): AUROC per class, one "
                        "vs rest (binary: the positive class), and their macro mean over the classes present",
    "retfound_green": "RETFound-Green Eval_*.ipynb (justinengelmann/RETFound_Green): per class, the median AUROC of "
                      "100 bootstrap resamples of all test rows (not stratified, np.random.RandomState(42)); "
                      "binary: the positive class",
}


def retfound_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """RETFound's evaluation numbers for one-label `y_true` (n,) and class probabilities `scores` (n, C)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        cohen_kappa_score,
        f1_score,
        hamming_loss,
        jaccard_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    n_classes = scores.shape[1]
    onehot = np.eye(n_classes, dtype=int)[y_true]
    pred = scores.argmax(axis=1)
    pred_onehot = np.eye(n_classes, dtype=int)[pred]
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1": float(f1_score(onehot, pred_onehot, zero_division=0, average="macro")),
        "precision": float(precision_score(onehot, pred_onehot, zero_division=0, average="macro")),
        "recall": float(recall_score(onehot, pred_onehot, zero_division=0, average="macro")),
        "hamming": float(hamming_loss(onehot, pred_onehot)),
        "jaccard": float(jaccard_score(onehot, pred_onehot, average="macro", zero_division=0)),
    }
    if len(np.unique(y_true)) < n_classes:  # RETFound's roc_auc_score would raise on a column without positives
        undefined = f"undefined: {n_classes - len(np.unique(y_true))} class(es) absent from the split"
        return {**out, "auroc": undefined, "aupr": undefined, "kappa": float(cohen_kappa_score(y_true, pred)),
                "score": undefined}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(y_true, pred))
    out["auroc"] = float(roc_auc_score(onehot, scores, multi_class="ovr", average="macro"))
    out["aupr"] = float(average_precision_score(onehot, scores, average="macro"))
    out["kappa"] = kappa
    out["score"] = (out["f1"] + out["auroc"] + kappa) / 3 if np.isfinite(kappa) else "undefined: constant predictions"
    return out


def _class_columns(y_true: np.ndarray, scores: np.ndarray, multilabel: bool) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class, 0/1 truth, score) per class, one-vs-rest; binary one-label data: the positive class only."""
    if multilabel:
        return [(c, y_true[:, c].astype(int), scores[:, c]) for c in range(scores.shape[1])]
    if scores.shape[1] == 2:
        return [(1, (y_true == 1).astype(int), scores[:, 1])]
    return [(c, (y_true == c).astype(int), scores[:, c]) for c in range(scores.shape[1])]


def dinov2_radiology_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str] | None = None,
                             multilabel: bool = False) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    per_class: dict[str, Any] = {}
    for c, truth, score in _class_columns(y_true, scores, multilabel):
        name = classes[c] if classes else str(c)
        per_class[name] = (float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth)
                           else "undefined: one class")
    defined = [v for v in per_class.values() if not isinstance(v, str)]
    return {"auroc": float(np.mean(defined)) if defined else "undefined: one class", "auroc_per_class": per_class}


def retfound_green_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str] | None = None,
                           multilabel: bool = False, n_resamples: int = 100, seed: int = 42) -> dict[str, Any]:
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    per_class, resamples = {}, {}
    for c, truth, score in _class_columns(y_true, scores, multilabel):
        name = classes[c] if classes else str(c)
        entry = median_bootstrap_auroc(truth, score, n_resamples=n_resamples, seed=seed)
        resamples[name] = entry.pop("resamples")
        per_class[name] = entry
    defined = [e["value"] for e in per_class.values() if not isinstance(e["value"], str)]
    return {"median_bootstrap_auroc": float(np.mean(defined)) if defined else "undefined: one class",
            "median_bootstrap_auroc_per_class": per_class, "bootstrap_aurocs": resamples}


def paper_metric_set(name: str, y_true: np.ndarray, scores: np.ndarray, *, multilabel: bool = False,
                     classes: list[str] | None = None) -> dict[str, Any]:
    """{"set": name, "definition": ..., "metrics": {...}} for one split."""
    if name == "retfound":
        metrics = (retfound_metrics(y_true, scores) if not multilabel else
                   {"note": "undefined: RETFound's evaluation is for one-label data"})
    elif name == "dinov2_radiology":
        metrics = dinov2_radiology_metrics(y_true, scores, classes, multilabel)
    elif name == "retfound_green":
        metrics = retfound_green_metrics(y_true, scores, classes, multilabel)
    else:
        raise ValueError(f"paper metric set {name!r} is not one of {list(PAPER_METRIC_SETS)}")
    return {"set": name, "definition": DEFINITIONS[name], "metrics": metrics}
