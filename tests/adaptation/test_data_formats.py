"""Adaptation data from tables: unlabelled images of a MultiMediset dataset, and image + mask pairs from an Arrow
table with a split column; a missing folder fails with a message naming it."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimeditron.adaptation.errors import AdaptDataError
from multimeditron.adaptation.images import CanvasDataset, unlabelled_images
from multimeditron.adaptation.segmentation.train import canvas_mask
from multimeditron.data.segmentation_pairs import load_segmentation_pairs


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_multimediset_images_are_read_lazily(tmp_path: Path) -> None:
    from multimeditron.data.synthetic import generate_synthetic_vqa

    dataset = generate_synthetic_vqa(tmp_path / "vqa", num_train=6, num_test=2, seed=0, image_size=32)
    expected = sum(m["type"] == "image" for row in dataset["train"]["modalities"] for m in row)
    images, folder = unlabelled_images(tmp_path / "vqa")  # a DatasetDict folder: its train split
    assert len(images) == expected > 0
    item = CanvasDataset(images, 28, folder)[len(images) - 1]
    assert item["pixel_values"].shape == (3, 28, 28) and "labels" not in item  # unlabelled: no label key


def test_segmentation_pairs_from_a_table(tmp_path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    rows = {"image": [], "mask": [], "split": []}
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[4:10, 4:10] = 1 + i % 2  # two foreground classes
        rows["image"].append({"bytes": _png(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)), "path": None})
        rows["mask"].append({"bytes": _png(mask), "path": None})
        rows["split"].append(split)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "split": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "table"))
    data = load_segmentation_pairs(tmp_path / "table")
    assert {s: len(p) for s, p in data.splits.items()} == {"train": 4, "val": 2, "test": 2}
    mask = canvas_mask(data.read_mask(data.splits["train"].masks[1]), 32)  # 16 px -> 32 px, nearest neighbour
    assert mask.shape == (32, 32) and set(mask.unique().tolist()) == {0, 2} and int((mask == 2).sum()) == 12 * 12


def test_missing_unlabelled_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(AdaptDataError, match="no such data"):
        unlabelled_images(tmp_path / "missing")
