"""Labelled image sets, the data of `probe` and `finetune` (and the quickstart's warm-up): a
`train|val|test/<class>/` folder (RETFound's layout) or an Arrow/parquet table, read as train, val and test splits.

A table has an image column, one label column (multi-class) or several 0/1 label columns (multi-label), a `split`
column (or is a `save_to_disk` DatasetDict), and optionally `study` / `patient` columns that group images (slices
of a 3D study, views of one patient) so that they are embedded one by one and scored as one case. Split names and
their aliases, and the carving of a val split when the data has none, are `multimeditron.data.splits`'s.

Loading also checks what would make a run meaningless: unreadable files (`multimeditron.data.bad_images`: refused,
or left out and listed under `on_bad_image: skip`), a single class, a class (or a label's value) that train lacks,
and a patient or study in two splits (unless `allow_overlap`); a class that val or test lacks is noted.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.data.bad_images import BadImagePolicy, ImageScreen, refused_summary
from multimeditron.data.images import (
    IMAGE_EXTENSIONS,
    images_fingerprint,
    list_image_files,
)
from multimeditron.data.splits import (
    SPLITS,
    ImageDataError,
    TableImages,
    canonical_split,
    carve_validation,
    split_column_rows,
    split_folders,
    split_names_message,
    take_rows,
)

GROUP_COLUMNS = ("study", "patient")  # a study (3D volume) is the finer unit when both are present
OVERLAP_FLAG = "--allow-overlap (data.allow_overlap: true)"


@dataclass
class LabelledSplit:
    images: Sequence[Any]  # stored image values (paths or {bytes, path}) for `ImageResolver.load`
    labels: np.ndarray  # (n,) class ids, or (n, C) 0/1 for multi-label
    groups: np.ndarray | None = None  # (n,) study/patient id of each image, or None
    patients: np.ndarray | None = None  # (n,) patient id when the table has a `patient` column (the leak unit)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> LabelledSplit:
        pick = (lambda a: a[rows] if a is not None else None)
        return LabelledSplit(take_rows(self.images, rows), self.labels[rows], pick(self.groups), pick(self.patients))

    @property
    def units(self) -> np.ndarray | None:
        """What must not be split between train, val and test: the patient, else the study."""
        return self.patients if self.patients is not None else self.groups


@dataclass
class LabelledImages:
    name: str
    classes: list[str]
    multilabel: bool
    splits: dict[str, LabelledSplit]
    folder: Path | None = None  # relative image paths resolve against it
    group_kind: str | None = None  # "study" or "patient" when images are grouped
    notes: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # files left out under on_bad_image: skip
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    def fingerprint(self, split: str) -> str:
        """A digest of the split's images (file path, size and modification time, or the stored bytes)."""
        if split not in self._fingerprints:
            self._fingerprints[split] = images_fingerprint(self.splits[split].images, folder=self.folder)
        return self._fingerprints[split]


def _finish(name: str, classes: list[str], multilabel: bool, parts: dict[str, LabelledSplit], folder: Path | None,
            group_kind: str | None, notes: list[str], val_fraction: float, seed: int,
            on_bad_image: BadImagePolicy = "error", allow_overlap: bool = False) -> LabelledImages:
    screen = ImageScreen(folder, on_bad_image)
    for split, part in list(parts.items()):
        kept = screen.rows(split, part.images)
        if len(kept) != len(part):
            parts[split] = part.take(kept)
    refused = screen.finish(name)
    if refused:
        notes.append(refused_summary(refused))
    for required in ("train", "test"):
        if required not in parts or len(parts[required]) == 0:
            raise ImageDataError(f"{name}: no {required} split (found: {sorted(parts) or 'none'}; split names: "
                                 f"{split_names_message()})")
    if "val" not in parts or len(parts["val"]) == 0:
        train = parts["train"]
        keep, val = carve_validation(len(train), val_fraction, seed, train.labels, train.units)
        parts["val"], parts["train"] = train.take(val), train.take(keep)
        unit = ("patients" if train.patients is not None else f"{group_kind}s") if group_kind else "images"
        notes.append(f"no val split: carved {len(val)} of {len(keep) + len(val)} train images "
                     f"({val_fraction:.0%} of the {unit}, seed {seed})")
    splits = {s: parts[s] for s in SPLITS}
    notes += _check_classes(name, classes, multilabel, splits)
    notes += _check_overlap(name, splits, allow_overlap)
    return LabelledImages(name, classes, multilabel, splits, folder, group_kind, notes, refused)


