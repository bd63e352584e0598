"""`data.caption_format: raw` and `published`: caption rows without the chat template (the text itself, its image
span where its placeholder is; `raw`: end-of-sequence, image span out of the loss; `published`: the tokenizer's BOS, no
EOS, the image delimiters in the loss), checked against hand-built token ids."""
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


def llama_style_processor():
    """The tiny Llama preset with the BOS rule of Llama 3's tokenizer.json (every encoding starts with
    <|begin_of_text|> when special tokens are added), which the preset itself leaves out."""
    from tokenizers.processors import TemplateProcessing

    from tests.conftest import tiny_model

    _, processor = tiny_model("tiny-llama")
    tokenizer = processor.tokenizer
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B",
                                                             special_tokens=[bos])
    return processor


def test_published_caption_rule_on_a_llama_style_tokenizer():
    processor = llama_style_processor()
    tokenizer = processor.tokenizer
    text = f"<|reserved_special_token_0|> {CAPTION}  "
    encoded = encode_raw_caption(processor, text, 1, "<|reserved_special_token_0|>", published=True)
    # tokenizer(text): the BOS Llama's tokenizer adds, the text as written (not stripped), no EOS
    expected = tokenizer(processor.image_span + f" {CAPTION}  ")["input_ids"]
    assert encoded.input_ids == expected
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids[-1] != tokenizer.eos_token_id
    # only the image tokens leave the loss: the BOS and the <|image_start|> / <|image_end|> delimiters stay in it
    assert encoded.labels == [IGNORE_INDEX if t == processor.image_token_id else t for t in encoded.input_ids]
    for token in (tokenizer.bos_token_id, processor.image_start_token_id, processor.image_end_token_id):
        assert token in encoded.labels
    ours = encode_raw_caption(processor, text, 1, "<|reserved_special_token_0|>")
    assert ours.input_ids[0] != tokenizer.bos_token_id and ours.input_ids[-1] == tokenizer.eos_token_id
    assert processor.image_start_token_id not in ours.labels
    # a Qwen-style tokenizer adds no BOS: the published rule then starts with the image span
    _, qwen = tiny("tiny-qwen3")
    assert encode_raw_caption(qwen, text, 1, "<|reserved_special_token_0|>", published=True).input_ids[0] == \
        qwen.image_start_token_id


def test_caption_format_published_in_the_dataset(tmp_path):
    from multimeditron.config import ConfigError, parse_config

    processor = llama_style_processor()
    rows = [{"modalities": [image_modality(png_bytes(i))], "text": f"<|image|> {CAPTION}"} for i in range(2)]
    datasets.Dataset.from_list(rows, features=caption_features()).save_to_disk(str(tmp_path / "captions"))
    section = DataSection(train=[DatasetEntry(str(tmp_path / "captions"))], max_sequence_length=256,
                          caption_format="published")
    item = build_sft_datasets(section, processor, seed=0).train[0]
    assert list(item["input_ids"]) == encode_raw_caption(processor, rows[0]["text"], 1, "<|image|>",
                                                         published=True).input_ids
    assert item["input_ids"][0] == processor.tokenizer.bos_token_id

    base = {"model": {"llm": "tiny-llama", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
            "data": {"train": [{"path": "x"}], "caption_format": "published"}, "stage": "alignment",
            "training_args": {"output_dir": "out"}}
    assert parse_config(base).data.caption_format == "published"
    with pytest.raises(ConfigError, match="caption_format"):
        parse_config({**base, "data": {**base["data"], "caption_format": "llama"}})
