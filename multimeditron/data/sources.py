"""Loading MultiMediset datasets (save_to_disk folders, parquet/arrow files, hub ids) and mixing them by weight.

Mixture rule: a dataset of N usable rows with weight w contributes round(w * N) rows per epoch (w = 1: every row
once; 2: every row twice; 0.5: a seeded random half). `max_samples` caps N first, with a seeded random subset.
"""
from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from multimeditron.data.report import DataError
from multimeditron.hub_ids import looks_like_hub_id

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class DatasetEntry:
    """One dataset of a mixture (the run config's `data.train[i]` / `data.eval[i]` are these)."""

    path: str  # save_to_disk folder, parquet/arrow file(s) or hub id
    weight: float = 1.0  # relative sampling weight in the mixture
    max_samples: int | None = None  # cap on rows taken from this dataset
    split: str | None = None  # split of a DatasetDict / hub dataset (default: train for train, test for eval)


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


def load_source(entry: DatasetEntry, default_split: str | Sequence[str]) -> Source:
    """One configured dataset as a `datasets.Dataset`; an empty one is an error naming it (a mixture of nothing
    would otherwise fail deep inside `datasets`).

    The split is `entry.split` when given, else `default_split`: one name (training: train, its eval sets: test),
    or a preference order (evaluation: test, validation, ...) whose first present split is read, else the only one.
    A folder of parquet/arrow files holds several splits when its file names say so (`test-00000-of-00001.parquet`,
    as in a hub snapshot); otherwise all its files are one table."""
    source = _load_source(entry, default_split)
    if len(source.dataset) == 0:
        raise DataError(f"dataset {source.name!r} has no rows")
    return source


def choose_split(name: str, splits: Sequence[str], wanted: str | None, default: str | Sequence[str]) -> str:
    """The split to read among `splits` (the rule of `load_source`), or a `DataError` naming the dataset."""
    if wanted is not None or isinstance(default, str):
        split = wanted or default
        if split not in splits:
            raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {sorted(splits)}")
        return split
    for split in default:
        if split in splits:
            return split
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"dataset {name!r} has none of the splits {list(default)}; its splits: {sorted(splits)}; "
                    "name one with `split`")


def split_names(path: str | Path) -> list[str] | None:
    """The splits a local dataset holds (a `save_to_disk` DatasetDict, or parquet/arrow files named by split), or
    None for a single table."""
    local = Path(path).expanduser()
    if not local.is_dir() or (local / "state.json").is_file():
        return None
    if (local / "dataset_dict.json").is_file():
        return list(json.loads((local / "dataset_dict.json").read_text()).get("splits", []))
    by_split = _files_by_split(local)
    return list(by_split) if len(by_split) > 1 else None


def _load_source(entry: DatasetEntry, default_split: str | Sequence[str]) -> Source:
    # `${VAR}` was substituted by the config loader (`config.substitute_env`), which also turns `$$` into `$`;
    # expanding again here would undo that escape.
    path = entry.path
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "dataset_dict.json").is_file():
            splits = json.loads((local / "dataset_dict.json").read_text()).get("splits", [])
            split = choose_split(entry.path, splits, entry.split, default_split)
            _refuse_saved_without_rows(local / split, f"{entry.path}[{split}]")
            return Source(datasets.load_from_disk(str(local / split)), f"{entry.path}[{split}]", local)
        if (local / "state.json").is_file():
            if entry.split is not None:
                raise DataError(f"dataset {entry.path!r} is a single Dataset without splits; remove `split`")
            _refuse_saved_without_rows(local, entry.path)
            return Source(datasets.load_from_disk(str(local)), entry.path, local)
        by_split = _files_by_split(local)
        if not by_split:
            raise DataError(f"dataset folder {entry.path!r} holds no save_to_disk dataset, parquet or arrow files")
        if len(by_split) == 1:
            return Source(_from_files(next(iter(by_split.values())), entry.path), entry.path, local)
        split = choose_split(entry.path, list(by_split), entry.split, default_split)
        name = f"{entry.path}[{split}]"
        return Source(_from_files(by_split[split], name), name, local)
    files = sorted(glob.glob(str(local))) if any(c in path for c in "*?[") else ([str(local)] if local.is_file()
                                                                                  else [])
    if files:
        return Source(_from_files(files, entry.path), entry.path, Path(files[0]).parent)
    if any(c in path for c in "*?[") or not looks_like_hub_id(path):
        raise DataError(f"dataset {entry.path!r} does not exist (and is not a hub id owner/name)")
    split = entry.split if entry.split is not None or not isinstance(default_split, str) else default_split
    try:
        if split is None:  # a preference order: read the hub's split names first, then only the chosen split
            split = choose_split(entry.path, datasets.get_dataset_split_names(path), None, default_split)
        return Source(datasets.load_dataset(path, split=split), f"{entry.path}[{split}]", None)
    except DataError:
        raise
    except Exception as error:  # the hub raises many types; the message must name the configured entry
        raise DataError(f"dataset {entry.path!r}: not a local dataset and could not be loaded from the hub "
                        f"(split {split or 'any'!r}): {error}") from error


def _files_by_split(folder: Path) -> dict[str, list[str]]:
    """The folder's parquet/arrow files grouped by the split their names say (datasets' own naming rules); one
    group when the names say none."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
    except FileNotFoundError:  # datasets' EmptyDatasetError: no file at all
        return {}
    groups = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    by_split = {str(split): sorted(f for f in files if Path(f).suffix.lower() in _FILE_BUILDERS)
                for split, files in groups.items()}
    return {split: files for split, files in by_split.items() if files}


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
