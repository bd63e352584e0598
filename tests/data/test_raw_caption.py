"""`data.caption_format: raw`: caption rows trained as the published MultiMeditron did (the text itself, its image
span where its placeholder is, end-of-sequence, loss on every text token), checked against hand-built token ids."""
from __future__ import annotations

import datasets
import pytest

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import build_sft_datasets
from multimeditron.data.chat import IGNORE_INDEX
from multimeditron.data.raw_caption import encode_raw_caption
from multimeditron.data.report import BadSample
from multimeditron.data.schema import caption_features, image_modality
from tests.data.conftest import png_bytes, tiny

CAPTION = "A chest X-ray with a nodule."


def _hand_built(processor, before: str, after: str) -> list[int]:
    tokenizer = processor.tokenizer
    return tokenizer(before + processor.image_span + after, add_special_tokens=False)["input_ids"] + \
        [tokenizer.eos_token_id]


def test_raw_caption_ids_and_labels_by_hand():
    _, processor = tiny("tiny-qwen3")
    encoded = encode_raw_caption(processor, f"<|reserved_special_token_0|> {CAPTION}", 1,
                                 "<|reserved_special_token_0|>")
    assert encoded.input_ids == _hand_built(processor, "", f" {CAPTION}")
    image_ids = {processor.image_token_id, processor.image_start_token_id, processor.image_end_token_id}
    assert encoded.labels == [IGNORE_INDEX if t in image_ids else t for t in encoded.input_ids]
    trained = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == f" {CAPTION}{processor.tokenizer.eos_token}"
    # No placeholder in the caption: the image comes first, on its own line.
    assert encode_raw_caption(processor, CAPTION, 1, "<|image|>").input_ids == \
        _hand_built(processor, "", f"\n{CAPTION}")


def test_raw_caption_truncates_after_the_image_or_refuses():
    _, processor = tiny("tiny-qwen3")
    full = encode_raw_caption(processor, "<|image|> " + "word " * 50, 1, "<|image|>")
    cut = encode_raw_caption(processor, "<|image|> " + "word " * 50, 1, "<|image|>", max_length=len(full.input_ids) - 5)
    assert cut.truncated and cut.input_ids == full.input_ids[:len(full.input_ids) - 5]
    with pytest.raises(BadSample, match="inside an image span"):
        encode_raw_caption(processor, "<|image|> words", 1, "<|image|>", max_length=processor.num_image_tokens)


def test_caption_format_raw_in_the_dataset(tmp_path):
    _, processor = tiny("tiny-qwen3")
    rows = [{"modalities": [image_modality(png_bytes(i))], "text": f"<|image|> {CAPTION}"} for i in range(2)]
    datasets.Dataset.from_list(rows, features=caption_features()).save_to_disk(str(tmp_path / "captions"))
    decoded = {}
    for mode in ("chat", "raw"):
        section = DataSection(train=[DatasetEntry(str(tmp_path / "captions"))], max_sequence_length=256,
                              caption_format=mode)
        item = build_sft_datasets(section, processor, seed=0).train[0]
        decoded[mode] = processor.tokenizer.decode(list(item["input_ids"]))
    assert "Describe the image." in decoded["chat"] and "Describe the image." not in decoded["raw"]
    assert "<|im_start|>" in decoded["chat"] and "<|im_start|>" not in decoded["raw"]
    assert decoded["raw"].endswith(f"{CAPTION}{processor.tokenizer.eos_token}")
