"""The splits of an image data set, one rule each for every loader of split data (labelled images, image + mask
pairs, the image-folder converter): which folder name or split-column value names which split, how a val split is
carved from train when the data has none, and lazy views of some rows of a table.

The canonical splits are `train`, `val` and `test`; `valid`, `validation` and `dev` name `val` (any letter case),
so a folder or a split column written for RETFound, Hugging Face or a Kaggle export reads the same everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.errors import UserError

SPLITS = ("train", "val", "test")
# Every accepted spelling (lower case) -> its canonical split; written only here.
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


class ImageDataError(UserError, ValueError):
    """An image data set (labelled images, image + mask pairs) cannot be read as splits; the message names the
    file, folder, column or row at fault."""


def canonical_split(name: str) -> str | None:
    """`train`, `val` or `test` for any accepted spelling of a split (see `SPLIT_ALIASES`), else None."""
    return SPLIT_ALIASES.get(str(name).strip().lower())


def split_folders(root: str | Path, has: str | None = None) -> dict[str, Path]:
    """canonical split -> its folder directly under `root` (only folders that hold a `has` sub-folder, when given),
    in `SPLITS` order. Two folders naming one split (`val/` and `validation/`) are refused: which one holds the
    split would be a guess."""
    base = Path(root)
    found: dict[str, list[Path]] = {}
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        split = canonical_split(entry.name)
        if split is not None and entry.is_dir() and (has is None or (entry / has).is_dir()):
            found.setdefault(split, []).append(entry)
    doubled = {split: folders for split, folders in found.items() if len(folders) > 1}
    if doubled:
        split, folders = next(iter(doubled.items()))
        raise ImageDataError(f"{base}: {' and '.join(f.name + '/' for f in folders)} both name the {split} split; "
                             f"keep one")
    return {split: found[split][0] for split in SPLITS if split in found}


def split_names_message() -> str:
    """The accepted split names, for error messages."""
    aliases = ", ".join(f"{alias} = {split}" for alias, split in SPLIT_ALIASES.items() if alias != split)
    return f"{'/'.join(SPLITS)} ({aliases})"


def split_column_rows(values: Sequence[Any], column: str, where: str) -> dict[str, np.ndarray]:
    """canonical split -> the rows whose `column` value names it (splits with no row are left out); a value that
    names no split is refused with the accepted names."""
    names = np.array([canonical_split(v) or str(v) for v in values], dtype=object)
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise ImageDataError(f"{where}: column {column!r} holds {unknown}; expected {split_names_message()}")
    return {split: rows for split in SPLITS if len(rows := np.flatnonzero(names == split))}


def carve_validation(size: int, fraction: float, seed: int, labels: np.ndarray | None = None,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, carved rows) of `size` rows: a seeded `fraction` (rounded up, at least one row) carved out, whole
    groups at a time when `groups` is given, stratified by class when `labels` are class ids (1-D) and every class
    has two rows and a place in the carved part; multi-label (2-D) labels are not stratified."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if not 0 < fraction < 1:
        raise ImageDataError(f"val fraction must lie in (0, 1), got {fraction}")
    rows = np.arange(size)
    if groups is not None:
        if len(set(groups.tolist())) < 2:
            raise ImageDataError(f"cannot carve a val split from train: its {size} images form one group")
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        kept, carved = next(splitter.split(rows, groups=groups))
        return np.sort(kept), np.sort(carved)
    n_carved = max(1, math.ceil(fraction * size))
    if size - n_carved < 1:
        raise ImageDataError(f"{size} train rows are too few to carve a val split ({fraction:.0%}) from them")
    stratify = None
    if labels is not None and np.asarray(labels).ndim == 1:
        counts = np.bincount(labels)
        # stratifying needs two rows of every class and room in the carved part for each class
        if counts[counts > 0].min() >= 2 and n_carved >= (counts > 0).sum():
            stratify = labels
    kept, carved = train_test_split(rows, test_size=n_carved, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(carved)


class TableImages(Sequence):
    """The image values of some rows of a `datasets.Dataset` column, read lazily (no copy of the image bytes)."""

    def __init__(self, dataset: Any, column: str, rows: np.ndarray) -> None:
        self.dataset, self.column, self.rows = dataset, column, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.dataset[int(self.rows[index])][self.column]


def take_rows(values: Sequence[Any], rows: np.ndarray) -> Sequence[Any]:
    """The `rows` of image values: still lazy for table rows, a list otherwise."""
    if isinstance(values, TableImages):
        return TableImages(values.dataset, values.column, values.rows[rows])
    return [values[int(i)] for i in rows]


__all__ = ["SPLITS", "SPLIT_ALIASES", "ImageDataError", "TableImages", "canonical_split", "carve_validation",
           "split_column_rows", "split_folders", "split_names_message", "take_rows"]