def _check_classes(name: str, classes: list[str], multilabel: bool, splits: dict[str, LabelledSplit]) -> list[str]:
    """Refuses data a classifier cannot learn (one class; a class, or a label's value, train lacks); the notes name
    the classes that val or test lacks (their metrics are undefined or partial there)."""
    if not multilabel and len(classes) < 2:
        raise ImageDataError(f"{name}: one class only ({', '.join(classes) or 'none'}); a classifier needs at least "
                             f"two (ROOT/<split>/<class>/ folders, or the label column's values)")
    notes = []
    for split in SPLITS:
        labels = splits[split].labels
        if multilabel:
            lacking = [f"{c} (all {int(labels[0, j])})" for j, c in enumerate(classes)
                       if len(labels) and len(np.unique(labels[:, j])) < 2]
        else:
            present = set(np.unique(labels).tolist())
            lacking = [c for i, c in enumerate(classes) if i not in present]
        if not lacking:
            continue
        what = "label(s) with one value" if multilabel else "class(es) without an image"
        if split == "train":
            seen = sorted({s for s in SPLITS[1:] for c in lacking
                           if not multilabel and classes.index(c) in set(splits[s].labels.tolist())})
            raise ImageDataError(f"{name}: train has {what}: {', '.join(lacking)}"
                                 + (f" (found only in {', '.join(seen)})" if seen else "")
                                 + "; a classifier cannot learn them: add train images or remove them")
        notes.append(f"{split} has {what}: {', '.join(lacking)} (their {split} metrics are undefined)")
    return notes


def _check_overlap(name: str, splits: dict[str, LabelledSplit], allow: bool) -> list[str]:
    """A patient (or study) with images in two splits leaks between them: refused unless `allow`."""
    units = {s: splits[s].units for s in SPLITS}
    if any(u is None for u in units.values()):
        return []
    kind = "patient" if splits["train"].patients is not None else "study"
    shared = [(a, b, sorted(set(units[a].tolist()) & set(units[b].tolist())))
              for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]]
    shared = [(a, b, ids) for a, b, ids in shared if ids]
    if not shared:
        return []
    text = "; ".join(f"{len(ids)} in {a} and {b} (e.g. {ids[0]!r})" for a, b, ids in shared)
    if not allow:
        raise ImageDataError(f"{name}: {kind}s appear in two splits: {text}; their images would leak from train "
                             f"into the scores. Fix the split, or allow it with {OVERLAP_FLAG}")
    return [f"{kind}s in two splits (allowed by data.allow_overlap): {text}"]


def scan_image_folder(root: str | Path, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                      ) -> tuple[list[str], dict[str, list[tuple[Path, str]]], list[str]]:
    """`ROOT/<split>/<class>/<image>`: the classes (sorted union over splits), each split folder's `(image, class)`
    pairs in a stable order (keyed by the folder's own name: `validation`, `dev`, ...; `canonical_split` maps it),
    and notes about files that were ignored. Hidden files and files whose suffix is not in `extensions` are skipped;
    the image paths are absolute (`list_image_files`)."""
    base = Path(root).expanduser().absolute()
    if not base.is_dir():
        raise ImageDataError(f"no such folder: {base}")
    folders = split_folders(base)
    if not folders:
        raise ImageDataError(f"{base} has none of the split folders {split_names_message()} "
                             "(expected ROOT/<split>/<class>/<image>)")
    notes: list[str] = []
    classes: set[str] = set()
    items: dict[str, list[tuple[Path, str]]] = {}
    for folder in folders.values():
        split = folder.name
        entries = sorted(folder.iterdir())
        stray = [e for e in entries if e.is_file() and not e.name.startswith(".")]
        if stray:
            notes.append(f"ignored {len(stray)} files directly under {split}/ (images belong in {split}/<class>/)")
        items[split] = []
        for class_dir in (e for e in entries if e.is_dir() and not e.name.startswith(".")):
            classes.add(class_dir.name)
            items[split].extend((path, class_dir.name) for path in list_image_files(class_dir, extensions=extensions))
    return sorted(classes), items, notes


def read_labelled_folder(root: str | Path, val_fraction: float = 0.2, seed: int = 0,
                         on_bad_image: BadImagePolicy = "error", allow_overlap: bool = False) -> LabelledImages:
    """RETFound's layout: ROOT/{train,val,test}/<class>/<image> (PNG, JPEG, TIFF, ..., DICOM); `valid/`,
    `validation/` or `dev/` hold val."""
    classes, items, notes = scan_image_folder(root)
    index = {name: i for i, name in enumerate(classes)}
    parts = {}
    for split, pairs in items.items():
        parts[canonical_split(split)] = LabelledSplit([str(path) for path, _ in pairs],
                                                      np.array([index[c] for _, c in pairs], dtype=np.int64))
    return _finish(str(root), classes, False, parts, Path(root), None, notes, val_fraction, seed, on_bad_image,
                   allow_overlap)


