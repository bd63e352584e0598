"""Reading evaluation data (local copies or hub datasets, through the one dataset loader), and images stored every
way benchmarks store them (PIL, `{bytes, path}`, raw bytes, base64 text, a path, a member of SLAKE's imgs.zip)."""
from __future__ import annotations

import base64
import binascii
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset
from PIL import Image

from multimeditron.config import DatasetEntry
from multimeditron.data.images import load_image
from multimeditron.data.sources import load_source, split_names

# The split a benchmark reads when none is named: the first of these present, else the only one.
SPLIT_PREFERENCE = ("test", "validation", "val", "train")


def load_table(source: str | os.PathLike, split: str | None) -> Dataset:
    """A benchmark's rows, read by the loader training uses (`data.sources.load_source`): a .parquet/.arrow file, a
    `save_to_disk` folder, a folder of parquet/arrow files (a hub snapshot: split names read from the file names)
    or a hub id; the named split, else the first of `SPLIT_PREFERENCE`, else the only one."""
    if Path(source).expanduser().exists() and split_names(source) is None:
        split = None  # a task names its split (test); a local copy that is one table is that split
    return load_source(DatasetEntry(str(source), split=split), SPLIT_PREFERENCE).dataset


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
    with zipfile.ZipFile(root) as archive:  # opened per image: no handle outlives the call (or crosses a fork)
        for member in (name, f"imgs/{name}"):
            if member in archive.NameToInfo:
                return load_image(archive.read(member))
    raise FileNotFoundError(f"{name} is not in {root}")


@lru_cache(maxsize=1)
def _hub_zip(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename="imgs.zip", repo_type="dataset")
