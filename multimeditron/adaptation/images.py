"""Image sets for adaptation: unlabelled images (any folder of images, or any table of the project's formats) and
a dataset that decodes them into canvases at the expert's input size, with the light augmentation fine-tuning uses.

Decoding and the canvas are part 1's (`multimeditron.probing.embed.ImageCanvases`: the project's decoder, the
model's canvas), so an adapted expert sees what it will see inside a VLM.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from multimeditron.adaptation.errors import AdaptDataError
from multimeditron.data.bad_images import BadImagePolicy, ImageScreen, refused_summary
from multimeditron.data.images import images_fingerprint, list_image_files
from multimeditron.data.splits import take_rows
from multimeditron.probing.embed import ImageCanvases


class _RowImages(Sequence):
    """Image values `(row, position)` of a `datasets.Dataset` column, read one at a time (no copy of the bytes)."""

    def __init__(self, dataset: Any, column: str, index: list[tuple[int, int | None]]) -> None:
        self.dataset, self.column, self.index = dataset, column, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        row, position = self.index[i]
        value = self.dataset[row][self.column]
        return value if position is None else value[position]["value"]


class FirstImages(Sequence):
    """The first image of each value that is a MultiMediset `modalities` list (a gate, a caption pair: one image
    per row); other values pass through."""

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        value = self.values[index]
        if isinstance(value, list):
            images = [m for m in value if not isinstance(m, dict) or m.get("type", "image") == "image"]
            if not images:
                raise AdaptDataError(f"row {index}: its `modalities` list holds no image")
            return images[0]
        return value


def unlabelled_images(path: str | Path, image_column: str | None = None) -> tuple[Sequence[Any], Path]:
    """Every image under `path`: image files anywhere below a folder (a `train|val|test/<class>/` layout included),
    or the images of a parquet/arrow/save_to_disk table (its `image` column, or each row's `modalities` images in
    the MultiMediset schema). Returns the image values and the folder relative paths resolve against."""
    root = Path(path)
    if not root.exists():
        raise AdaptDataError(f"no such data: {path}")
    if root.is_dir() and not any((root / m).is_file() for m in ("state.json", "dataset_dict.json")):
        files = list_image_files(root)
        if files:
            return [str(p) for p in files], root
    return _table_images(root, image_column)


@dataclass
class UnlabelledImages:
    images: Sequence[Any]
    folder: Path
    refused: list[dict[str, Any]] = field(default_factory=list)  # files left out under on_bad_image: skip
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        return images_fingerprint(self.images, folder=self.folder)


def load_unlabelled_images(path: str | Path, image_column: str | None = None,
                           on_bad_image: BadImagePolicy = "error") -> UnlabelledImages:
    """`unlabelled_images`, every file checked by the one policy of `data.bad_images`."""
    images, folder = unlabelled_images(path, image_column)
    screen = ImageScreen(folder, on_bad_image)
    kept = screen.rows("train", images)
    refused = screen.finish(str(path))
    if len(kept) != len(images):
        if not len(kept):
            raise AdaptDataError(f"{path}: none of its {len(images)} files can be read as an image")
        images = (_RowImages(images.dataset, images.column, [images.index[i] for i in kept])
                  if isinstance(images, _RowImages) else take_rows(images, kept))
    return UnlabelledImages(images, folder, refused, [refused_summary(refused)] if refused else [])


def _table_images(root: Path, image_column: str | None) -> tuple[Sequence[Any], Path]:
    import datasets
    import pyarrow.compute as pc

    from multimeditron.config import DatasetEntry
    from multimeditron.data.report import DataError
    from multimeditron.data.sources import load_source

    try:
        source = load_source(DatasetEntry(str(root)), "train")
    except DataError as error:
        raise AdaptDataError(f"{root}: neither a folder with images nor a readable table ({error})") from error
    table = source.dataset
    folder = source.folder or (root if root.is_dir() else root.parent)
    columns = table.column_names
    column = image_column or ("image" if "image" in columns else "modalities" if "modalities" in columns else None)
    if column is None or column not in columns:
        raise AdaptDataError(f"{root}: no image column {image_column or 'image'!r} and no `modalities` column; its "
                             f"columns: {columns}")
    if column != "modalities":
        if isinstance(table.features.get(column), datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
        return _RowImages(table, column, [(i, None) for i in range(len(table))]), folder
    # MultiMediset: only the lengths of the lists are read up front; image values are read when used.
    types = table.data.column("modalities").combine_chunks().flatten().field("type").to_pylist()
    lengths = pc.list_value_length(table.data.column("modalities")).to_pylist()
    index, flat = [], 0
    for row, n in enumerate(lengths):
        for position in range(n or 0):
            if types[flat] == "image":
                index.append((row, position))
            flat += 1
    if not index:
        raise AdaptDataError(f"{root}: the `modalities` column holds no image")
    return _RowImages(table, column, index), folder


class CanvasDataset(torch.utils.data.Dataset):
    """Image values (+ optional labels) -> {"pixel_values": canvas (3, S, S) in [0, 1], "labels": class id or 0/1
    vector}, the engine's batch keys; `augment` adds a random resized crop (scale 0.5-1) and a horizontal flip.

    Random draws are seeded per sample by (seed, epoch, index) (`engine.sample_seed`; the engine's sampler sets the
    epoch), so they do not depend on the number of processes or workers, and a resumed run repeats them."""

    def __init__(self, images: Sequence[Any], size: int, folder: Path | None = None, labels: Any = None,
                 augment: bool = False, seed: int = 0) -> None:
        self.canvases = ImageCanvases(images, size, folder)
        self.labels, self.augment, self.size, self.seed, self.epoch = labels, augment, size, seed, 0

    def __len__(self) -> int:
        return len(self.canvases)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int, stream: int = 0) -> torch.Generator:
        """This sample's generator in this epoch; each `stream` (augmentation 0, others for subclasses) its own."""
        from multimeditron.adaptation.engine import sample_seed

        return torch.Generator().manual_seed(sample_seed(self.seed + 7_919 * stream, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        canvas = self.canvases[index]
        if self.augment:
            # torchvision's transforms draw from the global generator: fork it, seeded for this sample
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.generator(index).initial_seed()))
                canvas = augment_canvas(canvas, self.size)
        if self.labels is None:
            return {"pixel_values": canvas}
        return {"pixel_values": canvas, "labels": torch.as_tensor(self.labels[index])}


