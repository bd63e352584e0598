"""Confusion-matrix and ROC-curve PNGs of one run's test predictions (matplotlib, Agg backend: no display)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(y_true: np.ndarray, scores: np.ndarray, classes: list[str], path: str | Path, title: str) -> Path:
    """Multi-class confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    matrix = confusion_matrix(y_true, scores.argmax(axis=1), labels=np.arange(len(classes)))
    size = 2.5 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def roc_png(y_true: np.ndarray, scores: np.ndarray, classes: list[str], path: str | Path, title: str,
            multilabel: bool = False) -> Path:
    """ROC curves: the positive class for a binary task, one-vs-rest (or per label) otherwise; classes absent
    from the test split are left out."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    truth = y_true if multilabel else (y_true[:, None] == np.arange(len(classes))[None, :]).astype(int)
    columns = [1] if not multilabel and len(classes) == 2 else range(len(classes))
    for c in columns:
        if len(np.unique(truth[:, c])) < 2:
            continue
        fpr, tpr, _ = roc_curve(truth[:, c], scores[:, c])
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {roc_auc_score(truth[:, c], scores[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
