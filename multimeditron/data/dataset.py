"""`build_sft_datasets`: configured datasets -> tokenised, mixed (and optionally packed) training/eval datasets.

Tokenisation runs once in `datasets.map` (cached by fingerprint); images are decoded later, in the DataLoader
workers, by the dataset's transform. The returned datasets are `datasets.Dataset`s with a `length` column, so HF
Trainer's group-by-length sampler reads lengths without touching images. They need
`TrainingArguments(remove_unused_columns=False)`: the transform reads the bookkeeping columns.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch

from multimeditron.data.encode import ENCODED_FEATURES, RowEncoder
from multimeditron.data.images import ImageResolver
from multimeditron.data.packing import pack
from multimeditron.data.placeholders import resolve_attachment_token
from multimeditron.data.refused_share import check_refused_share
from multimeditron.data.report import THIN_IMAGE, TRUNCATED, BadSample, BadSampleReport, DataError
from multimeditron.data.sources import DatasetEntry, cap_rows, load_source, mixture
from multimeditron.model.image_processing import ThinImageWarning
from multimeditron.model.processing import MultiMeditronProcessor

logger = logging.getLogger(__name__)


@dataclass
class DataSection:
    """The datasets and how they become training rows (the run config's `data:` section is this)."""

    train: list[DatasetEntry] = field(default_factory=list)
    eval: list[DatasetEntry] = field(default_factory=list)
    max_sequence_length: int = 2048
    packing: bool = False
    on_bad_sample: Literal["error", "skip"] = "error"
    # Under `skip`: a dataset with a larger share of refused rows stops the run (a wrong placeholder must not quietly
    # empty it). 1.0 = never stop.
    max_bad_sample_share: float = 0.01
    # Placeholder in the data: "auto" = detected per dataset from its rows (<|image|>, <|reserved_special_token_0|>,
    # <image>); None = the model's; or the exact string.
    attachment_token: str | None = "auto"
    # Caption rows (`text`): "chat" = a "Describe the image" turn with the caption as the answer; "raw" = the text
    # itself with the loss on it and an end-of-sequence token; "published" = the text tokenised as the published
    # MultiMeditron did (the tokenizer's BOS, no EOS, image delimiters in the loss). data/raw_caption.py.
    caption_format: Literal["chat", "raw", "published"] = "chat"
    image_base_dir: str | None = None  # base folder for relative image paths (paths escaping it are refused)
    num_proc: int = 1  # processes for tokenisation (datasets.map)
    seed: int | None = None  # mixture sampling seed; None = the run seed

MAX_REPLACEMENTS = 64  # consecutive unreadable rows tolerated when replacing one in a worker

Loaded = tuple[list[int], list[int], torch.Tensor]  # input_ids, labels, pixel_values of one sample
Skipped = list[tuple[str, str, int]]  # (reason, dataset, row) of rows skipped in a worker


class SkipLog:
    """Rows skipped while decoding images in the DataLoader workers (other processes), one JSON line each in a file
    of this run: the workers append, the run reads them into its report. Nothing travels in the batches, so the
    datasets run under any Trainer."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="multimeditron-skipped-", suffix=".jsonl")
        os.close(handle)
        weakref.finalize(self, _remove, self.path)  # registered here only: worker copies are unpickled, not built

    def write(self, skipped: Skipped) -> None:
        if skipped:  # one append of a few short lines: whole, even with several workers appending at once
            with open(self.path, "a", encoding="utf-8") as log:
                log.write("".join(json.dumps(list(entry)) + "\n" for entry in skipped))

    def collect(self, report: BadSampleReport) -> BadSampleReport:
        """Move the logged rows into `report` (once: the log is emptied); call it when the workers are done."""
        path = Path(self.path)
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text:
            path.write_text("", encoding="utf-8")
        return report.merge(tuple(json.loads(line)) for line in text.splitlines() if line)


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


@dataclass
class SFTData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    report: BadSampleReport
    skip_log: SkipLog

    def collect_skipped(self) -> BadSampleReport:
        """The report with the rows the workers skipped so far added (call it after training or evaluation)."""
        return self.skip_log.collect(self.report)


class SampleLoader:
    """The datasets transform: rows of the index dataset -> model inputs, images decoded here (in the workers).

    A row whose image fails to decode now (it passed the cheap check of the map pass) raises `DataError` under
    `error`; under `skip` it is written to the run's `SkipLog` as (reason, dataset, row) and replaced by the next
    readable row, so batch shapes never change.
    """

    def __init__(self, tokens: datasets.Dataset, offsets: list[int], images: list[datasets.Dataset | None],
                 names: list[str], resolvers: list[ImageResolver], processor: MultiMeditronProcessor,
                 on_bad_sample: str, skip_log: SkipLog) -> None:
        self.tokens, self.offsets, self.images = tokens, offsets, images
        self.names, self.resolvers, self.processor = names, resolvers, processor
        self.on_bad_sample, self.skip_log = on_bad_sample, skip_log

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if set(batch) == {"length"}:
            return batch  # dataset["length"], read by the group-by-length sampler: no sample to build
        if "members" in batch:
            groups = batch["members"]
        elif "source" in batch and "pos" in batch:
            groups = [[self.offsets[s] + p] for s, p in zip(batch["source"], batch["pos"])]
        else:
            raise KeyError("the SFT dataset lost its bookkeeping columns (source, pos or members): set "
                           "TrainingArguments(remove_unused_columns=False)")
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "pixel_values": [], "seq_lengths": [],
                                     "length": []}
        for members in groups:
            skipped: Skipped = []
            samples = [s for s in (self._load(g, skipped) for g in members) if s is not None]
            if not samples:
                samples = [self._replacement(members[0], skipped)]
            out["input_ids"].append(torch.tensor([t for s in samples for t in s[0]], dtype=torch.long))
            out["labels"].append(torch.tensor([t for s in samples for t in s[1]], dtype=torch.long))
            out["pixel_values"].append(torch.cat([s[2] for s in samples]))
            out["seq_lengths"].append([len(s[0]) for s in samples])
            out["length"].append(sum(len(s[0]) for s in samples))
            self.skip_log.write(skipped)
        return out

    def _load(self, index: int, skipped: Skipped) -> Loaded | None:
        record = self.tokens[int(index)]
        source = record["source"]
        try:
            canvases = []
            if record["n_images"]:
                modalities = self.images[source][record["pos"]]["modalities"]
                for modality in modalities:
                    image = self.resolvers[source].load(modality["value"])
                    with warnings.catch_warnings():  # counted once for the run by the pre-pass (THIN_IMAGE)
                        warnings.simplefilter("ignore", ThinImageWarning)
                        canvases.append(self.processor.image_to_canvas(image))
        except BadSample as bad:
            if self.on_bad_sample == "error":
                raise DataError.for_row(self.names[source], record["row"], bad.reason, bad.detail) from bad
            skipped.append((bad.reason, self.names[source], int(record["row"])))
            return None
        size = self.processor.image_size
        pixels = torch.stack(canvases) if canvases else torch.zeros(0, 3, size, size)
        return record["input_ids"], record["labels"], pixels

    def _replacement(self, index: int, skipped: Skipped) -> Loaded:
        for step in range(1, MAX_REPLACEMENTS + 1):
            candidate = (int(index) + step) % len(self.tokens)
            if self.tokens[candidate]["bad_reason"]:
                continue  # refused in the map pass (already counted there)
            sample = self._load(candidate, skipped)
            if sample is not None:
                return sample
        record = self.tokens[int(index)]
        raise DataError(f"{MAX_REPLACEMENTS} consecutive rows after dataset {self.names[record['source']]!r}, row "
                        f"{record['row']} could not be read; run `multimeditron check-dataset --decode` on the data")


def build_sft_datasets(data: DataSection, processor: MultiMeditronProcessor, seed: int) -> SFTData:
    """The run's training and evaluation datasets and the report of every refused row."""
    seed = data.seed if data.seed is not None else seed
    report, skip_log = BadSampleReport(), SkipLog()
    train = _build_split(data, data.train, "train", processor, seed, report, skip_log)
    evaluation = _build_split(data, data.eval, "test", processor, seed, report, skip_log) if data.eval else None
    if report:
        logger.warning("data: %s", report.summary().replace("\n", "; "))
    return SFTData(train=train, eval=evaluation, report=report, skip_log=skip_log)


def _build_split(data: DataSection, entries: list[DatasetEntry], default_split: str,
                 processor: MultiMeditronProcessor, seed: int, report: BadSampleReport,
                 skip_log: SkipLog) -> datasets.Dataset:
    encoded, images, names, resolvers, good = [], [], [], [], []
    offset = 0
    for index, entry in enumerate(entries):
        source = load_source(entry, default_split)
        dataset = source.dataset
        row_ids = cap_rows(len(dataset), entry.max_samples, seed, index)
        if row_ids is not None:
            dataset = dataset.select(row_ids)
        resolver = ImageResolver(data.image_base_dir, source.folder)
        attachment = resolve_attachment_token(data.attachment_token, dataset, processor.attachment_token, source.name)
        encoder = RowEncoder(processor, attachment, data.max_sequence_length, resolver, index, row_ids,
                             caption_format=data.caption_format)
        tokens = dataset.map(
            encoder, batched=True, batch_size=64, with_indices=True, remove_columns=dataset.column_names,
            features=ENCODED_FEATURES, num_proc=data.num_proc if data.num_proc > 1 else None,
            new_fingerprint=datasets.fingerprint.Hasher.hash([dataset._fingerprint, encoder.signature()]),
            desc=f"tokenising {source.name}")
        reasons = np.asarray(tokens["bad_reason"], dtype=object)
        bad = np.flatnonzero(reasons != "")
        if len(bad) and data.on_bad_sample == "error":
            first = tokens[int(bad[0])]
            more = f" (and {len(bad) - 1} more bad row(s) in this dataset; `multimeditron check-dataset` lists " \
                   "them, or set data.on_bad_sample: skip)" if len(bad) > 1 else ""
            raise DataError.for_row(source.name, first["row"], first["bad_reason"], first["bad_detail"], more)
        check_refused_share(reasons[bad].tolist(), len(tokens), data.max_bad_sample_share, source.name, attachment)
        rows = np.asarray(tokens["row"])
        for position in bad.tolist():
            report.add(reasons[position], source.name, int(rows[position]))
        report.note(TRUNCATED, int(np.sum(np.asarray(tokens["truncated"]))))
        report.note(THIN_IMAGE, int(np.sum(np.asarray(tokens["thin_images"])[reasons == ""])))
        good.append(np.flatnonzero(reasons == "") + offset)
        encoded.append(tokens)
        images.append(dataset.select_columns(["modalities"]) if "modalities" in dataset.column_names else None)
        names.append(source.name)
        resolvers.append(resolver)
        offset += len(tokens)
    chosen = mixture(good, [e.weight for e in entries], seed)
    if len(chosen) == 0:
        raise DataError(f"no usable rows in {[e.path for e in entries]}:\n{report.summary()}")
    tokens = datasets.concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
    offsets = np.cumsum([0] + [len(t) for t in encoded]).tolist()
    loader = SampleLoader(tokens, offsets, images, names, resolvers, processor, data.on_bad_sample, skip_log)
    if data.packing:
        lengths = np.asarray(tokens["length"])[chosen]
        bins = pack(lengths.tolist(), data.max_sequence_length, seed)
        members = [[int(chosen[i]) for i in group] for group in bins]
        index = datasets.Dataset.from_dict(
            {"members": members, "length": [int(lengths[group].sum()) for group in bins]})
    else:
        index = tokens.select(chosen).select_columns(["source", "pos", "length"])
    return index.with_transform(loader)
