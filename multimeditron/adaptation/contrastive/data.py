"""Image-caption pairs for contrastive training: MultiMediset caption rows (`text`), conversation rows (the image
and the first assistant turn) or any table, filtered by modality, split into train / val / test, and the dataset the
engine reads (canvas + caption tokens)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimeditron.adaptation.contrastive.recipe import PLACEHOLDERS, CaptionDataSection
from multimeditron.adaptation.errors import AdaptDataError
from multimeditron.adaptation.images import CanvasDataset, FirstImages


@dataclass
class CaptionSplit:
    images: Sequence[Any]
    captions: list[str]
    modalities: list[str | None]
    folders: list[Path | None]  # the folder relative image paths of each pair resolve against
    refused: list[dict[str, Any]] = field(default_factory=list)  # pairs left out under on_bad_image: skip

    def __len__(self) -> int:
        return len(self.captions)

    def fingerprint(self) -> str:
        """A digest of the pairs (each image's identity, `data.images.image_identity`, and its caption)."""
        import hashlib

        from multimeditron.data.images import image_identity

        digest = hashlib.blake2b(digest_size=16)
        for image, caption, folder in zip(self.images, self.captions, self.folders):
            digest.update(image_identity(image, folder) + caption.encode() + b"\0")
        return digest.hexdigest()


def _caption_of(row: dict[str, Any], column: str | None) -> str | None:
    if column is not None:
        text = row.get(column)
    elif row.get("text"):
        text = row["text"]
    else:
        turns = row.get("conversations") or []
        text = next((t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "assistant"), None)
    if not isinstance(text, str):
        return None
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, "")
    return text.strip() or None


def _tables(path: str) -> dict[str | None, Any]:
    from multimeditron.config import DatasetEntry
    from multimeditron.data.report import DataError
    from multimeditron.data.sources import load_source, split_names

    try:
        names = split_names(path)
        if names:
            return {n: load_source(DatasetEntry(path, split=n), n) for n in names}
        return {None: load_source(DatasetEntry(path), "train")}
    except DataError as error:
        raise AdaptDataError(f"data.paths: {path}: {error}") from error


def load_caption_pairs(section: CaptionDataSection, seed: int = 0) -> dict[str, CaptionSplit]:
    """train / val (carved from train when absent) / test image-caption pairs of every dataset, filtered by
    modality; a row without an image or a caption is an error naming it (nothing is dropped silently), and every
    image is checked by `section.on_bad_image` (left-out pairs listed in each split's `refused`)."""
    from multimeditron.data.bad_images import ImageScreen
    from multimeditron.data.splits import TableImages, canonical_split, carve_validation, split_column_rows

    if not section.paths:
        raise AdaptDataError("data.paths: name at least one dataset of image-caption pairs")
    parts: dict[str, dict[str, list]] = {}
    for path in section.paths:
        for table_split, source in _tables(path).items():
            table = source.dataset
            columns = table.column_names
            image_column = section.image_column or ("image" if "image" in columns else "modalities")
            if image_column not in columns:
                raise AdaptDataError(f"{path}: no image column {image_column!r}; its columns: {columns}")
            caption_columns = [c for c in (section.caption_column, "text", "conversations") if c and c in columns]
            if section.caption_column and section.caption_column not in columns or not caption_columns:
                raise AdaptDataError(f"{path}: no caption column {section.caption_column or 'text'!r} and no "
                                     f"`conversations`; its columns: {columns}")
            has_modality = section.modality_column in columns
            if section.modalities and not has_modality:
                raise AdaptDataError(f"data.modalities: {path} has no {section.modality_column!r} column")
            meta = table.select_columns(caption_columns + ([section.modality_column] if has_modality else []))
            if table_split is not None:
                split = canonical_split(table_split)
                row_splits = {split: np.arange(len(table))} if split else {}
            elif section.split_column in columns:
                row_splits = split_column_rows(table[section.split_column], section.split_column, path)
            else:
                row_splits = {"train": np.arange(len(table))}
            for split, rows in row_splits.items():
                rows = rows[:section.max_samples] if section.max_samples else rows
                kept, captions, modalities = [], [], []
                for r in rows.tolist():
                    row = meta[int(r)]
                    modality = row.get(section.modality_column) if has_modality else None
                    if section.modalities and modality not in section.modalities:
                        continue
                    text = _caption_of(row, section.caption_column)
                    if text is None:
                        raise AdaptDataError(f"{path} ({split}) row {r}: no caption (neither `text` nor an "
                                             f"assistant turn)")
                    kept.append(r)
                    captions.append(text)
                    modalities.append(None if modality is None else str(modality))
                part = parts.setdefault(split, {"images": [], "captions": [], "modalities": [], "folders": [],
                                                "refused": []})
                images = FirstImages(TableImages(table, image_column, np.asarray(kept, dtype=np.int64)))
                screen = ImageScreen(source.folder or Path(path), section.on_bad_image)
                good = screen.rows(split, images)
                part["refused"] += screen.finish(f"{path} ({split})")
                if len(good) != len(kept):
                    kept = [kept[i] for i in good]
                    captions, modalities = [captions[i] for i in good], [modalities[i] for i in good]
                    images = FirstImages(TableImages(table, image_column, np.asarray(kept, dtype=np.int64)))
                part["images"].append(images)
                part["captions"] += captions
                part["modalities"] += modalities
                part["folders"] += [source.folder or Path(path)] * len(kept)
    splits = {name: CaptionSplit(_Chained(p["images"]), p["captions"], p["modalities"], p["folders"], p["refused"])
              for name, p in parts.items()}
    if "train" not in splits or not len(splits["train"]):
        raise AdaptDataError(f"data: no training pairs in {section.paths}"
                             + (f" for modalities {section.modalities}" if section.modalities else ""))
    if "val" not in splits:
        train = splits["train"]
        kept, carved = carve_validation(len(train), section.val_fraction, seed)
        splits["val"] = _take(train, carved)
        splits["train"] = _take(train, kept)
        splits["train"].refused = train.refused
    return splits


class _Chained(Sequence):
    """Several image sequences read as one."""

    def __init__(self, parts: list[Sequence[Any]]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


class _Taken(Sequence):
    def __init__(self, values: Sequence[Any], rows: np.ndarray) -> None:
        self.values, self.rows = values, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.values[int(self.rows[index])]


def _take(split: CaptionSplit, rows: np.ndarray) -> CaptionSplit:
    return CaptionSplit(_Taken(split.images, rows), [split.captions[i] for i in rows],
                        [split.modalities[i] for i in rows], [split.folders[i] for i in rows])


class CaptionDataset(CanvasDataset):
    """Pairs -> {"pixel_values": canvas, "input_ids": caption tokens}; captions are tokenized once, up front."""

    def __init__(self, split: CaptionSplit, size: int, tokens: torch.Tensor) -> None:
        folder = split.folders[0] if split.folders and len(set(split.folders)) == 1 else None
        images = split.images if folder is not None or not split.folders else _Resolved(split)
        super().__init__(images, size, folder)
        self.tokens = tokens

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": super().__getitem__(index)["pixel_values"], "input_ids": self.tokens[index],
                "labels": torch.tensor(index)}


class _Resolved(Sequence):
    """Pairs from several datasets: a relative image path made absolute against its own dataset's folder."""

    def __init__(self, split: CaptionSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        value, folder = self.split.images[index], self.split.folders[index]
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        if isinstance(value, dict) and not value.get("bytes") and value.get("path") and folder is not None:
            return {"bytes": None, "path": str(Path(folder) / value["path"])}
        return value
