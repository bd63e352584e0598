"""Image + mask pairs, the data of `segment`: `ROOT/{train,val,test}/{images,masks}/` (or `ROOT/{images,masks}/`,
split here with a seed), matching file names (stems), or a parquet/arrow table with image, mask and split columns.
A mask is a single-channel image whose pixel values are class ids (0 = background).

Split names and their aliases (`valid`, `validation`, `dev` = val) and the carving of a missing val split are
`multimeditron.data.splits`'s, shared with the labelled image sets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.data.images import list_image_files
from multimeditron.data.splits import (
    SPLITS,
    ImageDataError,
    TableImages,
    carve_validation,
    split_column_rows,
    split_folders,
    split_names_message,
    take_rows,
)

VAL_FRACTION = 0.2  # of train, when the data has train and test but no val
UNSPLIT_FRACTIONS = (0.15, 0.15)  # (test of all pairs, val of the rest) when the data has no split at all


@dataclass
class Pairs:
    images: Sequence[Any]
    masks: Sequence[Any]

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: np.ndarray) -> Pairs:
        return Pairs(take_rows(self.images, rows), take_rows(self.masks, rows))


@dataclass
class SegmentationData:
    name: str
    splits: dict[str, Pairs]
    folder: Path | None


def _folder_pairs(root: Path) -> Pairs:
    def files(sub: str) -> dict[str, Path]:
        return {p.stem: p for p in list_image_files(root / sub, recursive=False)}

    images, masks = files("images"), files("masks")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise ImageDataError(f"{root}: images/ and masks/ must hold the same names; unmatched: {unmatched[:5]}"
                             f"{' ...' if len(unmatched) > 5 else ''} ({len(unmatched)} in all)")
    if not images:
        raise ImageDataError(f"{root}: images/ holds no image")
    names = sorted(images)
    return Pairs([str(images[n]) for n in names], [str(masks[n]) for n in names])


def _carve(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """(kept, carved) pairs: the one carving rule of `carve_validation`."""
    kept, carved = carve_validation(len(pairs), fraction, seed)
    return pairs.take(kept), pairs.take(carved)


def _finish(name: str, splits: dict[str, Pairs], folder: Path | None, seed: int) -> SegmentationData:
    for required in ("train", "test"):
        if required not in splits:
            raise ImageDataError(f"{name}: no {required} split (found: {sorted(splits) or 'none'}; split names: "
                                 f"{split_names_message()})")
    if "val" not in splits:
        splits["train"], splits["val"] = _carve(splits["train"], VAL_FRACTION, seed)
    return SegmentationData(name, {s: splits[s] for s in SPLITS}, folder)


def load_segmentation_pairs(path: str | Path, image_column: str = "image", mask_column: str = "mask",
                            split_column: str = "split", seed: int = 0) -> SegmentationData:
    """Image + mask pairs in train, val and test, from whichever layout `path` has (see the module docstring)."""
    root = Path(path)
    if not root.exists():
        raise ImageDataError(f"no such data: {path}")
    folders = split_folders(root, has="images") if root.is_dir() else {}
    if {"train", "test"} & set(folders):
        return _finish(str(root), {s: _folder_pairs(folder) for s, folder in folders.items()}, root, seed)
    if root.is_dir() and (root / "images").is_dir():
        rest, test = _carve(_folder_pairs(root), UNSPLIT_FRACTIONS[0], seed)
        train, val = _carve(rest, UNSPLIT_FRACTIONS[1], seed)
        return SegmentationData(str(root), {"train": train, "val": val, "test": test}, root)
    return _table(root, image_column, mask_column, split_column, seed)


def _table(root: Path, image_column: str, mask_column: str, split_column: str, seed: int) -> SegmentationData:
    import datasets

    from multimeditron.data.report import DataError
    from multimeditron.data.sources import DatasetEntry, load_source

    try:
        source = load_source(DatasetEntry(str(root)), "train")
    except DataError as error:
        raise ImageDataError(f"{root}: expected {{train,val,test}}/{{images,masks}}/ folders, images/ + masks/, or "
                             f"a table ({error})") from error
    table = source.dataset
    for column in (image_column, mask_column, split_column):
        if column not in table.column_names:
            raise ImageDataError(f"{root}: no column {column!r}; its columns: {table.column_names}")
    for column in (image_column, mask_column):
        if isinstance(table.features.get(column), datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
    splits = {split: Pairs(TableImages(table, image_column, rows), TableImages(table, mask_column, rows))
              for split, rows in split_column_rows(table[split_column], split_column, str(root)).items()}
    return _finish(str(root), splits, source.folder, seed)


__all__ = ["Pairs", "SegmentationData", "load_segmentation_pairs"]
