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
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:4] = 1  # a foreground square: a train split of background only is refused
    for i in range(n):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i:03d}.png")


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


def _masks(root: Path, masks: dict[str, list[np.ndarray]], image_size: tuple[int, int] | None = None) -> Path:
    for split, arrays in masks.items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(arrays):
            height, width = image_size or mask.shape[:2]
            Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


def _square(value: int = 1, size: int = 8) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[2:5, 2:5] = value
    return mask


def test_a_stray_255_is_ignored_not_a_256th_class(tmp_path):
    stray = _square()
    stray[0, 0] = 255  # VOC's "ignore"
    data = load_segmentation_pairs(_masks(tmp_path, {"train": [stray, _square()], "test": [stray]}))
    assert data.num_classes == 2 and not data.rules.black_white
    assert data.pixels["test"] == [64 - 9 - 1, 9]  # the ignored pixel counts nowhere
    assert data.read_mask(data.splits["test"].masks[0])[0, 0] == 255
    with pytest.raises(ImageDataError, match=r"most of 0..255 unused"):
        load_segmentation_pairs(tmp_path, ignore_index=None)  # 255 is then an id: 256 classes, refused


def test_black_white_masks_are_0_and_1(tmp_path):
    data = load_segmentation_pairs(_masks(tmp_path, {"train": [_square(255)] * 2, "test": [_square(255)]}))
    assert data.rules.black_white and data.num_classes == 2
    assert data.read_mask(data.splits["test"].masks[0]).max() == 1


def test_jpeg_masks_are_refused_saying_why(tmp_path):
    root = _masks(tmp_path, {"train": [_square(255, 32)] * 2, "test": [_square(255, 32)]})
    for mask in root.glob("*/masks/*.png"):  # the same black/white masks, saved lossily
        Image.open(mask).save(mask.with_suffix(".jpg"), quality=75)
        mask.unlink()
    with pytest.raises(ImageDataError, match=r"mask\(s\) are JPEG .*save masks losslessly \(PNG\)"):
        load_segmentation_pairs(root)


def test_colour_masks_need_a_palette(tmp_path):
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[2:5, 2:5] = (255, 0, 0)
    colour[5:7, 5:7] = (0, 255, 0)
    root = _masks(tmp_path, {"train": [colour] * 2, "test": [colour]})
    with pytest.raises(ImageDataError, match="an RGB colour mask; .* data.palette"):
        load_segmentation_pairs(root)
    data = load_segmentation_pairs(root, palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    assert data.num_classes == 3 and data.pixels["test"] == [64 - 9 - 4, 9, 4]
    with pytest.raises(ImageDataError, match=r"colour\(s\) \[0, 255, 0\] are not in data.palette"):
        load_segmentation_pairs(root, palette=[[0, 0, 0], [255, 0, 0]])


def test_masks_must_fit_their_image_and_the_classes(tmp_path):
    with pytest.raises(ImageDataError, match=r"differ in size from their image: .*0.png is 8x8, its image 16x16"):
        load_segmentation_pairs(_masks(tmp_path / "small", {"train": [_square()] * 2, "test": [_square()]}, (16, 16)))
    root = _masks(tmp_path / "ids", {"train": [_square(1)] * 2, "test": [_square(3)]})
    with pytest.raises(ImageDataError, match=r"test masks hold class id\(s\) \[3\] outside the 2 classes"):
        load_segmentation_pairs(root)
    assert load_segmentation_pairs(root, num_classes=4).num_classes == 4


def test_a_broken_pair_is_refused_or_left_out(tmp_path):
    root = _masks(tmp_path, {"train": [_square()] * 3, "test": [_square()]})
    (root / "train" / "masks" / "1.png").write_text("not a mask")
    with pytest.raises(ImageDataError, match=r"1 file\(s\) cannot be read as images: .*1.png"):
        load_segmentation_pairs(root)
    data = load_segmentation_pairs(root, on_bad_image="skip")
    assert sum(len(data.splits[s]) for s in ("train", "val")) == 2 and data.refused[0]["file"].endswith("1.png")
