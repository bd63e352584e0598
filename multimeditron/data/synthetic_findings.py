"""Labelled synthetic images for the expert half: the quickstart's drawn X-ray / fundus / histology images with 0/1
label columns (modality, a finding in the left / right half, the number of findings), as train/val/test splits that
`multimeditron probe` and `multimeditron finetune` read (a multi-label table)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from multimeditron.data.synthetic import MAX_COUNT, MODALITIES, check_split_sizes, draw_image, png_bytes

SIDES = ("left", "right")
# One 0/1 column per label, in this order: the multi-label classes of a probe or fine-tuning run.
LABEL_COLUMNS: tuple[str, ...] = (*MODALITIES, *(f"finding_{side}" for side in SIDES),
                                  *(f"count_{n}" for n in range(MAX_COUNT + 1)))
SPLIT_NAMES = ("train", "val", "test")


def finding_features() -> Features:
    return Features({"image": {"bytes": Value("binary"), "path": Value("string")},
                     **{column: Value("int64") for column in LABEL_COLUMNS}})


def _labelled_row(rng: np.random.Generator, j: int, image_size: int) -> dict:
    """The `j`-th image: modality and count cycle (balanced), and an image with findings has them all on one half,
    drawn at random, so that `finding_left` / `finding_right` say where every finding is."""
    modality, count = MODALITIES[j % len(MODALITIES)], (j // len(MODALITIES)) % (MAX_COUNT + 1)
    side = str(rng.choice(SIDES)) if count else None
    image = draw_image(rng, modality, count, side, image_size)
    labels = {m: int(m == modality) for m in MODALITIES}
    labels.update({f"finding_{s}": int(s == side) for s in SIDES})
    labels.update({f"count_{n}": int(n == count) for n in range(MAX_COUNT + 1)})
    return {"image": {"bytes": png_bytes(image), "path": None}, **labels}


def generate_finding_split(rng: np.random.Generator, num_rows: int, image_size: int = 64) -> Dataset:
    rows = [_labelled_row(rng, j, image_size) for j in range(num_rows)]
    rows = [rows[k] for k in rng.permutation(num_rows)]
    schema = finding_features()
    return Dataset.from_dict({name: [row[name] for row in rows] for name in schema}, features=schema)


def generate_finding_images(out_dir: str | Path | None, num_train: int, num_val: int, num_test: int, seed: int = 0,
                            image_size: int = 64) -> DatasetDict:
    """A train/val/test DatasetDict of labelled drawn images (saved with `save_to_disk` when `out_dir` is given);
    each split draws from its own child stream of `seed`, and its images from another stream than the VQA set's."""
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    check_split_sizes({f"num_{name}": value for name, value in sizes.items()}, image_size)
    # The VQA set spawns two children of SeedSequence(seed); these spawn from a distinct entropy pool.
    streams = np.random.SeedSequence([int(seed), 1]).spawn(len(SPLIT_NAMES))
    dataset = DatasetDict({name: generate_finding_split(np.random.default_rng(stream), int(sizes[name]),
                                                        int(image_size))
                           for name, stream in zip(SPLIT_NAMES, streams)})
    if out_dir is not None:
        dataset.save_to_disk(str(out_dir))
    return dataset


__all__ = ["LABEL_COLUMNS", "finding_features", "generate_finding_images", "generate_finding_split"]
