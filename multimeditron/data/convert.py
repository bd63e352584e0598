"""Converters into MultiMediset Arrow datasets: LLaVA-style JSON/JSONL conversations, and RETFound-style
`train|val|test/<class>/` image folders turned into classification VQA; images are embedded as bytes.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Value
from tqdm.auto import tqdm

from multimeditron.choices import DEFAULT_ATTACHMENT_TOKEN
from multimeditron.data.conversation import check_messages
from multimeditron.data.images import ImageResolver
from multimeditron.data.labelled_images import scan_image_folder
from multimeditron.data.report import MISSING_IMAGE, PATH_ESCAPE, BadSample
from multimeditron.data.schema import conversation_features, image_modality, make_row
from multimeditron.data.splits import ImageDataError
from multimeditron.errors import UserError

LLAVA_PLACEHOLDER = "<image>"
# LLaVA writes human/gpt; ShareGPT-style exports sometimes already use the chat roles.
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEFAULT_FOLDER_QUESTION = "Which class does this image show? Options: {classes}. Answer with the class name."
# Marker files of a `save_to_disk` directory: only such a directory is ever deleted by `overwrite`.
_SAVED_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")


class ConversionError(UserError):
    """The input cannot be converted at all (missing file, wrong layout, output in the way)."""


@dataclass(frozen=True)
class BadRow:
    """One input row that cannot be converted, and why."""

    index: int | str  # the row's 0-based position in the JSON/JSONL file, or an image path for image folders
    reason: str
    row_id: str | None = None

    def __str__(self) -> str:
        where = f"row {self.index}" if isinstance(self.index, int) else str(self.index)
        return f"{where}{f' (id {self.row_id})' if self.row_id else ''}: {self.reason}"


class BadRowsError(ConversionError):
    """Some rows are bad and `skip_bad` was not set; nothing was written."""

    def __init__(self, bad: list[BadRow], total: int) -> None:
        super().__init__(f"{len(bad)} of {total} rows are bad; nothing was written (pass --skip-bad to drop them)")
        self.bad, self.total = bad, total


@dataclass
class ConversionReport:
    """What a conversion wrote: rows per split (one `train` entry for a plain Dataset) and the rows it skipped."""

    out_dir: Path
    rows: dict[str, int]
    bad: list[BadRow] = field(default_factory=list)
    is_dict: bool = False

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        splits = f" ({', '.join(f'{name} {n}' for name, n in self.rows.items())})" if self.is_dict else ""
        skipped = f"; skipped {len(self.bad)} bad rows" if self.bad else ""
        return f"wrote {self.total} rows{splits} to {self.out_dir}{skipped}"


class RowError(ValueError):
    """Raised by a row converter with the reason that one row is bad."""


# ---- shared helpers -----------------------------------------------------------------------------------------------
def _check_image(name: str | Path, resolver: ImageResolver) -> Path:
    """The image's path inside the resolver's folder; raises `RowError` unless training could read it: decoded by
    the decoder training uses (every format it reads: PNG/JPEG/TIFF/GIF/WebP/BMP, DICOM), and a path that stays
    inside the folder (`../` or an absolute path elsewhere is refused, as training refuses it)."""
    try:
        _, path = resolver.locate(str(name))
        resolver.load(path)
    except BadSample as bad:
        what = {MISSING_IMAGE: "missing image", PATH_ESCAPE: "image outside the image folder"}.get(
            bad.reason, "unreadable image")
        raise RowError(f"{what} '{name}': {bad.detail or bad.reason}") from None
    return path


def _check_out(out_dir: str | Path, overwrite: bool) -> bool:
    """Raise unless `out_dir` may be written; True when an earlier saved dataset there must be removed first.
    Called before the (long) checking pass, so a blocked output fails fast."""
    out = Path(out_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not overwrite:
        raise ConversionError(f"{out} exists and is not empty (pass --overwrite to replace a saved dataset)")
    # Never delete an arbitrary folder (a mistyped --out could be a home directory): only a saved dataset.
    if not out.is_dir() or not any((out / marker).exists() for marker in _SAVED_MARKERS):
        raise ConversionError(f"{out} is not a saved dataset; refusing to overwrite it")
    return True


def _prepare_out(out_dir: str | Path, remove: bool) -> Path:
    """Make room for the output, only once every row has been checked (a failed run leaves the old one)."""
    out = Path(out_dir)
    if remove:
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _build(rows: Callable[[], Iterator[dict[str, Any]]], features: Features, cache_dir: Path) -> Dataset:
    """A Dataset streamed from `rows` through Arrow files in `cache_dir`, so memory stays flat on large inputs."""
    with _datasets_bars(False):  # our own tqdm bar already counts the rows
        try:
            # An explicit fingerprint skips hashing the generator (and its captured records), and the private
            # cache_dir means a rerun never reuses rows from an earlier conversion of changed files.
            return Dataset.from_generator(rows, features=features, cache_dir=str(cache_dir),
                                          fingerprint=uuid.uuid4().hex)
        except ValueError as error:
            if "corresponds to no data" not in str(error):
                raise
            return Dataset.from_dict({name: [] for name in features}, features=features)


@contextmanager
def _datasets_bars(enabled: bool) -> Iterator[None]:
    """Switch datasets' own progress bars on or off for a block, restoring the caller's setting after."""
    was_disabled = datasets.are_progress_bars_disabled()
    if enabled:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            datasets.disable_progress_bars()
        else:
            datasets.enable_progress_bars()


# ---- LLaVA ----------------------------------------------------------------------------------------------------------
def read_llava_records(json_path: str | Path) -> list[Any]:
    """The records of a LLaVA `.json` (a list) or `.jsonl` (one object a line) file. A JSONL line that does not
    parse becomes a `BadRow` in the list, so it is reported with the other bad rows."""
    path = Path(json_path)
    if not path.is_file():
        raise ConversionError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            # Some LLaVA mixtures are JSONL saved under a .json name: "Extra data" after the first object.
            if error.msg != "Extra data":
                raise ConversionError(f"{path} is not valid JSON: {error}") from None
        else:
            if not isinstance(data, list):
                raise ConversionError(f"{path} must hold a JSON list of rows, found {type(data).__name__}")
            return data
    records: list[Any] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            records.append(BadRow(len(records), f"invalid JSON on line {line_number}: {error.msg}"))
    return records


def llava_row(record: Any, images_dir: Path, attachment_token: str = DEFAULT_ATTACHMENT_TOKEN,
              read_images: bool = True) -> dict[str, Any]:
    """One LLaVA record as a MultiMediset row; raises `RowError` with the reason when it cannot be converted.
    With `read_images=False` the images are only checked (the validation pass), and the row holds paths."""
    if not isinstance(record, dict):
        raise RowError(f"expected an object, found {type(record).__name__}")
    image = record.get("image", record.get("images"))
    if image is None:
        names: list[Any] = []  # text-only rows (e.g. ShareGPT turns in the LLaVA mix) are valid
    elif isinstance(image, str):
        names = [image]
    elif isinstance(image, list):
        names = image
    else:
        raise RowError(f"'image' must be a path or a list of paths, found {type(image).__name__}")
    if any(not isinstance(name, str) or not name for name in names):
        raise RowError("'image' holds an empty or non-string path")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list")
    conversation, placeholders = [], 0
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"turn {number} is not an object")
        source_role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = LLAVA_ROLES.get(source_role) if isinstance(source_role, str) else None
        if role is None:
            raise RowError(f"unknown role {source_role!r} in turn {number}")
        if not isinstance(text, str):
            raise RowError(f"turn {number} has no text")
        # A literal attachment token in the source would silently become an extra image slot: count it too.
        found = text.count(LLAVA_PLACEHOLDER)
        if attachment_token != LLAVA_PLACEHOLDER:
            found += text.count(attachment_token)
        if found and role != "user":
            raise RowError(f"image placeholder in a {source_role!r} turn ({number}); images belong to user turns")
        placeholders += found
        conversation.append({"role": role, "content": text.replace(LLAVA_PLACEHOLDER, attachment_token)})
    if placeholders != len(names):
        raise RowError(f"{placeholders} image placeholder(s) for {len(names)} image(s)")
    try:  # the check training applies to every row: convert never writes a row that training would refuse
        check_messages(conversation, len(names), attachment_token)
    except BadSample as bad:
        raise RowError(str(bad)) from None
    modalities = []
    resolver = ImageResolver(base_dir=images_dir)
    for name in names:
        if read_images:
            _, path = resolver.locate(name)  # checked in the validation pass
            modalities.append(image_modality(path.read_bytes()))
        else:
            modalities.append(image_modality(path=str(_check_image(name, resolver))))
    return make_row(modalities, conversation)


def convert_llava(json_path: str | Path, images_dir: str | Path | None, out_dir: str | Path,
                  attachment_token: str = DEFAULT_ATTACHMENT_TOKEN, skip_bad: bool = False, overwrite: bool = False,
                  progress: bool = True) -> ConversionReport:
    """LLaVA JSON/JSONL -> a MultiMediset Dataset saved at `out_dir`. Every row is checked first (structure, roles,
    placeholder count, image files); bad rows raise `BadRowsError` listing them all, or are dropped with `skip_bad`.
    `images_dir` defaults to the JSON file's folder."""
    if not attachment_token:
        raise ConversionError("the attachment token must not be empty")
    records = read_llava_records(json_path)
    images = Path(images_dir) if images_dir is not None else Path(json_path).parent
    if not images.is_dir():
        raise ConversionError(f"no such image folder: {images}")
    remove = _check_out(out_dir, overwrite)
    good: list[int] = []
    bad: list[BadRow] = []
    for index, record in enumerate(tqdm(records, desc="llava: checking", unit="row", disable=not progress)):
        if isinstance(record, BadRow):
            bad.append(record)
            continue
        try:
            llava_row(record, images, attachment_token, read_images=False)
            good.append(index)
        except RowError as reason:
            row_id = record.get("id") if isinstance(record, dict) else None
            bad.append(BadRow(index, str(reason), None if row_id is None else str(row_id)))
    if bad and not skip_bad:
        raise BadRowsError(bad, len(records))
    if not good:
        raise ConversionError(f"no convertible rows in {json_path} ({len(bad)} bad); nothing was written")
    out = _prepare_out(out_dir, remove)

    def rows() -> Iterator[dict[str, Any]]:
        for index in tqdm(good, desc="llava: writing", unit="row", disable=not progress):
            yield llava_row(records[index], images, attachment_token)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".convert-") as cache:
        dataset = _build(rows, conversation_features(), Path(cache))
        with _datasets_bars(progress):
            dataset.save_to_disk(str(out))
    return ConversionReport(out, {"train": len(dataset)}, bad)


