"""`SFTCollator`: dataset items -> a right-padded training batch (2D mask, or per-token sample ids when packing).

The batch holds model inputs only (rows skipped in the workers go to the run's `SkipLog`), so any Trainer runs it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multimeditron.data.chat import IGNORE_INDEX
from multimeditron.data.packing import row_sample_ids
from multimeditron.model.processing import MultiMeditronProcessor


def _as_list(values: Any) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


class SFTCollator:
    """Pads on the right; the attention mask comes from each item's real length, never from pad == eos.

    Items: `input_ids`, `labels`, optional `pixel_values` (k, 3, S, S), optional `seq_lengths` (one entry per
    packed sample). With `packing=True` the batch carries `sample_ids` (B, L) instead of
    an attention mask: the sample index of each token in its row, -1 on padding. The model derives from it what its
    attention implementation needs (a block mask, varlen lengths, restarting position ids), on its own device: no
    [B, 1, L, L] mask is built here.
    """

    def __init__(self, processor: MultiMeditronProcessor, packing: bool, pad_to_multiple_of: int | None = None) -> None:
        self.processor = processor
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        pad = processor.tokenizer.pad_token_id
        # the pad id is never attended to nor trained on, so any id is correct; 0 when the tokenizer has none
        self.pad_token_id = 0 if pad is None else int(pad)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("SFTCollator got an empty list of features")
        ids = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) for f in features]
        seq_lengths = [list(f.get("seq_lengths") or [len(i)]) for f, i in zip(features, ids)]
        for row, (tokens, target, lengths) in enumerate(zip(ids, labels, seq_lengths)):
            if len(tokens) != len(target) or sum(lengths) != len(tokens):
                raise ValueError(f"feature {row}: input_ids ({len(tokens)}), labels ({len(target)}) and "
                                 f"seq_lengths (sum {sum(lengths)}) disagree")
            if not self.packing and len(lengths) > 1:
                raise ValueError("packed rows (several seq_lengths) need SFTCollator(packing=True)")
        total = max(len(i) for i in ids)
        if self.pad_to_multiple_of:
            total = -(-total // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(ids), total), self.pad_token_id, dtype=torch.long)
        label_tensor = torch.full((len(ids), total), IGNORE_INDEX, dtype=torch.long)
        for row, (tokens, target) in enumerate(zip(ids, labels)):
            input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            label_tensor[row, :len(target)] = torch.tensor(target, dtype=torch.long)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": label_tensor}
        if self.packing:
            batch["sample_ids"] = row_sample_ids(seq_lengths, total)
        else:
            lengths = torch.tensor([len(i) for i in ids])
            batch["attention_mask"] = (torch.arange(total)[None, :] < lengths[:, None]).long()
        batch["pixel_values"] = self._pixels(features)
        return batch

    def _pixels(self, features: Sequence[dict[str, Any]]) -> torch.Tensor:
        size = self.processor.image_size
        images = [f["pixel_values"] for f in features if f.get("pixel_values") is not None and len(f["pixel_values"])]
        if not images:
            return torch.zeros(0, 3, size, size)
        return torch.cat([torch.as_tensor(i) for i in images])
