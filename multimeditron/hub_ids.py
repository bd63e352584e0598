"""The one rule for "is this string a hub id?": what every loader (models, expert checkpoints, datasets) and the
run's checks leave to the hub when no such local path exists."""
from __future__ import annotations

import re

HUB_PREFIX = "hf-hub:"  # open_clip's spelling of a hub id, accepted wherever a hub id is

# Hub spelling of one part of a repository id (owner or name) or of a path inside a repository.
_PART = re.compile(r"[\w.\-]+")
# A name ending so names a local file that is missing, not a repository (hub repository names may hold dots,
# e.g. Qwen/Qwen2.5-0.5B, but not these endings).
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".parquet", ".arrow", ".json", ".jsonl",
                  ".csv", ".yaml", ".yml")


def looks_like_hub_id(value: str, with_file: bool = False) -> bool:
    """Whether `value`, found nowhere on disk, reads as a hub repository `[hf-hub:]owner/name` rather than a missing
    local path. With `with_file`, `owner/name/path/in/repo` (one file of the repository) is a hub id too.

    Never a hub id: absolute paths, `./`, `../` and `~` paths, Windows paths, glob patterns, and `dir/file.ext`
    with a file ending (`data/train.parquet`, `ckpt/model.pth`)."""
    name = value.removeprefix(HUB_PREFIX)
    if name.startswith(("/", ".", "~")) or "\\" in name:
        return False
    parts = name.split("/")
    if len(parts) < 2 or (len(parts) > 2 and not with_file):
        return False
    if not all(_PART.fullmatch(part) for part in parts) or parts[0].startswith(("-", ".")):
        return False
    return not (len(parts) == 2 and parts[1].lower().endswith(_FILE_SUFFIXES))


def parse_hub_id(value: str) -> tuple[str, str | None]:
    """`[hf-hub:]owner/name[/path/in/repo]` -> (repository id, file inside the repository or None)."""
    if not looks_like_hub_id(value, with_file=True):
        raise ValueError(f"{value!r} is not a hub id of the form owner/name[/file]")
    parts = value.removeprefix(HUB_PREFIX).split("/")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)
