"""The labelled drawn images of the expert half: balanced labels that agree with the pixels (read by the same
threshold reader as the VQA set's test), deterministic splits, and a table the probe and fine-tuning commands read."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from multimeditron.data.synthetic import MAX_COUNT, MODALITIES
from multimeditron.data.synthetic_findings import LABEL_COLUMNS, generate_finding_images
from tests.data.test_synthetic import blob_sizes, finding_mask, modality_of, pixels


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings") / "images"
    return out, generate_finding_images(out, num_train=48, num_val=12, num_test=24, seed=5)


def row_labels(row: dict) -> tuple[str, int, str | None]:
    modality = next(m for m in MODALITIES if row[m])
    count = next(n for n in range(MAX_COUNT + 1) if row[f"count_{n}"])
    side = "left" if row["finding_left"] else "right" if row["finding_right"] else None
    return modality, count, side


def test_labels_agree_with_the_pixels(findings) -> None:
    _, data = findings
    for row in data["train"]:
        modality, count, side = row_labels(row)
        a = pixels({"modalities": [{"value": row["image"]}]})
        mask = finding_mask(a, modality)
        assert modality_of(a) == modality
        assert len(blob_sizes(mask)) == count
        half = a.shape[1] // 2
        if count:  # every finding lies in the labelled half
            assert mask[:, :half].sum() > 0 if side == "left" else mask[:, half:].sum() > 0
            assert (mask[:, half:] if side == "left" else mask[:, :half]).sum() < 4
        assert (side is None) == (count == 0)


def test_labels_are_balanced_and_one_hot(findings) -> None:
    _, data = findings
    labels = [row_labels(row) for row in data["train"]]
    assert Counter(m for m, _, _ in labels) == {m: 16 for m in MODALITIES}
    assert Counter(c for _, c, _ in labels) == {c: 12 for c in range(MAX_COUNT + 1)}
    for row in data["train"]:
        assert sum(row[m] for m in MODALITIES) == 1
        assert sum(row[f"count_{n}"] for n in range(MAX_COUNT + 1)) == 1
        assert row["finding_left"] + row["finding_right"] == (0 if row["count_0"] else 1)


def test_deterministic_and_independent_splits() -> None:
    a = generate_finding_images(None, 6, 6, 6, seed=1)
    b = generate_finding_images(None, 6, 6, 6, seed=1)
    assert a["train"]["image"] == b["train"]["image"]
    assert a["train"]["image"] != a["val"]["image"] != a["test"]["image"]
    assert generate_finding_images(None, 6, 6, 6, seed=2)["train"]["image"] != a["train"]["image"]
    with pytest.raises(ValueError, match="num_val"):
        generate_finding_images(None, 6, -1, 6)


def test_the_probe_and_finetune_commands_read_it_as_multilabel(findings) -> None:
    from multimeditron.data.labelled_images import load_labelled_images

    out, _ = findings
    data = load_labelled_images(out, label_columns=list(LABEL_COLUMNS))
    assert data.multilabel and data.classes == list(LABEL_COLUMNS)
    assert {split: len(part) for split, part in data.splits.items()} == {"train": 48, "val": 12, "test": 24}
    labels = data.splits["train"].labels  # columns: 3 modalities, finding_left/right, count_0..3
    assert labels.shape == (48, len(LABEL_COLUMNS)) and set(np.unique(labels)) == {0, 1}
    assert (labels[:, :3].sum(axis=1) == 1).all() and (labels[:, 5:].sum(axis=1) == 1).all()
