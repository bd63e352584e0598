"""Packing (bins, block-diagonal masks, logits equal to separate runs) and the collator's masks and padding."""
from __future__ import annotations

import datasets
import pytest
import torch

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import REPORT_KEY, SFTCollator, build_sft_datasets
from multimeditron.data.packing import block_causal_mask, pack
from multimeditron.data.schema import conversation_features, image_modality, make_row
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


def test_block_causal_mask():
    mask = block_causal_mask([[2, 1]], total=4, dtype=torch.bfloat16)
    assert mask.shape == (1, 1, 4, 4) and mask.dtype == torch.bfloat16
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert torch.isneginf(mask[0, 0, 0, 1].float())


def rows(n_images_per_row: list[int]):
    result = []
    for i, n in enumerate(n_images_per_row):
        images = [image_modality(png_bytes(10 * i + k)) for k in range(n)]
        question = " ".join(["<|image|>"] * n + [f"Question number {i} about the scan?" * (1 + i % 2)])
        result.append(make_row(images, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": f"Answer {i}."}]))
    return result


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_packed_logits_equal_separate_runs(tmp_path, family):
    model, processor = tiny(family)
    datasets.Dataset.from_list(rows([1, 0, 2, 1]), features=conversation_features()).save_to_disk(tmp_path / "d")
    entries = [DatasetEntry(str(tmp_path / "d"))]
    plain = build_sft_datasets(DataSection(train=entries, max_sequence_length=512), processor, seed=0).train
    packed = build_sft_datasets(DataSection(train=entries, max_sequence_length=512, packing=True), processor,
                                seed=0).train
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted(plain["length"])
    batch = SFTCollator(processor, packing=True)([packed[0]])
    batch.pop(REPORT_KEY)
    assert batch["attention_mask"].shape[1:] == (1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    with torch.no_grad():
        packed_logits = model(**batch).logits[0]
    separate = SFTCollator(processor, packing=False)
    by_ids = {tuple(plain[i]["input_ids"].tolist()): plain[i] for i in range(len(plain))}
    start = 0
    for length in packed[0]["seq_lengths"]:
        item = by_ids[tuple(batch["input_ids"][0, start:start + length].tolist())]
        single = separate([item])
        single.pop(REPORT_KEY)
        with torch.no_grad():
            logits = model(**single).logits[0]
        assert torch.allclose(packed_logits[start:start + length], logits, atol=1e-4), family
        start += length


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
    assert "position_ids" not in batch and batch[REPORT_KEY] == []


def test_collator_packing_positions_images_and_reports():
    _, processor = tiny("tiny-qwen3")
    size = processor.image_size
    skipped = [("corrupt_image", "d", 3)]
    features = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lengths": [2, 3],
         "pixel_values": torch.ones(2, 3, size, size), REPORT_KEY: skipped},
        {"input_ids": [8, 9], "labels": [8, 9], "pixel_values": torch.zeros(1, 3, size, size)},
    ]
    batch = SFTCollator(processor, packing=True, dtype=torch.bfloat16, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert batch["attention_mask"].dtype == torch.bfloat16 and batch["attention_mask"].shape == (2, 1, 8, 8)
    assert (batch["attention_mask"][0, 0, 2, :2] != 0).all() and batch["attention_mask"][0, 0, 4, 2] == 0
    assert batch["pixel_values"].shape == (3, 3, size, size) and batch["pixel_values"][:2].eq(1).all()
    assert batch[REPORT_KEY] == [("corrupt_image", "d", 3)]
    with pytest.raises(ValueError, match="packing=True"):
        SFTCollator(processor, packing=False)(features)
