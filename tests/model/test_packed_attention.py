"""What each attention implementation gets from per-token sample ids: position ids and varlen lengths equal to
transformers' `DataCollatorWithFlattening`, the dense block mask, the flex mask_mod, and the refusals."""
from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from multimeditron.model.packed_attention import (
    dense_block_mask,
    document_mask_mod,
    packed_attention_inputs,
    position_ids_from_sample_ids,
    varlen_kwargs,
)

LENGTHS = [3, 2, 4, 1]


def ids_of(rows: list[list[int]], total: int) -> torch.Tensor:
    ids = torch.full((len(rows), total), -1)
    for b, lengths in enumerate(rows):
        ids[b, :sum(lengths)] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return ids


def test_flash_inputs_equal_data_collator_with_flattening():
    flattened = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_position_ids=True,
                                           return_seq_idx=True)(
        [{"input_ids": list(range(10, 10 + n))} for n in LENGTHS], return_tensors="pt")
    sample_ids = ids_of([LENGTHS], sum(LENGTHS))
    assert sample_ids.tolist() == flattened["seq_idx"].tolist()
    inputs = packed_attention_inputs(sample_ids, "flash_attention_2", torch.bfloat16)
    assert inputs["attention_mask"] is None
    assert inputs["position_ids"].tolist() == flattened["position_ids"].tolist()
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        assert torch.equal(torch.as_tensor(inputs[key]), torch.as_tensor(flattened[key])), key
    # and what transformers' flash path would infer from those position ids itself
    (cu_q, _), (max_q, _) = prepare_fa_kwargs_from_position_ids(inputs["position_ids"])
    assert torch.equal(inputs["cu_seq_lens_q"], cu_q) and inputs["max_length_q"] == int(max_q)


def test_varlen_over_several_padded_rows():
    sample_ids = ids_of([[3, 2], [4]], total=6)  # rows [0 0 0 1 1 -1], [0 0 0 0 -1 -1]
    assert position_ids_from_sample_ids(sample_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    kwargs = varlen_kwargs(sample_ids)
    # the batch is flattened: row 2 starts at 6; each padding run is a sequence of its own
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == 4 and kwargs["max_length_k"] == 4


def test_dense_mask_and_flex_mask_mod_agree():
    sample_ids = ids_of([[2, 1], [3]], total=4)
    mask = dense_block_mask(sample_ids, torch.bfloat16)
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.bfloat16
    assert (mask[0, 0] == 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert (mask[1, 0] == 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    assert torch.isneginf(mask[0, 0, 0, 1].float())
    b, q, kv = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij")
    allowed = document_mask_mod(sample_ids)(b, torch.zeros_like(b), q, kv)
    assert torch.equal(allowed, mask[:, 0] == 0)


def test_refusals():
    sample_ids = ids_of([[2, 2]], total=4)
    with pytest.raises(ValueError, match="cannot keep packed samples apart"):
        packed_attention_inputs(sample_ids, "paged|sdpa", torch.float32)
    with pytest.raises(ValueError, match="CUDA only"):
        packed_attention_inputs(sample_ids, "flex_attention", torch.float32)
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        packed_attention_inputs(sample_ids[0], "sdpa", torch.float32)
