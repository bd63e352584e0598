"""Packing (bins, sample ids; logits and gradients equal to separate runs under sdpa, eager and the varlen path)
and the collator's masks and padding."""
from __future__ import annotations

import itertools

import datasets
import pytest
import torch

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import SFTCollator, build_sft_datasets
from multimeditron.data.packing import pack, row_sample_ids
from multimeditron.data.schema import conversation_features, image_modality, make_row
from multimeditron.model.packed_attention import PACKING_PATHS
from tests.conftest import LLM_FAMILIES
from tests.data.conftest import png_bytes, tiny


def test_pack_fills_bins_within_capacity():
    lengths = [7, 3, 5, 2, 9, 1, 4, 6]
    bins = pack(lengths, capacity=10, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 37 tokens cannot fit in fewer
    assert pack(lengths, 10, seed=0) == bins
    with pytest.raises(ValueError):
        pack([11], capacity=10)


def test_row_sample_ids():
    ids = row_sample_ids([[2, 1], [3]], total=4)
    assert ids.tolist() == [[0, 0, 1, -1], [0, 0, 0, -1]]
    with pytest.raises(ValueError, match="row 0 holds 5 tokens"):
        row_sample_ids([[2, 3]], total=4)


def rows(n_images_per_row: list[int]):
    result = []
    for i, n in enumerate(n_images_per_row):
        images = [image_modality(png_bytes(10 * i + k)) for k in range(n)]
        question = " ".join(["<|image|>"] * n + [f"Question number {i} about the scan?" * (1 + i % 2)])
        result.append(make_row(images, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": f"Answer {i}."}]))
    return result


VARLEN_CALLS: list[bool] = []


def reference_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                cu_seq_lens_q=None, **kwargs):
    """flash-attn's varlen contract in plain torch (flash-attn does not run on CPU): causal attention within each
    [cu_seq_lens[i], cu_seq_lens[i+1]) of the flattened batch, never a mask; without lengths, one causal sequence
    per row (flash-attn's non-varlen call, what an unpadded separate run gets)."""
    assert attention_mask is None, "the flash path takes no mask"
    VARLEN_CALLS.append(cu_seq_lens_q is not None)
    batch, heads, length, dim = query.shape
    if cu_seq_lens_q is None:
        cu_seq_lens_q = torch.arange(0, batch * length + 1, length)
    flat = [t.repeat_interleave(heads // t.shape[1], 1).transpose(1, 2).reshape(batch * length, heads, dim)
            for t in (query, key, value)]
    bounds = cu_seq_lens_q.tolist()
    pieces = [torch.nn.functional.scaled_dot_product_attention(
        *(t[s:e].transpose(0, 1) for t in flat), is_causal=True, scale=scaling).transpose(0, 1)
        for s, e in itertools.pairwise(bounds)]
    return torch.cat(pieces).reshape(batch, length, heads, dim), None


def use_attention(model, implementation: str, monkeypatch) -> None:
    if implementation == "reference_varlen":
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

        AttentionInterface.register(implementation, reference_varlen_attention)
        AttentionMaskInterface.register(implementation, flash_attention_mask)
        monkeypatch.setitem(PACKING_PATHS, implementation, "varlen")
    model.language_model.set_attn_implementation(implementation)
    assert model.language_model.config._attn_implementation == implementation


def packed_and_separate(tmp_path, processor):
    """One packed batch of four samples (images on three) and, per sample in packed order, its own batch."""
    datasets.Dataset.from_list(rows([1, 0, 2, 1]), features=conversation_features()).save_to_disk(tmp_path / "d")
    entries = [DatasetEntry(str(tmp_path / "d"))]
    plain = build_sft_datasets(DataSection(train=entries, max_sequence_length=512), processor, seed=0).train
    packed = build_sft_datasets(DataSection(train=entries, max_sequence_length=512, packing=True), processor,
                                seed=0).train
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted(plain["length"])
    batch = SFTCollator(processor, packing=True, pad_to_multiple_of=64)([packed[0]])  # with right padding
    assert "attention_mask" not in batch and "position_ids" not in batch
    by_ids = {tuple(plain[i]["input_ids"].tolist()): plain[i] for i in range(len(plain))}
    separate, start = [], 0
    for length in packed[0]["seq_lengths"]:
        single = SFTCollator(processor, packing=False)([by_ids[tuple(batch["input_ids"][0, start:start + length]
                                                                     .tolist())]])
        separate.append((start, length, single))
        start += length
    return batch, separate


# sdpa and eager: the dense block mask; reference_varlen: the flash-attn path's inputs (no mask, cu_seq_lens).
@pytest.mark.parametrize("family,implementation", [(f, "sdpa") for f in LLM_FAMILIES]
                         + [("tiny-qwen3", "eager"), ("tiny-qwen3", "reference_varlen")])
def test_packed_logits_and_gradients_equal_separate_runs(tmp_path, monkeypatch, family, implementation):
    model, processor = tiny(family)
    use_attention(model, implementation, monkeypatch)
    batch, separate = packed_and_separate(tmp_path, processor)
    with torch.no_grad():
        VARLEN_CALLS.clear()
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        if implementation == "reference_varlen":
            assert VARLEN_CALLS and all(VARLEN_CALLS)  # every layer got the lengths
        for start, length, single in separate:
            logits = model(**{k: v for k, v in single.items() if k != "labels"}).logits[0]
            assert torch.allclose(packed_logits[start:start + length], logits, atol=1e-4), (family, start)
    # gradients: the packed loss (a sum over all labelled tokens / their count) against the separate runs' sum
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    count = int((batch["labels"][:, 1:] != -100).sum())
    packed_loss = model(**batch, num_items_in_batch=count).loss
    packed_grads = torch.autograd.grad(packed_loss, params, allow_unused=True)
    separate_loss = sum(model(**single, num_items_in_batch=count).loss for _, _, single in separate)
    separate_grads = torch.autograd.grad(separate_loss, params, allow_unused=True)
    assert torch.allclose(packed_loss, separate_loss, rtol=1e-5)
    for packed_grad, separate_grad in zip(packed_grads, separate_grads):
        assert (packed_grad is None) == (separate_grad is None)
        if packed_grad is not None:
            assert torch.allclose(packed_grad, separate_grad, atol=1e-5, rtol=1e-4), (family, implementation)


def test_collator_pads_right_and_masks_by_real_length():
    _, processor = tiny("tiny-qwen3")
    pad = processor.tokenizer.pad_token_id
    # a sample whose real tokens include the pad id: a pad == eos style mask would hide it
    features = [{"input_ids": [5, 6, pad], "labels": [-100, 6, pad]}, {"input_ids": [7], "labels": [7]}]
    batch = SFTCollator(processor, packing=False)(features)
    assert batch["input_ids"].tolist() == [[5, 6, pad], [7, pad, pad]]
    assert batch["labels"].tolist() == [[-100, 6, pad], [7, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    size = processor.image_size
    assert batch["pixel_values"].shape == (0, 3, size, size)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values"}


def test_collator_packing_positions_images_and_reports():
    _, processor = tiny("tiny-qwen3")
    size = processor.image_size
    features = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lengths": [2, 3],
         "pixel_values": torch.ones(2, 3, size, size)},
        {"input_ids": [8, 9], "labels": [8, 9], "pixel_values": torch.zeros(1, 3, size, size)},
    ]
    batch = SFTCollator(processor, packing=True, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["sample_ids"].tolist() == [[0, 0, 1, 1, 1, -1, -1, -1], [0, 0, -1, -1, -1, -1, -1, -1]]
    assert "attention_mask" not in batch and "position_ids" not in batch
    assert batch["pixel_values"].shape == (3, 3, size, size) and batch["pixel_values"][:2].eq(1).all()
    with pytest.raises(ValueError, match="packing=True"):
        SFTCollator(processor, packing=False)(features)


def test_config_refuses_packing_that_cannot_keep_samples_apart(tmp_path):
    from multimeditron.config import ConfigError, parse_config

    def config(**model):
        return {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224"}], **model},
                "data": {"train": [{"path": str(tmp_path)}], "packing": True}, "stage": "end2end",
                "training_args": {"output_dir": str(tmp_path / "out")}}

    for implementation in ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention"):
        assert parse_config(config(attn_implementation=implementation)).data.packing
    with pytest.raises(ConfigError, match="data.packing: model.trust_remote_code"):
        parse_config(config(trust_remote_code=True))
