"""Drawn image-caption pairs for the mixture's parts: the quickstart's X-ray / fundus / histology images as
MultiMediset caption rows (`modalities` + `text`) with a `modality` column and train/val/test splits, which
`train-gate` (label column `modality`) and `train-expert --objective clip` (captions) both read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from multimeditron.data.synthetic import FINDINGS, MAX_COUNT, MODALITIES, check_split_sizes, draw_image, png_bytes

SPLIT_NAMES = ("train", "val", "test")
MODALITY_NAMES = {"x-ray": "chest x-ray", "fundus": "fundus photograph", "histology": "histology slide"}


def caption_features() -> Features:
    return Features({"modalities": [{"type": Value("string"), "value": {"bytes": Value("binary"),
                                                                        "path": Value("string")}}],
                     "text": Value("string"), "modality": Value("string")})


def caption(modality: str, count: int) -> str:
    """What the image shows, in words: its modality and how many findings it has."""
    finding = FINDINGS[modality]
    if count == 0:
        return f"A {MODALITY_NAMES[modality]} with no abnormal finding."
    noun = finding.singular if count == 1 else finding.plural
    return f"A {MODALITY_NAMES[modality]} with {count} {noun} {finding.where}."


def generate_caption_split(rng: np.random.Generator, num_rows: int, image_size: int = 64,
                           modalities: tuple[str, ...] = MODALITIES) -> Dataset:
    """`num_rows` rows, modality and finding count round-robin (balanced), then shuffled."""
    rows = []
    for j in range(num_rows):
        modality, count = modalities[j % len(modalities)], (j // len(modalities)) % (MAX_COUNT + 1)
        side = str(rng.choice(("left", "right"))) if count else None
        image = draw_image(rng, modality, count, side, image_size)
        rows.append({"modalities": [{"type": "image", "value": {"bytes": png_bytes(image), "path": None}}],
                     "text": caption(modality, count), "modality": modality})
    rows = [rows[k] for k in rng.permutation(num_rows)]
    schema = caption_features()
    return Dataset.from_dict({name: [row[name] for row in rows] for name in schema}, features=schema)


def generate_caption_images(out_dir: str | Path | None, num_train: int, num_val: int, num_test: int, seed: int = 0,
                            image_size: int = 64, modalities: tuple[str, ...] = MODALITIES) -> DatasetDict:
    """A train/val/test DatasetDict of drawn caption rows (saved with `save_to_disk` when `out_dir` is given); each
    split draws from its own child stream of `seed`."""
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    check_split_sizes({f"num_{name}": value for name, value in sizes.items()}, image_size)
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ValueError(f"modalities: {unknown or 'none'}; choose among {list(MODALITIES)}")
    streams = np.random.SeedSequence([int(seed), 2]).spawn(len(SPLIT_NAMES))
    dataset = DatasetDict({name: generate_caption_split(np.random.default_rng(stream), int(sizes[name]),
                                                        int(image_size), tuple(modalities))
                           for name, stream in zip(SPLIT_NAMES, streams)})
    if out_dir is not None:
        dataset.save_to_disk(str(out_dir))
    return dataset


__all__ = ["caption", "caption_features", "generate_caption_images", "generate_caption_split"]
