"""Image + mask pairs: `ROOT/{train,val,test}/{images,masks}/` (or `ROOT/{images,masks}/`, split here with a seed),
matching file names (stems), or a parquet/arrow table with image, mask and split columns. A mask is a single-
channel image whose pixel values are class ids (0 = background)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.adaptation.errors import AdaptDataError
from multimeditron.data.images import list_image_files

SPLITS = ("train", "val", "test")


@dataclass
class Pairs:
    images: Sequence[Any]
    masks: Sequence[Any]

    def __len__(self) -> int:
        return len(self.images)


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
        raise AdaptDataError(f"{root}: images/ and masks/ must hold the same names; unmatched: {unmatched[:5]}"
                             f"{' ...' if len(unmatched) > 5 else ''} ({len(unmatched)} in all)")
    if not images:
        raise AdaptDataError(f"{root}: images/ holds no image")
    names = sorted(images)
    return Pairs([str(images[n]) for n in names], [str(masks[n]) for n in names])


def _split(pairs: Pairs, seed: int, fractions: tuple[float, float] = (0.15, 0.15)) -> dict[str, Pairs]:
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val, n_test = (max(1, round(f * len(pairs))) if f else 0 for f in fractions)
    if len(pairs) < n_val + n_test + 1:
        raise AdaptDataError(f"{len(pairs)} image/mask pairs are too few to carve val and test splits")
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {s: Pairs([pairs.images[i] for i in sorted(r)], [pairs.masks[i] for i in sorted(r)])
            for s, r in parts.items()}


def load_segmentation_data(path: str | Path, image_column: str = "image", mask_column: str = "mask",
                           split_column: str = "split", seed: int = 0) -> SegmentationData:
    root = Path(path)
    if not root.exists():
        raise AdaptDataError(f"no such data: {path}")
    if root.is_dir() and all((root / s / "images").is_dir() for s in ("train", "test")):
        splits = {s: _folder_pairs(root / s) for s in SPLITS if (root / s / "images").is_dir()}
        if "val" not in splits:
            carved = _split(splits["train"], seed, (0.2, 0.0))
            splits["train"], splits["val"] = carved["train"], carved["val"]
        return SegmentationData(str(root), splits, root)
    if root.is_dir() and (root / "images").is_dir():
        return SegmentationData(str(root), _split(_folder_pairs(root), seed), root)
    return _table(root, image_column, mask_column, split_column)


def _table(root: Path, image_column: str, mask_column: str, split_column: str) -> SegmentationData:
    import datasets

    from multimeditron.adaptation.images import _RowImages
    from multimeditron.config import DatasetEntry
    from multimeditron.data.report import DataError
    from multimeditron.data.sources import load_source

    try:
        source = load_source(DatasetEntry(str(root)), "train")
    except DataError as error:
        raise AdaptDataError(f"{root}: expected {{train,val,test}}/{{images,masks}}/ folders, images/ + masks/, or "
                             f"a table ({error})") from error
    table = source.dataset
    for column in (image_column, mask_column, split_column):
        if column not in table.column_names:
            raise AdaptDataError(f"{root}: no column {column!r}; its columns: {table.column_names}")
    for column in (image_column, mask_column):
        if isinstance(table.features.get(column), datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
    names = np.array([str(s).lower().replace("validation", "val") for s in table[split_column]])
    splits = {}
    for split in SPLITS:
        rows = [(int(i), None) for i in np.flatnonzero(names == split)]
        if not rows:
            raise AdaptDataError(f"{root}: no row with {split_column} == {split!r}")
        splits[split] = Pairs(_RowImages(table, image_column, rows), _RowImages(table, mask_column, rows))
    return SegmentationData(str(root), splits, source.folder)
