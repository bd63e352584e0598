"""Synthetic labelled images for the probing tests: a two-class task a linear reader separates (brightness of a
noisy image), written as a RETFound-style folder or as a parquet table."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def draw(label: int, rng: np.random.Generator, size: int = 24, contrast: float = 0.4) -> Image.Image:
    """Class 0: a darker noisy image; class 1: a brighter one (a linear function of the pixels tells them apart;
    a small `contrast` between the two levels makes the task harder)."""
    level = 0.5 + (contrast / 2 if label else -contrast / 2)
    pixels = np.clip(level + rng.normal(0, 0.12, (size, size, 3)), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")


def write_folder(root: Path, counts: dict[str, int], seed: int = 0, classes: tuple[str, ...] = ("normal", "lesion"),
                 contrast: float = 0.4) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(label, rng, contrast=contrast).save(folder / f"{i:03d}.png")
    return root


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_study_table(path: Path) -> Path:
    """A parquet table of 3 slices per study (train 6 / val 2 / test 3 studies) and two 0/1 label columns,
    `effusion` (brightness; alternating studies) and `nodule` (every other pair of studies)."""
    import datasets

    rng = np.random.default_rng(0)
    rows = []
    for split, n_studies in (("train", 6), ("val", 2), ("test", 3)):
        for s in range(n_studies):
            effusion, nodule = s % 2, (s // 2) % 2
            for _ in range(3):  # three slices per study
                rows.append({"image": {"bytes": png_bytes(draw(effusion, rng, 16)), "path": None}, "split": split,
                             "study": f"{split}-{s}", "effusion": effusion, "nodule": nodule})
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 24 / val 8 / test 16 images per class."""
    return write_folder(tmp_path_factory.mktemp("probe") / "images", {"train": 24, "val": 8, "test": 16})
