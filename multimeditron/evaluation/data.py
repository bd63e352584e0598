"""Reading evaluation data: local parquet/Arrow copies or hub datasets, and images stored every way benchmarks store
them (PIL, `{bytes, path}`, raw bytes, base64 text, a path, a member of SLAKE's imgs.zip)."""
from __future__ import annotations

import base64
import binascii
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from PIL import Image

from multimeditron.data.images import load_image

SPLIT_PREFERENCE = ("test", "validation", "val", "train")


def pick_split(tables: DatasetDict, split: str | None) -> Dataset:
    """The named split, else the first of test / validation / val / train, else the only one."""
    for name in ((split,) if split else ()) + SPLIT_PREFERENCE:
        if name in tables:
            return tables[name]
    if len(tables) == 1:
        return next(iter(tables.values()))
    raise ValueError(f"no split {split or ' / '.join(SPLIT_PREFERENCE)!r} among {list(tables)}")


def load_table(source: str | os.PathLike, split: str | None) -> Dataset:
    """A local copy: a .parquet/.arrow file, a folder saved with `save_to_disk` (Dataset or DatasetDict), or a
    folder of parquet/arrow files (e.g. a hub snapshot, split names read from the file names)."""
    from datasets import load_dataset, load_from_disk

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = load_from_disk(str(path))
            return pick_split(loaded, split) if isinstance(loaded, DatasetDict) else loaded
        return pick_split(load_dataset(str(path)), split)
    if path.suffix == ".arrow":
        return Dataset.from_file(str(path))
    if path.suffix == ".parquet":
        return load_dataset("parquet", data_files={"test": str(path)}, split="test")
    raise ValueError(f"{path}: expected a .parquet or .arrow file, or a folder")


def load_hub(repo_id: str, split: str | None) -> Dataset:
    from datasets import load_dataset

    if split:
        return load_dataset(repo_id, split=split)
    return pick_split(load_dataset(repo_id), None)


def decode_image(value: Any, image_dir: str | os.PathLike | None = None) -> Image.Image:
    """An RGB PIL image from any of the ways a dataset stores one, through the decoder training uses; relative
    paths resolve against `image_dir` (the dataset's folder)."""
    if isinstance(value, str) and not _is_file(value, image_dir):
        try:  # GMAI-MMBench ships base64 text (sometimes as a data URL)
            value = base64.b64decode(value.split(",", 1)[-1], validate=False)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"not an image file nor base64 image data: {value[:60]!r}") from error
    return load_image(value, default_dir=image_dir or os.getcwd())


def _is_file(value: str, image_dir: str | os.PathLike | None) -> bool:
    path = Path(value).expanduser()
    try:
        return (path if path.is_absolute() else Path(image_dir or os.getcwd()) / path).is_file()
    except (OSError, ValueError):  # too long a name, a NUL byte: base64 text, not a path
        return False


def slake_image(name: str, repo_id: str) -> Image.Image:
    """SLAKE's image `name` (e.g. "xmlab102/source.jpg") from $MMD_SLAKE_IMAGES (folder or zip) or the hub zip."""
    root = os.environ.get("MMD_SLAKE_IMAGES") or _hub_zip(repo_id)
    name = str(name).lstrip("/")
    if os.path.isdir(root):
        for candidate in (name, f"imgs/{name}"):
            if (Path(root) / candidate).is_file():
                return load_image(candidate, base_dir=root)  # base_dir: a name with '..' cannot leave the folder
        raise FileNotFoundError(f"{name} is not under {root}")
    archive = _open_zip(root)
    for member in (name, f"imgs/{name}"):
        if member in archive.NameToInfo:
            return load_image(archive.read(member))
    raise FileNotFoundError(f"{name} is not in {root}")


@lru_cache(maxsize=4)
def _open_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


@lru_cache(maxsize=1)
def _hub_zip(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename="imgs.zip", repo_type="dataset")