def read_labelled_table(path: str | Path, image_column: str | None = None, label_columns: Sequence[str] = (),
                        split_column: str = "split", val_fraction: float = 0.2, seed: int = 0,
                        on_bad_image: BadImagePolicy = "error", allow_overlap: bool = False) -> LabelledImages:
    """A parquet/arrow file or folder, or a `save_to_disk` Dataset/DatasetDict, as labelled splits."""
    import datasets

    from multimeditron.data.report import DataError
    from multimeditron.data.sources import DatasetEntry, load_source, split_names

    local = Path(path)
    try:
        names = split_names(local)
        if names:
            tables = {n: load_source(DatasetEntry(str(local), split=n), n).dataset for n in names}
        else:
            tables = {None: load_source(DatasetEntry(str(local)), "train").dataset}
    except DataError as error:
        raise ImageDataError(str(error)) from error
    first = next(iter(tables.values()))
    columns = list(first.column_names)
    image_column = image_column or _guess_image_column(first, str(path))
    labels = list(label_columns) or [c for c in ("label", "labels") if c in columns][:1]
    for column in [image_column, *labels]:
        if column not in columns:
            raise ImageDataError(f"{path}: no column {column!r}; its columns: {columns}")
    if not labels:
        raise ImageDataError(f"{path}: name the label column(s) (no `label` column); its columns: {columns}")
    group_kind = next((c for c in GROUP_COLUMNS if c in columns), None)
    multilabel = len(labels) > 1
    if not multilabel:
        values = sorted({v for t in tables.values() for v in t[labels[0]] if v is not None}, key=_class_order)
        classes = [str(v) for v in values]
    else:
        classes = list(labels)
    notes = [f"images grouped by `{group_kind}`: one embedding per {group_kind} (mean of its images)"] \
        if group_kind else []
    parts: dict[str, LabelledSplit] = {}
    for table_split, table in tables.items():
        if isinstance(table.features.get(image_column), datasets.Image):
            table = table.cast_column(image_column, datasets.Image(decode=False))
        y = _labels(table, labels, classes, multilabel, str(path))
        groups = np.array([str(g) for g in table[group_kind]]) if group_kind else None
        patients = np.array([str(g) for g in table["patient"]]) if "patient" in columns else None
        if table_split is not None:
            split = canonical_split(table_split)
            if split is None:
                raise ImageDataError(f"{path}: split {table_split!r} is not one of {split_names_message()}")
            if split in parts:
                raise ImageDataError(f"{path}: two splits name the {split} split; keep one")
            row_splits = {split: np.arange(len(table))}
        elif split_column in columns:
            row_splits = split_column_rows(table[split_column], split_column, str(path))
        else:
            raise ImageDataError(f"{path}: no {split_column!r} column and no DatasetDict splits; say which rows are "
                                 f"train, val and test")
        for split, rows in row_splits.items():
            parts[split] = LabelledSplit(TableImages(table, image_column, rows), y[rows],
                                         groups[rows] if groups is not None else None,
                                         patients[rows] if patients is not None else None)
    folder = local if local.is_dir() else local.parent
    return _finish(str(path), classes, multilabel, parts, folder, group_kind, notes, val_fraction, seed, on_bad_image,
                   allow_overlap)


def _class_order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float, bool, np.integer)) else (1, str(value))


def _guess_image_column(table: Any, where: str) -> str:
    import datasets

    if "image" in table.column_names:
        return "image"
    typed = [c for c, f in table.features.items() if isinstance(f, datasets.Image)]
    if len(typed) == 1:
        return typed[0]
    raise ImageDataError(f"{where}: name the image column (--image-column); its columns: {table.column_names}")


def _labels(table: Any, columns: list[str], classes: list[str], multilabel: bool, where: str) -> np.ndarray:
    if not multilabel:
        index = {name: i for i, name in enumerate(classes)}
        values = table[columns[0]]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise ImageDataError(f"{where}: row {missing[0]} has no label in {columns[0]!r} ({len(missing)} rows)")
        return np.array([index[str(v)] for v in values], dtype=np.int64)
    matrix = np.zeros((len(table), len(columns)), dtype=np.int64)
    for j, column in enumerate(columns):
        values = table[column]
        for i, v in enumerate(values):
            if v not in (0, 1, True, False):
                raise ImageDataError(f"{where}: row {i}, column {column!r}: a multi-label column holds 0/1, got {v!r}")
        matrix[:, j] = np.asarray(values, dtype=np.int64)
    return matrix


def load_labelled_images(path: str | Path, **kwargs: Any) -> LabelledImages:
    """An image folder (split sub-folders, `train/` or `test/` among them) or a table, whichever `path` is;
    `kwargs` are `read_labelled_table`'s (a folder takes only `val_fraction` and `seed`)."""
    local = Path(path)
    if not local.exists():
        raise ImageDataError(f"no such data: {path}")
    if local.is_dir() and not (local / "dataset_dict.json").is_file() \
            and {"train", "test"} & set(split_folders(local)):
        return read_labelled_folder(local, **{k: v for k, v in kwargs.items()
                                              if k in ("val_fraction", "seed", "on_bad_image", "allow_overlap")})
    return read_labelled_table(local, **kwargs)


__all__ = ["GROUP_COLUMNS", "LabelledImages", "LabelledSplit", "load_labelled_images", "read_labelled_folder",
           "read_labelled_table", "scan_image_folder"]
