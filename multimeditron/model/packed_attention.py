"""Keeping packed samples apart: what each attention implementation needs, derived from per-token sample ids.

The collator emits `sample_ids` (B, L): the index of the sample each token belongs to within its row, -1 on padding.
`sdpa`/`eager` get a dense [B, 1, L, L] block-diagonal causal mask (built here, on the model's device and in its
dtype); `flash_attention_*` get restarting position ids and the varlen `cu_seq_lens` (no mask, as transformers'
`DataCollatorWithFlattening` produces); `flex_attention` gets a document-causal `BlockMask`. Position ids restart
per sample on every path (RoPE sees each sample from position 0).
"""
from __future__ import annotations

from typing import Any

import torch

# Attention implementation -> how packed samples are kept apart. An implementation missing here cannot keep them
# apart (restarting position ids alone do not under sdpa/eager: samples would attend to each other silently).
PACKING_PATHS: dict[str, str] = {
    "sdpa": "dense_mask",
    "eager": "dense_mask",
    "flash_attention_2": "varlen",
    "flash_attention_3": "varlen",
    "flex_attention": "block_mask",
}


def segment_starts(sample_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True where a token starts a new segment (a sample, or a run of padding) in its row."""
    starts = torch.ones_like(sample_ids, dtype=torch.bool)
    starts[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    return starts


def position_ids_from_sample_ids(sample_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) positions restarting at 0 at each segment start (padding counts from 0 as its own segment)."""
    index = torch.arange(sample_ids.shape[1], device=sample_ids.device).expand_as(sample_ids)
    start_index = torch.where(segment_starts(sample_ids), index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


def dense_block_mask(sample_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask: 0 where a token may attend (same segment, not in the future), -inf elsewhere.

    Padding forms its own segment, so no query row is fully masked (that would give NaN under sdpa).
    """
    length = sample_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=sample_ids.device).tril()
    allowed = (sample_ids[:, :, None] == sample_ids[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sample_ids.device)
    return mask.masked_fill_(~allowed, float("-inf"))[:, None]


def varlen_kwargs(sample_ids: torch.Tensor) -> dict[str, Any]:
    """flash-attn varlen arguments over the flattened batch: every segment (sample or padding run) is a sequence.

    Passed explicitly because transformers infers them from position ids only for a batch of one row.
    """
    flat_starts = segment_starts(sample_ids).reshape(-1).nonzero().squeeze(1)
    total = torch.tensor([sample_ids.numel()], device=sample_ids.device)
    cu_seq_lens = torch.cat([flat_starts, total]).to(torch.int32)
    max_length = int(cu_seq_lens.diff().max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length, "max_length_k": max_length}


def document_mask_mod(sample_ids: torch.Tensor):
    """flex_attention `mask_mod`: query q may see key kv when both lie in the same segment and kv <= q."""

    def mask_mod(batch: torch.Tensor, head: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (sample_ids[batch, q] == sample_ids[batch, kv]) & (q >= kv)

    return mask_mod


def flex_block_mask(sample_ids: torch.Tensor):
    """A document-causal `BlockMask` (torch >= 2.5), built on the ids' device."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = sample_ids.shape
    return create_block_mask(document_mask_mod(sample_ids), batch, None, length, length,
                             device=sample_ids.device)


def packed_attention_inputs(sample_ids: torch.Tensor, implementation: str, dtype: torch.dtype) -> dict[str, Any]:
    """The LLM keyword arguments that keep the packed samples of `sample_ids` apart under `implementation`."""
    path = PACKING_PATHS.get(implementation)
    if path is None:
        raise ValueError(f"attention implementation {implementation!r} cannot keep packed samples apart; packing "
                         f"works with {sorted(PACKING_PATHS)} (or set data.packing: false)")
    if sample_ids.dim() != 2:
        raise ValueError(f"sample_ids: expected (batch, length), got shape {tuple(sample_ids.shape)}")
    inputs: dict[str, Any] = {"position_ids": position_ids_from_sample_ids(sample_ids)}
    if path == "dense_mask":
        inputs["attention_mask"] = dense_block_mask(sample_ids, dtype)
    elif path == "varlen":
        inputs["attention_mask"] = None
        inputs.update(varlen_kwargs(sample_ids))
    else:
        if sample_ids.device.type != "cuda":
            # flex_attention crashed the process on CPU builds ("double free or corruption"); refuse clearly.
            raise ValueError("flex_attention packing runs on CUDA only; use sdpa or eager on this device")
        inputs["attention_mask"] = flex_block_mask(sample_ids)
    return inputs
