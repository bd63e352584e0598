"""k-nearest neighbours on L2-normalised global embeddings (cosine similarity), k chosen on val.

Multi-class: DINO's weighted vote, each of the k neighbours voting for its class with weight exp(similarity / T).
Multi-label: ML-kNN (Zhang & Zhou, 2007): per label, a Bayesian posterior from how many of the k neighbours carry
it, with priors and likelihoods counted on the training set (Laplace smoothing s = 1).
"""
from __future__ import annotations

import numpy as np
import torch

from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import classification_metrics, selection_score
from multimeditron.probing.protocols.common import ProbeInputs, ProbeResult, l2_normalise

KS = (5, 10, 20, 50, 100, 200, 400, 800, 1000)  # DINOv2 radiology uses 100..1000; small sets need small k
TEMPERATURE = 0.07


def topk_neighbours(queries: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False,
                    chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n_queries, k), best first; cosine on already normalised rows."""
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    sims, ids = [], []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32))
        sim = q @ bank_t.T
        if exclude_self:
            rows = torch.arange(len(q))
            sim[rows, rows + start] = -float("inf")
        s, i = sim.topk(k, dim=1)
        sims.append(s.numpy())
        ids.append(i.numpy())
    return np.concatenate(sims), np.concatenate(ids)


def weighted_vote(sims: np.ndarray, ids: np.ndarray, train_labels: np.ndarray, k: int, n_classes: int,
                  temperature: float = TEMPERATURE, softmax_over: str = "k") -> np.ndarray:
    """Class scores (n, C) from the first k neighbours, weighted by exp(similarity / T).

    `softmax_over` "k": the weights are normalised over those k (the scores are probabilities); "max_k": over all
    the neighbours `sims` holds (the grid's largest k), then the first k summed, as DINOv2's `eval/knn.py` (and
    DINOv2-on-radiology's) `KnnModule.forward` does: a row's scores then sum to its share of the top-max_k weight."""
    if softmax_over not in ("k", "max_k"):
        raise ValueError(f"knn softmax_over {softmax_over!r} is not k or max_k")
    span = k if softmax_over == "k" else sims.shape[1]
    weights = np.exp((sims[:, :span] - sims[:, :1]) / temperature)  # shifted by the max: same ratios, no overflow
    weights = weights / weights.sum(axis=1, keepdims=True)
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(sims)), k), train_labels[ids[:, :k]].reshape(-1)),
              weights[:, :k].reshape(-1))
    return votes


class MLKNN:
    """ML-kNN fitted on (normalised embeddings, (n, C) 0/1 labels) for one k."""

    def __init__(self, k: int, smoothing: float = 1.0) -> None:
        self.k, self.s = k, smoothing

    def fit(self, bank: np.ndarray, labels: np.ndarray, neighbour_ids: np.ndarray) -> MLKNN:
        """`neighbour_ids`: each training row's nearest other training rows (at least k of them)."""
        n, n_labels = labels.shape
        k, s = self.k, self.s
        self.labels = labels
        self.prior = (s + labels.sum(axis=0)) / (2 * s + n)
        counts = labels[neighbour_ids[:, :k]].sum(axis=1)  # (n, C): neighbours carrying each label
        self.like_pos = np.zeros((k + 1, n_labels))
        self.like_neg = np.zeros((k + 1, n_labels))
        for c in range(k + 1):
            hit = counts == c
            self.like_pos[c] = (hit & (labels == 1)).sum(axis=0)
            self.like_neg[c] = (hit & (labels == 0)).sum(axis=0)
        self.like_pos = (s + self.like_pos) / (s * (k + 1) + self.like_pos.sum(axis=0))
        self.like_neg = (s + self.like_neg) / (s * (k + 1) + self.like_neg.sum(axis=0))
        return self

    def predict_proba(self, neighbour_ids: np.ndarray) -> np.ndarray:
        counts = self.labels[neighbour_ids[:, :self.k]].sum(axis=1)  # (m, C)
        columns = np.arange(counts.shape[1])
        pos = self.prior * self.like_pos[counts, columns]
        neg = (1 - self.prior) * self.like_neg[counts, columns]
        return pos / (pos + neg)


def knn_probe(data: ProbeInputs, ks: tuple[int, ...] = KS, temperature: float = TEMPERATURE,
              select_metric: str = "auroc", softmax_over: str = "k", mlknn_count_self: bool = False) -> ProbeResult:
    """Cosine kNN on the experts' global embeddings; k (and nothing else) chosen on val. `softmax_over`: see
    `weighted_vote`. `mlknn_count_self`: ML-kNN's training statistics count each training row among its own
    neighbours (DINOv2-on-radiology's `MLkNN(k, s=1.0, ignore_first_neighbours=0)`, scikit-multilearn); by default
    a row's neighbours are the other rows."""
    train = l2_normalise(data.train.embeddings.pooled)
    val, test = l2_normalise(data.val.embeddings.pooled), l2_normalise(data.test.embeddings.pooled)
    own = 1 if data.multilabel and not mlknn_count_self else 0
    usable = sorted({min(k, len(train) - own) for k in ks if k > 0})
    usable = [k for k in usable if k >= 1]
    if not usable:
        raise ValueError("knn: the training split is too small for any k")
    notes = []
    if max(ks) > usable[-1]:
        notes.append(f"k capped at {usable[-1]} ({len(train)} training rows)")
    kmax = usable[-1]
    val_sims, val_ids = topk_neighbours(val, train, kmax)
    test_sims, test_ids = topk_neighbours(test, train, kmax)
    kwargs = data.metric_kwargs()
    if data.multilabel:
        _, train_ids = topk_neighbours(train, train, kmax, exclude_self=not mlknn_count_self)
        models = {k: MLKNN(k).fit(train, data.train.labels, train_ids) for k in usable}
        scorer = (lambda k, sims, ids: models[k].predict_proba(ids))
    else:
        scorer = (lambda k, sims, ids: weighted_vote(sims, ids, data.train.labels, k, data.n_classes, temperature,
                                                     softmax_over))
    grid = {k: fast_metrics(data.val.labels, scorer(k, val_sims, val_ids), **kwargs) for k in usable}
    best = max(usable, key=lambda k: selection_score(grid[k], select_metric))
    scores = scorer(best, test_sims, test_ids)
    chosen = {"k": best} if data.multilabel else {"k": best, "temperature": temperature}
    if data.multilabel and mlknn_count_self:
        chosen["count_self"] = True
    if not data.multilabel and softmax_over == "max_k":
        chosen["softmax_over"] = f"top {kmax}"
    return ProbeResult("knn", chosen, grid[best], classification_metrics(data.test.labels, scores, **kwargs),
                       scores, data.test.labels, notes + (["ML-kNN (multi-label)"] if data.multilabel else []),
                       {"val_grid": {str(k): selection_score(m, select_metric)[0] for k, m in grid.items()}})
