"""The one policy for files that an image set of the expert half cannot read (labelled images, image + mask pairs,
unlabelled images), the expert commands' counterpart of training's `on_bad_sample`.

Every file is checked when the set is loaded, before anything heavy runs. Under `error` (the default) the check is
cheap (`ImageResolver.check`: present, a readable header, intact data chunks, not a decompression bomb; no pixel
decoding, about a tenth of a decode) and the run stops with one line that counts and names the files; a file that
passes it and still cannot be decoded stops the run later with its name (`undecodable`). Under `skip` every file is
decoded once (`ImageResolver.load`), so that no file the run would fail on is kept; the refused ones are left out
and listed in the run's results (`refused`: split, file, reason).
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from multimeditron.data.images import ImageResolver
from multimeditron.data.report import BadSample
from multimeditron.data.splits import ImageDataError

BadImagePolicy = Literal["error", "skip"]
SKIP_HINT = "--skip-bad-images (data.on_bad_image: skip) leaves them out and lists them in the results"
LISTED = 5  # files named in an error message
CHECK_THREADS = 8  # the check reads files: threads overlap the waits (1.2 -> 0.9 ms per 512-px PNG on 2 cores)


def image_name(value: Any, index: int) -> str:
    """How a message names a stored image: its path, else its row."""
    path = value.get("path") if isinstance(value, dict) else value
    return str(path) if isinstance(path, (str, Path)) and str(path) else f"row {index}"


def undecodable(value: Any, index: int, error: BadSample) -> ImageDataError:
    """The error of a file that passed the load-time check but whose pixels cannot be decoded."""
    return ImageDataError(f"{image_name(value, index)}: {error.reason}: {error.detail or error} (its header passed "
                          f"the check when the data was loaded; remove or replace the file)")


class ImageScreen:
    """Checks the images of one data set split by split and keeps what the policy keeps; `finish` raises under
    `error` when any file was refused. `refused` lists every refused file."""

    def __init__(self, folder: Path | None, policy: BadImagePolicy = "error") -> None:
        if policy not in ("error", "skip"):
            raise ImageDataError(f"data.on_bad_image: {policy!r} is not one of ['error', 'skip']")
        self.resolver, self.policy = ImageResolver(default_dir=folder), policy
        self.refused: list[dict[str, Any]] = []

    def _check(self, value: Any) -> BadSample | None:
        # a MultiMediset `modalities` list: each of its images
        images = [m for m in value if not isinstance(m, dict) or m.get("type", "image") == "image"] \
            if isinstance(value, list) else [value]
        try:
            for image in images:
                self.resolver.load(image) if self.policy == "skip" else self.resolver.check(image)
        except BadSample as error:
            return error
        return None

    def rows(self, split: str, *columns: Sequence[Any]) -> np.ndarray:
        """The rows of `split` whose values in every column pass the check (all rows under `error`, where `finish`
        then stops the run)."""
        n = len(columns[0])
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            checked = [list(pool.map(self._check, (column[i] for i in range(n)))) for column in columns]
        keep = []
        for i in range(n):
            bad = next(((column, error) for column, error in zip(columns, (c[i] for c in checked))
                        if error is not None), None)
            if bad is None:
                keep.append(i)
                continue
            column, error = bad
            self.refused.append({"split": split, "file": image_name(column[i], i), "reason": error.reason,
                                 "detail": error.detail})
        return np.asarray(keep, dtype=np.int64) if self.policy == "skip" else np.arange(n)

    def finish(self, name: str) -> list[dict[str, Any]]:
        """The refused files; under `error`, an error naming them when there are any."""
        if self.refused and self.policy == "error":
            listed = "; ".join(f"{r['file']} ({r['reason']})" for r in self.refused[:LISTED])
            more = f"; ... {len(self.refused) - LISTED} more" if len(self.refused) > LISTED else ""
            raise ImageDataError(f"{name}: {len(self.refused)} file(s) cannot be read as images: {listed}{more}. "
                                 f"Remove them, or {SKIP_HINT}")
        return self.refused


def refused_summary(refused: list[dict[str, Any]]) -> str:
    """One line for the log: how many files were left out, by split, with the first few named."""
    by_split: dict[str, int] = {}
    for r in refused:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    named = ", ".join(f"{Path(r['file']).name} ({r['reason']})" for r in refused[:3])
    return (f"left out {len(refused)} unreadable file(s) (data.on_bad_image: skip): "
            + ", ".join(f"{s} {n}" for s, n in by_split.items()) + f"; e.g. {named}; all listed in the results")


__all__ = ["SKIP_HINT", "BadImagePolicy", "ImageScreen", "image_name", "refused_summary", "undecodable"]
