"""Loading MultiMediset datasets (save_to_disk folders, parquet/arrow files, hub ids) and mixing them by weight.

Mixture rule: a dataset of N usable rows with weight w contributes round(w * N) rows per epoch (w = 1: every row
once; 2: every row twice; 0.5: a seeded random half). `max_samples` caps N first, with a seeded random subset.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from multimeditron.config import DatasetEntry
from multimeditron.data.report import DataError

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class Source:
    dataset: datasets.Dataset
    name: str  # how reports name it (the configured path, plus the split when one was picked)
    folder: Path | None  # local folder relative image paths resolve against when no image_base_dir is set


def _from_files(files: list[str], name: str) -> datasets.Dataset:
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in _FILE_BUILDERS:
        raise DataError(f"dataset {name!r}: expected only .parquet or only .arrow files, got {sorted(suffixes)}")
    builder = _FILE_BUILDERS[suffixes.pop()]
    if builder == "parquet":
        import pyarrow.parquet as pq

        # `datasets` fails on 0-row parquet files with "corresponds to no data"; name the dataset instead.
        if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
            raise DataError(f"dataset {name!r} has no rows")
    if builder == "arrow" and len(files) == 1:
        return datasets.Dataset.from_file(files[0])  # memory-maps the file, no copy into the datasets cache
    return datasets.load_dataset(builder, data_files=sorted(files), split="train")


def load_source(entry: DatasetEntry, default_split: str) -> Source:
    """One configured dataset as a `datasets.Dataset`; an empty one is an error naming it (a mixture of nothing
    would otherwise fail deep inside `datasets`)."""
    source = _load_source(entry, default_split)
    if len(source.dataset) == 0:
        raise DataError(f"dataset {source.name!r} has no rows")
    return source


def _load_source(entry: DatasetEntry, default_split: str) -> Source:
    path = os.path.expandvars(entry.path)
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "dataset_dict.json").is_file():
            split = entry.split or default_split
            splits = json.loads((local / "dataset_dict.json").read_text()).get("splits", [])
            if split not in splits:
                raise DataError(f"dataset {entry.path!r} has no split {split!r}; its splits: {sorted(splits)}")
            _refuse_saved_without_rows(local / split, f"{entry.path}[{split}]")
            return Source(datasets.load_from_disk(str(local / split)), f"{entry.path}[{split}]", local)
        if (local / "state.json").is_file():
            if entry.split is not None:
                raise DataError(f"dataset {entry.path!r} is a single Dataset without splits; remove `split`")
            _refuse_saved_without_rows(local, entry.path)
            return Source(datasets.load_from_disk(str(local)), entry.path, local)
        files = [str(f) for f in sorted(local.rglob("*")) if f.suffix.lower() in _FILE_BUILDERS]
        if not files:
            raise DataError(f"dataset folder {entry.path!r} holds no save_to_disk dataset, parquet or arrow files")
        return Source(_from_files(files, entry.path), entry.path, local)
    files = sorted(glob.glob(str(local))) if any(c in path for c in "*?[") else ([str(local)] if local.is_file()
                                                                                  else [])
    if files:
        return Source(_from_files(files, entry.path), entry.path, Path(files[0]).parent)
    if local.is_absolute() or path.startswith((".", "~")) or any(c in path for c in "*?["):
        raise DataError(f"dataset {entry.path!r} does not exist")
    split = entry.split or default_split
    try:
        return Source(datasets.load_dataset(path, split=split), f"{entry.path}[{split}]", None)
    except Exception as error:  # the hub raises many types; the message must name the configured entry
        raise DataError(f"dataset {entry.path!r}: not a local dataset and could not be loaded from the hub "
                        f"(split {split!r}): {error}") from error


def _refuse_saved_without_rows(folder: Path, name: str) -> None:
    # A 0-row save_to_disk folder has no data file, and `datasets.load_from_disk` fails on it with an IndexError.
    try:
        data_files = json.loads((folder / "state.json").read_text()).get("_data_files")
    except (OSError, ValueError) as error:
        raise DataError(f"dataset {name!r}: {folder / 'state.json'} cannot be read: {error}") from error
    if not data_files:
        raise DataError(f"dataset {name!r} has no rows")


def cap_rows(n_rows: int, max_samples: int | None, seed: int, index: int) -> np.ndarray | None:
    """Row ids kept by `max_samples` (a seeded random subset, in file order for locality), or None for all."""
    if max_samples is None or max_samples >= n_rows:
        return None
    rng = np.random.default_rng([seed, index, 1])
    return np.sort(rng.choice(n_rows, size=max_samples, replace=False))


def mixture(good: list[np.ndarray], weights: list[float], seed: int) -> np.ndarray:
    """Ids (already global) drawn from each dataset by weight, then shuffled together; deterministic in `seed`."""
    parts = []
    for index, (ids, weight) in enumerate(zip(good, weights)):
        if len(ids) == 0:
            continue
        wanted = round(weight * len(ids))
        full, rest = divmod(wanted, len(ids))
        rng = np.random.default_rng([seed, index, 2])
        parts += [ids] * full + [np.sort(rng.choice(ids, size=rest, replace=False))]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    everything = np.concatenate(parts).astype(np.int64)
    return np.random.default_rng([seed, 3]).permutation(everything)
