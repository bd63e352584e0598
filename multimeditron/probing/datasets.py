"""Labelled image sets for probing: a `train|val|test/<class>/` folder or an Arrow/parquet table, read as splits.

A table has an image column, one label column (multi-class) or several 0/1 label columns (multi-label), a `split`
column (or is a `save_to_disk` DatasetDict), and optionally `study` / `patient` columns that group images (slices
of a 3D study, views of one patient) so that they are embedded one by one and scored as one case.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.data.convert import ConversionError, scan_image_folder
from multimeditron.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
GROUP_COLUMNS = ("study", "patient")  # a study (3D volume) is the finer unit when both are present


class ProbeDataError(UserError, ValueError):
    """The probing data cannot be read as labelled splits; the message names the file, column or row."""


class TableImages(Sequence):
    """The image values of some rows of a `datasets.Dataset`, read lazily (no copy of the image bytes)."""

    def __init__(self, dataset: Any, column: str, rows: np.ndarray) -> None:
        self.dataset, self.column, self.rows = dataset, column, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.dataset[int(self.rows[index])][self.column]


@dataclass
class Split:
    images: Sequence[Any]  # stored image values (paths or {bytes, path}) for `ImageResolver.load`
    labels: np.ndarray  # (n,) class ids, or (n, C) 0/1 for multi-label
    groups: np.ndarray | None = None  # (n,) study/patient id of each image, or None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ProbeData:
    name: str
    classes: list[str]
    multilabel: bool
    splits: dict[str, Split]
    folder: Path | None = None  # relative image paths resolve against it
    group_kind: str | None = None  # "study" or "patient" when images are grouped
    notes: list[str] = field(default_factory=list)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    def fingerprint(self, split: str) -> str:
        """A digest of the split's images (file path, size and modification time, or the stored bytes)."""
        if split not in self._fingerprints:
            digest = hashlib.blake2b(digest_size=16)
            for value in self.splits[split].images:
                digest.update(_image_identity(value, self.folder))
            self._fingerprints[split] = digest.hexdigest()
        return self._fingerprints[split]


def _image_identity(value: Any, folder: Path | None) -> bytes:
    if isinstance(value, dict) and value.get("bytes"):
        return hashlib.blake2b(bytes(value["bytes"]), digest_size=16).digest()
    if isinstance(value, (bytes, bytearray)):
        return hashlib.blake2b(bytes(value), digest_size=16).digest()
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, (str, os.PathLike)):
        raise ProbeDataError(f"unreadable image value of type {type(value).__name__}")
    full = Path(path) if Path(path).is_absolute() or folder is None else folder / path
    stat = full.stat() if full.is_file() else None
    return f"{full.resolve()}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode()


def carve_validation(labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int,
                     multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): a seeded `fraction` of train, whole groups at a time, stratified by class when
    the data is multi-class and ungrouped."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    rows = np.arange(len(labels))
    if not 0 < fraction < 1:
        raise ProbeDataError(f"val fraction must lie in (0, 1), got {fraction}")
    if groups is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        train, val = next(splitter.split(rows, groups=groups))
        return np.sort(train), np.sort(val)
    counts = np.bincount(labels) if not multilabel else None
    n_val = int(np.ceil(fraction * len(labels)))
    # stratifying needs two rows of every class and room in val for each class
    stratify = labels if counts is not None and counts[counts > 0].min() >= 2 and n_val >= (counts > 0).sum() \
        else None
    train, val = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def _finish(name: str, classes: list[str], multilabel: bool, parts: dict[str, Split], folder: Path | None,
            group_kind: str | None, notes: list[str], val_fraction: float, seed: int) -> ProbeData:
    for required in ("train", "test"):
        if required not in parts or len(parts[required]) == 0:
            raise ProbeDataError(f"{name}: no {required} split (found: {sorted(parts) or 'none'})")
    if "val" not in parts or len(parts["val"]) == 0:
        train = parts["train"]
        keep, val = carve_validation(train.labels, train.groups, val_fraction, seed, multilabel)
        pick = (lambda s, r: s[r] if s is not None else None)
        images = train.images
        take = (lambda r: TableImages(images.dataset, images.column, images.rows[r])
                if isinstance(images, TableImages) else [images[i] for i in r])
        parts["val"] = Split(take(val), train.labels[val], pick(train.groups, val))
        parts["train"] = Split(take(keep), train.labels[keep], pick(train.groups, keep))
        unit = f"{group_kind}s" if group_kind else "images"
        notes.append(f"no val split: carved {len(val)} of {len(keep) + len(val)} train images "
                     f"({val_fraction:.0%} of the {unit}, seed {seed})")
    return ProbeData(name, classes, multilabel, {s: parts[s] for s in SPLITS}, folder, group_kind, notes)


