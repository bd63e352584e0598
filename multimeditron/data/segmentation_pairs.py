"""Image + mask pairs, the data of `segment`: `ROOT/{train,val,test}/{images,masks}/` (or `ROOT/{images,masks}/`,
split here with a seed), matching file names (stems), or a parquet/arrow table with image, mask and split columns.

A mask is a single-channel image of class ids (0 = background; a palette PNG's indices are ids, as VOC's), the size
of its image. Pixels equal to `ignore_index` (default 255, VOC's "ignore") are left out of the loss and the metrics.
Masks holding only 0 and 255 everywhere are black/white masks: 255 is class 1. An RGB colour mask needs `palette`
(the colour of class i at position i). Every mask is read and checked when the pairs are loaded (size, colours, ids
within the declared classes), before anything heavy runs; unreadable files follow `on_bad_image`
(`multimeditron.data.bad_images`).

Split names and their aliases (`valid`, `validation`, `dev` = val) and the carving of a missing val split are
`multimeditron.data.splits`'s, shared with the labelled image sets.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multimeditron.data.bad_images import (
    BadImagePolicy,
    ImageScreen,
    image_name,
    refused_summary,
    undecodable,
)
from multimeditron.data.images import ImageResolver, list_image_files
from multimeditron.data.report import BadSample
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
IGNORE_INDEX = 255  # VOC's "ignore" (object boundaries, unlabelled pixels)
LISTED = 5  # masks named in an error message


@dataclass
class Pairs:
    images: Sequence[Any]
    masks: Sequence[Any]

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: np.ndarray) -> Pairs:
        return Pairs(take_rows(self.images, rows), take_rows(self.masks, rows))


@dataclass(frozen=True)
class MaskRules:
    """How mask pixels become class ids (see the module docstring); `black_white` is decided from the masks."""
    ignore_index: int | None = IGNORE_INDEX
    palette: tuple[tuple[int, int, int], ...] | None = None
    black_white: bool = False


@dataclass
class SegmentationData:
    name: str
    splits: dict[str, Pairs]
    folder: Path | None
    rules: MaskRules = field(default_factory=MaskRules)
    num_classes: int | None = None  # set by `check_masks`: declared, or the largest train id + 1
    pixels: dict[str, list[int]] = field(default_factory=dict)  # split -> pixels per class id (ignored left out)
    refused: list[dict[str, Any]] = field(default_factory=list)  # files left out under on_bad_image: skip
    notes: list[str] = field(default_factory=list)

    def read_mask(self, value: Any, index: int = 0) -> np.ndarray:
        """One mask at its own resolution as class ids (H, W) int64 (`ignore_index` kept as it is)."""
        return read_mask(ImageResolver(default_dir=self.folder), value, self.rules, index)


def _mask_array(resolver: ImageResolver, value: Any, index: int) -> np.ndarray:
    """The stored pixels of a mask: (H, W) for one channel or a palette PNG (its indices), (H, W, 3) for colour."""
    try:
        data, path = resolver.locate(value)
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "LA", "PA"):
                array = np.asarray(image.convert("RGB"))
                return array[..., 0] if (array == array[..., :1]).all() else array  # grey stored as RGB
            if image.mode == "1":
                return np.asarray(image, dtype=np.uint8)
            return np.asarray(image)
    except BadSample as error:
        raise undecodable(value, index, error) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise undecodable(value, index, BadSample("corrupt_image", str(error))) from error


def mask_ids(array: np.ndarray, value: Any, index: int, rules: MaskRules) -> np.ndarray:
    """Stored mask pixels as ids: one channel as they are, colour through the palette (refused without one)."""
    if array.ndim == 3:
        if rules.palette is None:
            raise ImageDataError(f"{image_name(value, index)}: an RGB colour mask; masks hold class ids (one "
                                 f"channel, 0 = background). Give the colour of each class with data.palette: "
                                 f"[[0, 0, 0], [R, G, B], ...] (position = class id)")
        return _palette_ids(array, rules.palette, image_name(value, index))
    return array.astype(np.int64)


def read_mask(resolver: ImageResolver, value: Any, rules: MaskRules, index: int = 0) -> np.ndarray:
    """A mask -> class ids (H, W) int64 at its own resolution, by `rules`."""
    ids = mask_ids(_mask_array(resolver, value, index), value, index, rules)
    return (ids == 255).astype(np.int64) if rules.black_white else ids


def _palette_ids(array: np.ndarray, palette: tuple[tuple[int, int, int], ...], where: str) -> np.ndarray:
    codes = (array[..., 0].astype(np.int64) << 16) | (array[..., 1].astype(np.int64) << 8) | array[..., 2]
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    values, inverse = np.unique(codes, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in lookup]
    if unknown:
        shown = ", ".join(str([(v >> 16) & 255, (v >> 8) & 255, v & 255]) for v in unknown[:4])
        raise ImageDataError(f"{where}: colour(s) {shown} are not in data.palette ({len(palette)} colours)")
    return np.array([lookup[v] for v in values.tolist()], dtype=np.int64)[inverse].reshape(codes.shape)


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


def _screened(name: str, splits: dict[str, Pairs], folder: Path | None,
              on_bad_image: BadImagePolicy) -> tuple[dict[str, Pairs], list[dict[str, Any]]]:
    """The pairs whose image and mask files both pass the check (`bad_images`), and the refused files."""
    screen = ImageScreen(folder, on_bad_image)
    kept = {}
    for split, pairs in splits.items():
        rows = screen.rows(split, pairs.images, pairs.masks)
        kept[split] = pairs if len(rows) == len(pairs) else pairs.take(rows)
    return kept, screen.finish(name)


def _finish(name: str, splits: dict[str, Pairs], folder: Path | None, seed: int) -> dict[str, Pairs]:
    for required in ("train", "test"):
        if required not in splits or not len(splits[required]):
            raise ImageDataError(f"{name}: no {required} split (found: {sorted(splits) or 'none'}; split names: "
                                 f"{split_names_message()})")
    if "val" not in splits or not len(splits["val"]):
        splits["train"], splits["val"] = _carve(splits["train"], VAL_FRACTION, seed)
    return {s: splits[s] for s in SPLITS}


def load_segmentation_pairs(path: str | Path, image_column: str = "image", mask_column: str = "mask",
                            split_column: str = "split", seed: int = 0, on_bad_image: BadImagePolicy = "error",
                            ignore_index: int | None = IGNORE_INDEX, palette: Sequence[Sequence[int]] | None = None,
                            num_classes: int | None = None) -> SegmentationData:
    """Image + mask pairs in train, val and test, from whichever layout `path` has (see the module docstring),
    every file checked and every mask validated (`check_masks`)."""
    root = Path(path)
    if not root.exists():
        raise ImageDataError(f"no such data: {path}")
    folders = split_folders(root, has="images") if root.is_dir() else {}
    if {"train", "test"} & set(folders):
        found, folder = {s: _folder_pairs(f) for s, f in folders.items()}, root
    elif root.is_dir() and (root / "images").is_dir():
        found, folder = {"all": _folder_pairs(root)}, root
    else:
        found, folder = _table(root, image_column, mask_column, split_column)
    found, refused = _screened(str(root), found, folder, on_bad_image)
    if "all" in found:  # no split at all: carved here, seeded
        if not len(found["all"]):
            raise ImageDataError(f"{root}: no readable image + mask pair")
        rest, test = _carve(found.pop("all"), UNSPLIT_FRACTIONS[0], seed)
        train, val = _carve(rest, UNSPLIT_FRACTIONS[1], seed)
        found = {"train": train, "val": val, "test": test}
    data = SegmentationData(str(root), _finish(str(root), found, folder, seed), folder, refused=refused,
                            notes=[refused_summary(refused)] if refused else [])
    rules = MaskRules(ignore_index, tuple(tuple(int(v) for v in c) for c in palette) if palette else None)
    return check_masks(data, rules, num_classes)


LOSSY_SUFFIXES = (".jpg", ".jpeg")


def _lossy_hint(data: SegmentationData) -> str:
    """The likely cause when JPEG masks hold stray ids: lossy compression blurs every edge into other values."""
    lossy = [image_name(m, i) for pairs in data.splits.values() for i, m in enumerate(pairs.masks)
             if image_name(m, i).lower().endswith(LOSSY_SUFFIXES)]
    return (f". {len(lossy)} mask(s) are JPEG (e.g. {lossy[0]}): JPEG compression turns the edges of a mask into "
            f"ids in between; save masks losslessly (PNG)") if lossy else ""


def check_masks(data: SegmentationData, rules: MaskRules, num_classes: int | None = None) -> SegmentationData:
    """Reads every mask once: each the size of its image, colour masks only with a palette, ids within the classes
    (`num_classes`, or the largest train id + 1, which must not leave most ids unused); sets the data's rules
    (black/white masks found here), class count and pixels per class."""
    resolver = ImageResolver(default_dir=data.folder)
    if rules.palette is not None and len(rules.palette) < 2:
        raise ImageDataError("data.palette: give at least two colours (background first)")
    values: dict[str, list[np.ndarray]] = {}
    wrong_size: list[str] = []
    for split, pairs in data.splits.items():
        values[split] = []
        for i in range(len(pairs)):
            ids = mask_ids(_mask_array(resolver, pairs.masks[i], i), pairs.masks[i], i, rules)
            width, height = resolver.check(pairs.images[i])
            if ids.shape != (height, width):
                wrong_size.append(f"{image_name(pairs.masks[i], i)} is {ids.shape[1]}x{ids.shape[0]}, its image "
                                  f"{width}x{height}")
            values[split].append(np.unique(ids, return_counts=True))
    if wrong_size:
        raise ImageDataError(f"{data.name}: {len(wrong_size)} mask(s) differ in size from their image: "
                             + "; ".join(wrong_size[:LISTED]) + ("; ..." if len(wrong_size) > LISTED else "")
                             + " (a mask holds one class id per pixel of its image)")
    seen = {int(v) for split in values.values() for ids, _ in split for v in ids.tolist()}
    if rules.palette is None and 255 in seen and seen <= {0, 255}:
        rules = MaskRules(rules.ignore_index, None, black_white=True)
        data.notes.append("masks hold only 0 and 255: black/white masks, 255 = class 1")
    ignore = None if rules.black_white else rules.ignore_index

    def counted(split: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for ids, counts in values[split]:
            for v, c in zip(ids.tolist(), counts.tolist()):
                v = 1 if rules.black_white and v == 255 else v
                if v != ignore:
                    out[v] = out.get(v, 0) + c
        return out

    per_split = {split: counted(split) for split in values}
    train_ids = sorted(per_split["train"])
    if num_classes is None:
        num_classes = (max(train_ids) + 1) if train_ids else 0
        if num_classes > 2 and len(train_ids) <= num_classes // 2:
            raise ImageDataError(f"{data.name}: the train masks hold the ids {train_ids[:12]}"
                                 f"{' ...' if len(train_ids) > 12 else ''}, which leaves most of 0..{num_classes - 1} "
                                 f"unused: declare the classes with --num-classes (segment.num_classes), set the id "
                                 f"of unlabelled pixels with data.ignore_index, or give data.palette for colour masks"
                                 + _lossy_hint(data))
    if num_classes < 2 or set(train_ids) <= {0}:
        raise ImageDataError(f"{data.name}: the train masks hold only class 0 (background); nothing to segment")
    for split, counts in per_split.items():
        beyond = sorted(v for v in counts if not 0 <= v < num_classes)
        if beyond:
            files = [image_name(data.splits[split].masks[i], i) for i, (ids, _) in enumerate(values[split])
                     if any(v in beyond for v in ids.tolist())]
            raise ImageDataError(f"{data.name}: {split} masks hold class id(s) {beyond[:8]} outside the {num_classes} "
                                 f"classes 0..{num_classes - 1} (e.g. {files[0]}); "
                                 + (f"pixels to leave out must equal data.ignore_index ({ignore}), or "
                                    if ignore is not None else "set data.ignore_index for unlabelled pixels, or ")
                                 + "declare more classes with --num-classes" + _lossy_hint(data))
    data.rules, data.num_classes = rules, num_classes
    data.pixels = {split: [counts.get(c, 0) for c in range(num_classes)] for split, counts in per_split.items()}
    return data


def _table(root: Path, image_column: str, mask_column: str, split_column: str,
           ) -> tuple[dict[str, Pairs], Path | None]:
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
    return splits, source.folder


__all__ = ["IGNORE_INDEX", "MaskRules", "Pairs", "SegmentationData", "check_masks", "load_segmentation_pairs",
           "mask_ids", "read_mask"]
