"""Packing several samples per row: a best-fit-decreasing bin packer and the per-token sample ids of a batch.

What keeps packed samples apart under each attention implementation is derived from the sample ids by the model
(`multimeditron.model.packed_attention`): restarting position ids alone do not under sdpa/eager.
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


def row_sample_ids(rows: Sequence[Sequence[int]], total: int) -> torch.Tensor:
    """(B, total) per-token sample ids from each row's sample lengths: 0, 1, ... per sample, -1 on the right padding.

    The one packing signal a batch carries; the model derives each attention implementation's inputs from it
    (`multimeditron.model.packed_attention`).
    """
    ids = torch.full((len(rows), total), -1, dtype=torch.long)
    for b, lengths in enumerate(rows):
        if sum(lengths) > total:
            raise ValueError(f"row {b} holds {sum(lengths)} tokens, more than the batch length {total}")
        ids[b, :sum(lengths)] = torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths))
    return ids