def read_image_folder(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """RETFound's layout: ROOT/{train,val,test}/<class>/<image> (PNG, JPEG, TIFF, ..., DICOM)."""
    try:
        classes, items, notes = scan_image_folder(root)
    except ConversionError as error:
        raise ProbeDataError(str(error)) from error
    index = {name: i for i, name in enumerate(classes)}
    parts = {}
    for split, pairs in items.items():
        parts[SPLIT_ALIASES[split]] = Split([str(path) for path, _ in pairs],
                                            np.array([index[c] for _, c in pairs], dtype=np.int64))
    return _finish(str(root), classes, False, parts, Path(root), None, notes, val_fraction, seed)


def read_table(path: str | Path, image_column: str | None = None, label_columns: Sequence[str] = (),
               split_column: str = "split", val_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """A parquet/arrow file or folder, or a `save_to_disk` Dataset/DatasetDict, as labelled splits."""
    import datasets

    from multimeditron.config import DatasetEntry
    from multimeditron.data.report import DataError
    from multimeditron.data.sources import load_source, split_names

    local = Path(path)
    try:
        names = split_names(local)
        if names:
            tables = {n: load_source(DatasetEntry(str(local), split=n), n).dataset for n in names}
        else:
            tables = {None: load_source(DatasetEntry(str(local)), "train").dataset}
    except DataError as error:
        raise ProbeDataError(str(error)) from error
    first = next(iter(tables.values()))
    columns = list(first.column_names)
    image_column = image_column or _guess_image_column(first, str(path))
    labels = list(label_columns) or [c for c in ("label", "labels") if c in columns][:1]
    for column in [image_column, *labels]:
        if column not in columns:
            raise ProbeDataError(f"{path}: no column {column!r}; its columns: {columns}")
    if not labels:
        raise ProbeDataError(f"{path}: name the label column(s) (no `label` column); its columns: {columns}")
    group_kind = next((c for c in GROUP_COLUMNS if c in columns), None)
    multilabel = len(labels) > 1
    if not multilabel:
        values = sorted({v for t in tables.values() for v in t[labels[0]] if v is not None}, key=_class_order)
        classes = [str(v) for v in values]
    else:
        classes = list(labels)
    notes = [f"images grouped by `{group_kind}`: one embedding per {group_kind} (mean of its images)"] \
        if group_kind else []
    parts: dict[str, Split] = {}
    for table_split, table in tables.items():
        if isinstance(table.features.get(image_column), datasets.Image):
            table = table.cast_column(image_column, datasets.Image(decode=False))
        y = _labels(table, labels, classes, multilabel, str(path))
        groups = np.array([str(g) for g in table[group_kind]]) if group_kind else None
        if table_split is not None:
            row_splits = {SPLIT_ALIASES.get(table_split, table_split): np.arange(len(table))}
        elif split_column in columns:
            names = np.array([SPLIT_ALIASES.get(str(s).lower(), str(s)) for s in table[split_column]])
            unknown = sorted(set(names) - set(SPLITS))
            if unknown:
                raise ProbeDataError(f"{path}: column {split_column!r} holds {unknown}; expected train/val/test")
            row_splits = {s: np.flatnonzero(names == s) for s in SPLITS}
        else:
            raise ProbeDataError(f"{path}: no {split_column!r} column and no DatasetDict splits; say which rows are "
                                 f"train, val and test")
        for split, rows in row_splits.items():
            if split not in SPLITS:
                raise ProbeDataError(f"{path}: split {split!r} is not one of train/val/test")
            parts[split] = Split(TableImages(table, image_column, rows), y[rows],
                                 groups[rows] if groups is not None else None)
    folder = local if local.is_dir() else local.parent
    return _finish(str(path), classes, multilabel, parts, folder, group_kind, notes, val_fraction, seed)


def _class_order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float, bool, np.integer)) else (1, str(value))


def _guess_image_column(table: Any, where: str) -> str:
    import datasets

    if "image" in table.column_names:
        return "image"
    typed = [c for c, f in table.features.items() if isinstance(f, datasets.Image)]
    if len(typed) == 1:
        return typed[0]
    raise ProbeDataError(f"{where}: name the image column (--image-column); its columns: {table.column_names}")


def _labels(table: Any, columns: list[str], classes: list[str], multilabel: bool, where: str) -> np.ndarray:
    if not multilabel:
        index = {name: i for i, name in enumerate(classes)}
        values = table[columns[0]]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise ProbeDataError(f"{where}: row {missing[0]} has no label in {columns[0]!r} ({len(missing)} rows)")
        return np.array([index[str(v)] for v in values], dtype=np.int64)
    matrix = np.zeros((len(table), len(columns)), dtype=np.int64)
    for j, column in enumerate(columns):
        values = table[column]
        for i, v in enumerate(values):
            if v not in (0, 1, True, False):
                raise ProbeDataError(f"{where}: row {i}, column {column!r}: a multi-label column holds 0/1, got {v!r}")
        matrix[:, j] = np.asarray(values, dtype=np.int64)
    return matrix


def load_probe_data(path: str | Path, **kwargs: Any) -> ProbeData:
    """An image folder (train/ and test/ subfolders) or a table, whichever `path` is."""
    local = Path(path)
    if not local.exists():
        raise ProbeDataError(f"no such data: {path}")
    if local.is_dir() and any((local / s).is_dir() for s in ("train", "test")) \
            and not (local / "dataset_dict.json").is_file():
        return read_image_folder(local, **{k: v for k, v in kwargs.items() if k in ("val_fraction", "seed")})
    return read_table(local, **kwargs)
