"""Image + mask pairs (`multimeditron.data.segmentation_pairs`): split folders under every spelling of val, val
carved from train by the labelled sets' rule, unsplit folders, and errors that name the problem."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimeditron.data.segmentation_pairs import load_segmentation_pairs
from multimeditron.data.splits import ImageDataError, carve_validation


def _pairs(folder: Path, n: int) -> None:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "masks" / f"{i:03d}.png")


@pytest.mark.parametrize("name", ["val", "valid", "validation", "dev"])
def test_every_spelling_of_the_val_folder_is_val(tmp_path, name):
    for split, n in (("train", 6), (name, 3), ("test", 2)):
        _pairs(tmp_path / split, n)
    data = load_segmentation_pairs(tmp_path)
    assert {s: len(p) for s, p in data.splits.items()} == {"train": 6, "val": 3, "test": 2}
    assert all(Path(p).parent.parent.name == name for p in data.splits["val"].images)


def test_missing_val_is_carved_by_the_shared_rule(tmp_path):
    for split, n in (("train", 10), ("test", 2)):
        _pairs(tmp_path / split, n)
    data = load_segmentation_pairs(tmp_path, seed=3)
    kept, carved = carve_validation(10, 0.2, 3)
    train = sorted((tmp_path / "train" / "images").iterdir())
    assert list(data.splits["val"].images) == [str(train[i]) for i in carved]
    assert list(data.splits["train"].images) == [str(train[i]) for i in kept]
    assert [Path(m).name for m in data.splits["val"].masks] == [Path(i).name for i in data.splits["val"].images]


def test_unsplit_folder_gets_seeded_splits(tmp_path):
    _pairs(tmp_path, 20)
    data = load_segmentation_pairs(tmp_path, seed=0)
    sizes = {s: len(p) for s, p in data.splits.items()}
    assert sizes == {"train": 14, "val": 3, "test": 3} and sum(sizes.values()) == 20
    assert list(load_segmentation_pairs(tmp_path, seed=0).splits["test"].images) == list(data.splits["test"].images)


def test_unmatched_masks_and_missing_splits_are_named(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(ImageDataError, match=r"unmatched: \['a', 'b'\]"):
        load_segmentation_pairs(tmp_path)
    only_train = tmp_path / "only_train"
    _pairs(only_train / "train", 3)
    _pairs(only_train / "val", 3)
    with pytest.raises(ImageDataError, match="no test split"):
        load_segmentation_pairs(only_train)
    with pytest.raises(ImageDataError, match="no such data"):
        load_segmentation_pairs(tmp_path / "missing")
