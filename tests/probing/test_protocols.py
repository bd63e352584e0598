"""The four protocols on embeddings of drawn images (a tiny expert) and on hand-made features."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.data.labelled_images import load_labelled_images
from multimeditron.probing import (
    Embeddings,
    Labelled,
    ProbeInputs,
    ProbeSettings,
    build_probe_expert,
    embed_splits,
    fewshot_probe,
    knn_probe,
    linear_probe,
    logreg_probe,
    parse_spec,
    probe_inputs,
)
from multimeditron.probing.protocols.knn import MLKNN, topk_neighbours

from .conftest import write_folder

FAST = {"knn": {}, "linear": {"epochs": 20, "learning_rates": (0.01, 0.1, 1.0)}, "logreg": {},
        "fewshot": {"shots": (2, 8), "draws": 2}}
PROBES = {"knn": knn_probe, "linear": linear_probe, "logreg": logreg_probe, "fewshot": fewshot_probe}


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory) -> ProbeInputs:
    """Embeddings of a tiny RETFound-Green (global = mean of all tokens) on 40 / 10 / 60 drawn images per class
    (dark vs bright)."""
    root = write_folder(tmp_path_factory.mktemp("control") / "images", {"train": 40, "val": 10, "test": 60}, seed=1)
    data = load_labelled_images(root)
    expert = build_probe_expert(parse_spec("retfound_green", tiny=True))
    settings = ProbeSettings(cache_dir=None, progress=False)
    return probe_inputs(data, embed_splits(expert, data, settings))


@pytest.mark.parametrize("protocol", sorted(PROBES))
def test_separable_task_and_shuffled_control(image_inputs, protocol):
    result = PROBES[protocol](image_inputs, **FAST[protocol])
    assert result.test["auroc"] > 0.95, result.test
    rng = np.random.default_rng(0)
    shuffled = ProbeInputs(*(Labelled(part.embeddings, rng.permutation(part.labels))
                             for part in (image_inputs.train, image_inputs.val, image_inputs.test)), n_classes=2)
    control = PROBES[protocol](shuffled, **FAST[protocol])
    assert abs(control.test["auroc"] - 0.5) < 0.15, control.test


def test_linear_grid_covers_cls_patch_and_layers_and_falls_back_without_layers(image_inputs):
    result = linear_probe(image_inputs, epochs=5, learning_rates=(0.01, 0.1))
    names = {key.split("|")[0] for key in result.extra["val_grid"]}
    assert names == {"cls_last1", "cls_last1+patch", "cls_last2", "cls_last2+patch"}  # tiny model: 2 blocks
    assert any("last 4 = last 2" in note for note in result.notes)
    bare = ProbeInputs(*(Labelled(Embeddings(p.embeddings.pooled), p.labels)
                         for p in (image_inputs.train, image_inputs.val, image_inputs.test)), n_classes=2)
    fallback = linear_probe(bare, epochs=5, learning_rates=(0.01,))
    assert fallback.chosen["features"] == "pooled"
    assert any("no intermediate layers" in note for note in fallback.notes)


def _multilabel_inputs(seed: int = 0) -> ProbeInputs:
    rng = np.random.default_rng(seed)

    def part(n: int) -> Labelled:
        labels = rng.integers(0, 2, (n, 3))
        features = labels * 3.0 + rng.normal(size=(n, 3))
        features = np.concatenate([features, rng.normal(size=(n, 5))], axis=1).astype(np.float32)
        return Labelled(Embeddings(features), labels)

    return ProbeInputs(part(120), part(40), part(60), n_classes=3, multilabel=True)


@pytest.mark.parametrize("protocol", ["knn", "linear", "logreg", "fewshot"])
def test_multilabel_protocols(protocol):
    result = PROBES[protocol](_multilabel_inputs(), **FAST[protocol])
    assert result.test["auroc"] > 0.9
    if result.test_scores is not None:
        assert result.test_scores.shape == (60, 3)
        assert ((result.test_scores >= 0) & (result.test_scores <= 1)).all()


def test_mlknn_on_a_hand_made_case():
    # four training points on a line; label 0 on the left two, label 1 on the right two
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    _, train_ids = topk_neighbours(bank, bank, 1, exclude_self=True)
    model = MLKNN(k=1).fit(bank, labels, train_ids)
    # priors (1 + 2) / (2 + 4) = 0.5; each point's nearest other point shares its labels, so a query next to
    # the left pair gets P(label 0) = (1 + 2) / (2 + 2) / ((1 + 2) / 4 + (1 + 0) / 4) = 0.75
    _, query_ids = topk_neighbours(np.array([[0.95, 0.05]]), bank, 1)
    assert model.predict_proba(query_ids) == pytest.approx(np.array([[0.75, 0.25]]))


def test_one_class_test_split_reports_undefined_through_every_protocol():
    from multimeditron.probing.run import run_protocol

    rng = np.random.default_rng(0)

    def part(labels: np.ndarray) -> Labelled:
        features = (labels[:, None] * 2.0 + rng.normal(size=(len(labels), 4))).astype(np.float32)
        return Labelled(Embeddings(features), labels)

    inputs = ProbeInputs(part(np.repeat([0, 1], 20)), part(np.repeat([0, 1], 5)), part(np.zeros(8, dtype=int)),
                         n_classes=2)
    settings = ProbeSettings(bootstrap=50, linear_epochs=5, shots=(2,), draws=2, progress=False)
    for protocol in PROBES:
        result = run_protocol(protocol, inputs, settings)
        auroc = result.test["auroc"]
        assert (auroc["value"] if isinstance(auroc, dict) else auroc) == "undefined: one class", protocol
        accuracy = result.test["accuracy"]
        assert isinstance(accuracy["value"] if isinstance(accuracy, dict) else accuracy, float)
