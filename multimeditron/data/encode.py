"""The tokenisation pass (`datasets.map`): each row is checked, rendered, tokenised, truncated and its images verified.

Bad rows stay in the output with their reason (and empty tokens), so every one is counted in the main process.
The output keeps no image bytes: only where the row's images are (source dataset, position) and the row index.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from datasets import Features, Sequence, Value

from multimeditron.data.chat import ChatEncoder
from multimeditron.data.conversation import parse_row
from multimeditron.data.images import ImageResolver
from multimeditron.data.raw_caption import encode_raw_caption
from multimeditron.data.report import BadSample
from multimeditron.model.processing import MultiMeditronProcessor

ENCODING_VERSION = 2  # bump when the output of RowEncoder changes, to invalidate cached map results

ENCODED_FEATURES = Features({
    "input_ids": Sequence(Value("int32")),
    "labels": Sequence(Value("int32")),
    "length": Value("int32"),
    "n_images": Value("int32"),
    "source": Value("int32"),
    "pos": Value("int64"),  # position in the (capped) source dataset, where the images are read back
    "row": Value("int64"),  # row index in the dataset as stored, for reports
    "bad_reason": Value("string"),  # "" for a good row
    "bad_detail": Value("string"),
    "truncated": Value("bool"),
    "thin_images": Value("int32"),  # images thinner than a patch once on the canvas (kept, counted in the report)
})


class RowEncoder:
    """The map function (batched, with indices). Picklable, so `num_proc > 1` works."""

    def __init__(self, processor: MultiMeditronProcessor, attachment_token: str, max_length: int,
                 resolver: ImageResolver, source: int, row_ids: np.ndarray | None = None,
                 caption_format: str = "chat") -> None:
        self.chat = ChatEncoder(processor, attachment_token)
        self.caption_format = caption_format  # raw / published: caption rows without the chat template (raw_caption.py)
        self.attachment_token = attachment_token
        self.max_length = max_length
        self.resolver = resolver
        self.source = source
        self.row_ids = row_ids
        self.image_processor = processor.image_processor

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in ENCODED_FEATURES}
        for k, position in enumerate(indices):
            row = {key: values[k] for key, values in batch.items()}
            ids: list[int] = []
            labels: list[int] = []
            reason = detail = ""
            truncated = False
            n_images = thin = 0
            try:
                messages, images = parse_row(row, self.attachment_token)
                n_images = len(images)
                for image in images:
                    thin += self.image_processor.is_thin(*self.resolver.check(image))
                if self.caption_format in ("raw", "published") and row.get("conversations") is None:
                    encoded = encode_raw_caption(self.chat.processor, row["text"], n_images, self.attachment_token,
                                                 self.max_length, published=self.caption_format == "published")
                else:
                    encoded = self.chat.encode(messages, self.max_length)
                ids, labels, truncated = encoded.input_ids, encoded.labels, encoded.truncated
            except BadSample as bad:
                reason, detail = bad.reason, bad.detail
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["n_images"].append(n_images)
            out["source"].append(self.source)
            out["pos"].append(position)
            out["row"].append(int(self.row_ids[position]) if self.row_ids is not None else position)
            out["bad_reason"].append(reason)
            out["bad_detail"].append(detail)
            out["truncated"].append(truncated)
            out["thin_images"].append(int(thin))
        return out

    def signature(self) -> str:
        """Everything the output depends on besides the input rows, for the map's cache fingerprint."""
        processor = self.chat.processor
        tokenizer = processor.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        parts = [ENCODING_VERSION, vocabulary, tokenizer.chat_template, processor.chat_template_kwargs,
                 processor.image_span, processor.image_processor.to_dict(), self.attachment_token, self.max_length, str(self.resolver.base_dir),
                 str(self.resolver.default_dir), self.resolver.max_pixels, self.source, self.caption_format,
                 None if self.row_ids is None else hashlib.sha256(self.row_ids.tobytes()).hexdigest()]
        return hashlib.sha256(repr(parts).encode()).hexdigest()
