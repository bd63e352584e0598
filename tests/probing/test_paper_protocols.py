"""The papers' protocol variants against hand-computed cases: DINOv2's kNN softmax over the top max_k, ML-kNN
counting each training row itself, systematic few-shot rows, one-logit linear heads, retraining on train + val,
fixed-C logistic regression, RETFound's metric set (binary AUPR over both columns), RETFound-Green's median
bootstrap AUROC and its Wilcoxon comparison."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.probing.bootstrap import median_bootstrap_auroc, wilcoxon_comparison
from multimeditron.probing.embed import Embeddings
from multimeditron.probing.paper_metrics import dinov2_radiology_metrics, retfound_metrics
from multimeditron.probing.protocols.common import Labelled, ProbeInputs
from multimeditron.probing.protocols.fewshot import fewshot_probe, systematic_rows
from multimeditron.probing.protocols.knn import knn_probe, topk_neighbours, weighted_vote
from multimeditron.probing.protocols.linear import linear_probe
from multimeditron.probing.protocols.logreg import logreg_probe


def test_knn_softmax_over_the_top_max_k() -> None:
    sims = np.array([[0.9, 0.8, 0.7]])
    ids = np.array([[0, 1, 2]])
    labels = np.array([0, 1, 1])
    e = np.exp(np.array([0.0, -1.0, -2.0]))  # exp((s - 0.9) / 0.1)
    # k = 1 of max_k = 3: the first neighbour's share of the three weights, not renormalised
    assert weighted_vote(sims, ids, labels, 1, 2, 0.1, "max_k")[0] == pytest.approx([e[0] / e.sum(), 0.0])
    assert weighted_vote(sims, ids, labels, 1, 2, 0.1, "k")[0] == pytest.approx([1.0, 0.0])
    assert weighted_vote(sims, ids, labels, 2, 2, 0.1, "max_k")[0] == pytest.approx([e[0], e[1]] / e.sum())


def _inputs(x_train, y_train, x_val, y_val, x_test, y_test, n_classes=2, multilabel=False) -> ProbeInputs:
    emb = (lambda x: Embeddings(np.asarray(x, dtype=np.float32)))
    return ProbeInputs(Labelled(emb(x_train), np.asarray(y_train)), Labelled(emb(x_val), np.asarray(y_val)),
                       Labelled(emb(x_test), np.asarray(y_test)), n_classes, multilabel)


def test_mlknn_can_count_each_training_row_itself() -> None:
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    y = np.array([[1], [1], [0], [0]])
    inputs = _inputs(x, y, x, y, x, y, n_classes=1, multilabel=True)
    with_self = knn_probe(inputs, ks=(1,), mlknn_count_self=True)
    without = knn_probe(inputs, ks=(1,))
    assert with_self.chosen == {"k": 1, "count_self": True} and without.chosen == {"k": 1}
    # counting itself, every training row's nearest neighbour is itself: ML-kNN's likelihoods are then perfect
    _, ids = topk_neighbours(x / np.linalg.norm(x, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1,
                                                                                                 keepdims=True), 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3]
    assert with_self.test_scores[:, 0].round(3).tolist() == pytest.approx([0.75, 0.75, 0.25, 0.25], abs=1e-3)


def test_systematic_rows_take_n_in_total() -> None:
    assert systematic_rows(10, 4).tolist() == [0, 2, 5, 8]  # np.arange(0, 10, 2.5).round() -> 0, 2, 5 (2.5 -> 2), 8
    assert systematic_rows(3, 8).tolist() == [0, 1, 2]


def _separable(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 1, (n, 4)) + y[:, None] * 2.0
    return x, y


def test_fewshot_systematic_linear_head_is_one_draw() -> None:
    x, y = _separable()
    inputs = _inputs(x, y, x[:10], y[:10], x[10:], y[10:])
    # rows 0, 7, 13, 20, 27, 33 of 40 (both classes; N = 4 would take rows 0, 10, 20, 30: one class, no draw)
    result = fewshot_probe(inputs, shots=(6,), sampling="systematic", head="linear",
                           linear_options={"learning_rates": (0.1,), "epochs": 5})
    assert result.chosen["draws"] == 1 and result.chosen["sampling"] == "systematic"
    assert systematic_rows(40, 6).tolist() == [0, 7, 13, 20, 27, 33]
    assert result.extra["per_shot"]["6"]["auroc"]["draws"] == 1


def test_linear_one_logit_and_retrain_on_train_and_val() -> None:
    x, y = _separable()
    inputs = _inputs(x[:20], y[:20], x[20:30], y[20:30], x[30:], y[30:])
    result = linear_probe(inputs, learning_rates=(0.1,), epochs=20, one_logit=True, retrain=True, standardise=False)
    assert result.chosen["head"] == "one logit + BCE"
    assert np.allclose(result.test_scores.sum(axis=1), 1.0)  # (1 - p, p)
    assert any("train + val" in note for note in result.notes)
    assert result.test["auroc"] > 0.9


def test_logreg_at_a_fixed_c_chooses_nothing() -> None:
    x, y = _separable()
    inputs = _inputs(x[:20], y[:20], x[20:30], y[20:30], x[30:], y[30:])
    result = logreg_probe(inputs, c_grid=(1.0,), max_iter=20_000)
    assert result.chosen == {"C": 1.0} and "fixed C=1" in result.notes[0]
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # RETFound-Green's Eval_*.ipynb pipeline, fitted on train
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=20_000, random_state=42)).fit(x[:20], y[:20])
    assert result.test_scores == pytest.approx(reference.predict_proba(x[30:]), abs=1e-6)


def test_retfound_binary_aupr_averages_both_columns() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.3, 0.7, 0.4])
    scores = np.stack([1 - p1, p1], axis=1)
    from sklearn.metrics import average_precision_score

    by_hand = (average_precision_score(y == 0, scores[:, 0]) + average_precision_score(y == 1, p1)) / 2
    metrics = retfound_metrics(y, scores)
    assert metrics["aupr"] == pytest.approx(by_hand)
    # positive class AP: ranks 0.7 (pos), 0.6 (neg), 0.4 (pos), ... -> (1 + 2/3) / 2
    assert average_precision_score(y, p1) == pytest.approx((1 + 2 / 3) / 2)
    pred = scores.argmax(axis=1)  # [0, 1, 0, 1, 0]: one false positive, one false negative
    assert metrics["hamming"] == pytest.approx(4 / 10)  # 2 wrong rows x 2 one-hot entries of 10
    assert metrics["accuracy"] == pytest.approx(3 / 5) and pred.tolist() == [0, 1, 0, 1, 0]
    assert dinov2_radiology_metrics(y, scores, ["a", "b"])["auroc_per_class"] == {"b": pytest.approx(5 / 6)}


def test_median_bootstrap_auroc_is_retfound_greens_and_wilcoxon_compares() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.3).astype(int)
    good = y * 0.5 + rng.random(60)
    bad = y * 0.1 + rng.random(60)
    ours = median_bootstrap_auroc(y, good, n_resamples=100, seed=42)
    # the notebook's loop, written out
    state = np.random.RandomState(seed=42)
    values = []
    for _ in range(100):
        rows = state.choice(list(range(60)), size=60, replace=True)
        values.append(roc_auc_score(y[rows], good[rows]))
    assert ours["value"] == pytest.approx(np.median(values)) and ours["n_resamples"] == 100
    other = median_bootstrap_auroc(y, bad, n_resamples=100, seed=42)
    test = wilcoxon_comparison(ours["resamples"], other["resamples"])
    from scipy.stats import wilcoxon

    assert test["p_value"] == pytest.approx(wilcoxon(ours["resamples"], other["resamples"]).pvalue)
    assert test["p_value"] < 0.01
