"""Metrics from (y_true, scores): scikit-learn values, the numpy twins the bootstrap uses, undefined cases."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.probing.bootstrap import bootstrap_metrics
from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import (
    METRICS,
    ONE_CLASS,
    SELECTION_METRICS,
    classification_metrics,
    selection_score,
    selection_value,
)


@pytest.mark.parametrize("n_classes,multilabel", [(2, False), (3, False), (5, False), (3, True)])
@pytest.mark.parametrize("ordinal", [False, True])
def test_numpy_metrics_equal_scikit_learn(n_classes, multilabel, ordinal):
    rng = np.random.default_rng(n_classes)
    for _ in range(5):
        if multilabel:
            y = rng.integers(0, 2, (50, n_classes))
            scores = np.round(rng.random((50, n_classes)), 1)  # rounding makes ties
        else:
            y = rng.integers(0, n_classes, 50)
            scores = np.round(rng.random((50, n_classes)), 1) + 0.01
            scores /= scores.sum(axis=1, keepdims=True)
        a = classification_metrics(y, scores, multilabel=multilabel, ordinal=ordinal)
        b = fast_metrics(y, scores, multilabel=multilabel, ordinal=ordinal)
        assert set(a) == set(b) == set(METRICS)
        for name in METRICS:
            assert a[name] == pytest.approx(b[name], abs=1e-9), name


def test_perfect_and_inverted_binary_scores():
    y = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    metrics = classification_metrics(y, good)
    assert metrics["auroc"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["kappa"] == 1.0
    assert classification_metrics(y, good[:, ::-1])["auroc"] == 0.0


def test_one_class_split_is_reported_as_undefined_not_raised():
    y = np.zeros(6, dtype=int)
    scores = np.tile([[0.7, 0.3]], (6, 1))
    metrics = classification_metrics(y, scores)
    assert metrics["auroc"] == ONE_CLASS and metrics["kappa"] == ONE_CLASS and metrics["aupr"] == ONE_CLASS
    assert metrics["accuracy"] == 1.0
    boot = bootstrap_metrics(y, scores, n_resamples=50)
    assert boot["auroc"] == {"value": ONE_CLASS} and boot["accuracy"]["low"] == 1.0
    labels = np.array([[1, 0], [1, 0], [1, 0]])  # multi-label: both labels constant
    assert classification_metrics(labels, np.full((3, 2), 0.4), multilabel=True)["auroc"] == ONE_CLASS


def test_multilabel_hand_computed_case():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.3, 0.6], [0.6, 0.4], [0.2, 0.1]])
    metrics = classification_metrics(y, scores, multilabel=True)
    # label 0: positives 0.9, 0.6 above negatives 0.3, 0.2 -> AUROC 1; label 1: positives 0.6, 0.4 vs
    # negatives 0.2, 0.1 -> 1; predictions >= 0.5 are right on 7 of 8 cells (row 2, label 1 missed)
    assert metrics["auroc"] == 1.0
    assert metrics["accuracy"] == pytest.approx(7 / 8)
    # F1 label 0 = 1; label 1: tp 1, fp 0, fn 1 -> 2/3; macro = 5/6
    assert metrics["f1_macro"] == pytest.approx(5 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((1.0 + 0.75) / 2)


def test_quadratic_kappa_penalises_far_misses_more():
    y = np.array([0, 1, 2, 0, 1, 2])
    near = np.eye(3)[[1, 1, 2, 0, 1, 1]]  # two misses by one grade
    far = np.eye(3)[[2, 1, 2, 0, 1, 0]]  # two misses by two grades
    quadratic = {name: classification_metrics(y, p, ordinal=True)["kappa"] for name, p in (("near", near), ("far", far))}
    assert quadratic["near"] > quadratic["far"]
    assert classification_metrics(y, near)["kappa"] == pytest.approx(classification_metrics(y, far)["kappa"])


def test_selection_scores():
    metrics = {"accuracy": 0.8, "f1_macro": 0.6, "auroc": 0.9, "kappa": 0.3, "aupr": ONE_CLASS}
    assert selection_score(metrics) == (0.9, 0.8)
    assert selection_score(metrics, "aupr") == (0.8, 0.8)  # undefined: falls back to accuracy
    assert selection_score(metrics, "retfound") == (pytest.approx(0.6), 0.8)


def test_one_selection_score_for_probes_and_fine_tuning():
    from multimeditron.adaptation.recipes import FinetuneRecipe, load_recipe
    from multimeditron.config import ConfigError
    from multimeditron.probing.recipe import ProbeRecipe

    partly = {"accuracy": 0.8, "f1_macro": 0.6, "auroc": ONE_CLASS, "kappa": 0.2, "aupr": ONE_CLASS}
    assert selection_value(partly, "retfound") == pytest.approx(0.4)  # the mean of the defined ones only
    none = {"accuracy": 0.7, "f1_macro": ONE_CLASS, "auroc": ONE_CLASS, "kappa": ONE_CLASS}
    assert selection_score(none, "retfound") == (0.7, 0.7)  # nothing defined: accuracy, not nan
    with pytest.raises(ValueError, match="'f2' is not one of"):
        selection_value(partly, "f2")
    # the recipes of probe and finetune take exactly these names (one Literal, SelectionMetric)
    import typing

    for schema, section in ((FinetuneRecipe, "finetune"), (ProbeRecipe, "probe")):
        field = typing.get_type_hints(typing.get_type_hints(schema)[section])["select_metric"]
        assert typing.get_args(field) == SELECTION_METRICS
    with pytest.raises(ConfigError, match="finetune.select_metric: 'f2' is not one of"):
        load_recipe(FinetuneRecipe, None, [("data.path", "x", "--data"), ("finetune.select_metric", "f2", "--x")])
