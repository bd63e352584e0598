"""What every protocol takes (labelled embeddings of train / val / test) and returns (a `ProbeResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multimeditron.probing.embed import Embeddings


@dataclass
class Labelled:
    embeddings: Embeddings
    labels: np.ndarray  # (n,) class ids or (n, C) 0/1
    groups: np.ndarray | None = None  # patient/study id of each row (few-shot draws whole patients)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ProbeInputs:
    train: Labelled
    val: Labelled
    test: Labelled
    n_classes: int
    multilabel: bool = False
    ordinal: bool = False  # quadratic kappa

    def metric_kwargs(self) -> dict[str, bool]:
        return {"multilabel": self.multilabel, "ordinal": self.ordinal}


@dataclass
class ProbeResult:
    """A protocol's outcome: the hyperparameters chosen on val, val and test metrics, and the test scores (kept for
    bootstrap intervals, paired comparisons and plots; not written to JSON)."""

    protocol: str
    chosen: dict[str, Any]
    val: dict[str, Any]
    test: dict[str, Any]
    test_scores: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # protocol-specific details (the grid, few-shot per N)
    per_label: dict[str, Any] | None = None  # multi-label: test metrics label by label (bootstrap.per_label_metrics)
    paper_metrics: dict[str, Any] = field(default_factory=dict)  # set name -> `paper_metrics.paper_metric_set`

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "chosen": self.chosen, "val": self.val, "test": self.test,
                "notes": self.notes, **({"details": self.extra} if self.extra else {}),
                **({"per_label": self.per_label} if self.per_label else {}),
                **({"paper_metrics": self.paper_metrics} if self.paper_metrics else {})}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