# ---- image folders ----------------------------------------------------------------------------------------------
def folder_question(classes: list[str], question: str | None = None) -> str:
    """The classification question; `{classes}` in a custom question is replaced by the class list, and a custom
    question without it gets the list appended, so every question names the answer set."""
    listed = ", ".join(classes)
    if question is None:
        return DEFAULT_FOLDER_QUESTION.replace("{classes}", listed)
    if "{classes}" in question:
        return question.replace("{classes}", listed)
    return f"{question.rstrip()} Options: {listed}."


def folder_features() -> Features:
    """MultiMediset columns plus the same evaluation metadata as the synthetic set (answer, answer set)."""
    return conversation_features({"question_type": Value("string"), "answer": Value("string"),
                                  "choices": [Value("string")]})


def convert_image_folder(root: str | Path, out_dir: str | Path, question: str | None = None,
                         attachment_token: str = DEFAULT_ATTACHMENT_TOKEN, skip_bad: bool = False,
                         overwrite: bool = False, progress: bool = True,
                         notes: Callable[[str], None] | None = None) -> ConversionReport:
    """`ROOT/<split>/<class>/*.png|jpg` -> a DatasetDict of classification VQA rows (one per image, the answer is the
    class folder's name) with the splits present, each named as its folder (`val/`, `valid/`, `validation/` or `dev/`
    hold val: `multimeditron.data.splits`), saved at `out_dir`. Unreadable images raise `BadRowsError`
    unless `skip_bad`."""
    if not attachment_token:
        raise ConversionError("the attachment token must not be empty")
    try:  # the folder layout (split names included) is the labelled image sets' rule
        classes, items, scan_notes = scan_image_folder(root)
    except ImageDataError as error:
        raise ConversionError(str(error)) from error
    for note in scan_notes:
        (notes or (lambda text: print(text, file=sys.stderr)))(note)
    if not classes:
        raise ConversionError(f"no class folders under the splits of {root}")
    remove = _check_out(out_dir, overwrite)
    prompt = f"{attachment_token}\n{folder_question(classes, question)}"
    for label in classes:  # rows differ only by their label: the training check, once per class
        try:
            check_messages([{"role": "user", "content": prompt}, {"role": "assistant", "content": label}], 1,
                           attachment_token)
        except BadSample as bad:
            raise ConversionError(f"class {label!r} with the question {prompt!r}: {bad}") from None
    total = sum(len(pairs) for pairs in items.values())
    bad: list[BadRow] = []
    good: dict[str, list[tuple[Path, str]]] = {split: [] for split in items}
    resolver = ImageResolver(base_dir=root)
    with tqdm(total=total, desc="image-folder: checking", unit="image", disable=not progress) as bar:
        for split, pairs in items.items():
            for path, label in pairs:
                try:
                    _check_image(path, resolver)
                    good[split].append((path, label))
                except RowError as reason:
                    bad.append(BadRow(str(path.relative_to(Path(root).expanduser().absolute())), str(reason)))
                bar.update()
    if bad and not skip_bad:
        raise BadRowsError(bad, total)
    if not any(good.values()):
        raise ConversionError(f"no readable images under {root} ({len(bad)} bad); nothing was written")
    out = _prepare_out(out_dir, remove)

    def rows(pairs: list[tuple[Path, str]], bar: tqdm) -> Callable[[], Iterator[dict[str, Any]]]:
        def generate() -> Iterator[dict[str, Any]]:
            for path, label in pairs:
                yield make_row([image_modality(path.read_bytes())],
                               [{"role": "user", "content": prompt}, {"role": "assistant", "content": label}],
                               question_type="classification", answer=label, choices=classes)
                bar.update()
        return generate

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".convert-") as cache, \
            tqdm(total=total - len(bad), desc="image-folder: writing", unit="image", disable=not progress) as bar:
        dataset = DatasetDict({split: _build(rows(pairs, bar), folder_features(), Path(cache) / split)
                               for split, pairs in good.items()})
        with _datasets_bars(progress):
            dataset.save_to_disk(str(out))
    return ConversionReport(out, {split: len(ds) for split, ds in dataset.items()}, bad, is_dict=True)


__all__ = ["DEFAULT_ATTACHMENT_TOKEN", "LLAVA_ROLES", "BadRow", "BadRowsError", "ConversionError", "ConversionReport",
           "RowError", "convert_image_folder", "convert_llava", "folder_question", "llava_row", "read_llava_records"]
