"""Packing several samples per row: a best-fit-decreasing bin packer and the block-diagonal causal mask.

Restarting position ids alone does not keep packed samples apart under sdpa/eager; the 4D mask does.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch


def pack(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity (best fit, longest first), bins shuffled.

    Best fit keeps the fullest bins full: each item goes to the bin whose free space is the smallest that fits.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    free: list[tuple[int, int]] = []  # (free space, bin id), sorted
    bins: list[list[int]] = []
    for item in order.tolist():
        size = int(lengths[item])
        if size > capacity:
            raise ValueError(f"item {item} has length {size} > packing capacity {capacity}")
        position = bisect.bisect_left(free, (size, -1))
        if position < len(free):
            space, bin_id = free.pop(position)
        else:
            space, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(item)
        bisect.insort(free, (space - size, bin_id))
    permutation = np.random.default_rng([seed, 4]).permutation(len(bins))
    return [bins[i] for i in permutation]


def packed_position_ids(seq_lengths: Sequence[int], total: int) -> torch.Tensor:
    """Positions restarting at 0 for each sample. Right padding continues the last sample's count, so that
    `position_ids == 0` still counts the real samples (as varlen attention and throughput logging assume)."""
    parts = [torch.arange(n) for n in seq_lengths]
    pad = total - sum(seq_lengths)
    if pad > 0:
        last = seq_lengths[-1] if seq_lengths else 0
        parts.append(torch.arange(last, last + pad))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def block_causal_mask(rows: Sequence[Sequence[int]], total: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, L, L] additive mask: 0 where a token may attend (same sample, not in the future), -inf elsewhere.

    Padding forms one more block, so no query row is fully masked (that would give NaN under sdpa).
    """
    segments = torch.zeros(len(rows), total, dtype=torch.long)
    for b, lengths in enumerate(rows):
        ids = [torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)]
        pad = total - sum(lengths)
        if pad < 0:
            raise ValueError(f"row {b} holds {sum(lengths)} tokens, more than the batch length {total}")
        ids.append(torch.full((pad,), len(lengths), dtype=torch.long))
        segments[b] = torch.cat(ids)
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = torch.zeros(len(rows), 1, total, total, dtype=dtype)
    return mask.masked_fill_(~allowed[:, None], float("-inf"))