def augment_canvas(canvas: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.transforms import v2

    crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
    return v2.RandomHorizontalFlip()(crop(canvas)).clamp(0.0, 1.0)


def timm_transform(size: int, mean: Sequence[float], std: Sequence[float], settings: Any, train: bool) -> Any:
    """RETFound's transforms (`util/datasets.py::build_transform`) from timm's `create_transform`: training =
    random resized crop (`settings.scale`) + flip + RandAugment + normalise + random erasing; evaluation = resize to
    size / crop_pct (bicubic) + centre crop. `settings` is a `recipes.TimmTransformSection`."""
    from timm.data import create_transform

    if train:
        return create_transform(input_size=size, is_training=True, scale=tuple(settings.scale),
                                color_jitter=settings.color_jitter, auto_augment=settings.auto_augment,
                                interpolation=settings.interpolation, re_prob=settings.re_prob,
                                re_mode=settings.re_mode, re_count=settings.re_count, mean=tuple(mean), std=tuple(std))
    crop_pct = settings.crop_pct if settings.crop_pct is not None else (224 / 256 if size <= 224 else 1.0)
    return create_transform(input_size=size, is_training=False, interpolation=settings.interpolation,
                            crop_pct=crop_pct, mean=tuple(mean), std=tuple(std))


class TimmDataset(CanvasDataset):
    """Image values (+ labels) through a timm transform (`timm_transform`), returned in the canvas's [0, 1] space:
    the transform normalises with the expert's mean/std (so random erasing draws its noise where RETFound's does),
    and the normalisation is undone here because the expert's `preprocess` applies it again (an affine map: the
    expert sees the numbers RETFound's pipeline gives it).

    timm draws from Python's `random` and numpy's global generator: both are seeded per sample by (seed, epoch,
    index) and restored afterwards, as the canvas augmentation does with torch's."""

    def __init__(self, images: Sequence[Any], size: int, mean: Sequence[float], std: Sequence[float],
                 settings: Any, folder: Path | None = None, labels: Any = None, train: bool = False,
                 seed: int = 0) -> None:
        super().__init__(images, size, folder, labels, augment=False, seed=seed)
        self.transform = timm_transform(size, mean, std, settings, train)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import random

        import numpy as np

        image = self.canvases.resolver.load(self.canvases.images[index]).convert("RGB")
        seed = int(self.generator(index).initial_seed())
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pixels = self.transform(image)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        pixels = pixels * self.std + self.mean
        if self.labels is None:
            return {"pixel_values": pixels}
        return {"pixel_values": pixels, "labels": torch.as_tensor(self.labels[index])}
