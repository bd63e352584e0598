"""`data.attachment_token: auto` reads each dataset with the placeholder its rows use, and under `on_bad_sample:
skip` a dataset whose refused share exceeds `data.max_bad_sample_share` stops the run naming the dominant reason."""
from __future__ import annotations

import logging

import datasets
import pytest

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import DataError, build_sft_datasets
from multimeditron.data.placeholders import count_placeholders, resolve_attachment_token
from multimeditron.data.schema import make_row
from tests.data.conftest import tiny, vqa_row


def _save(rows, folder):
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize("token", ["<|image|>", "<|reserved_special_token_0|>", "<image>"])
def test_auto_picks_the_placeholder_the_rows_use(token, caplog):
    rows = datasets.Dataset.from_list([vqa_row(token=token, seed=i) for i in range(3)])
    with caplog.at_level(logging.INFO, logger="multimeditron.data.placeholders"):
        assert resolve_attachment_token("auto", rows, "<|image|>", "set") == token
    assert f"set: image placeholder {token} (detected from its rows" in caplog.text
    assert count_placeholders(rows)[token] == 3


def test_auto_falls_back_to_the_model_token_and_respects_explicit_settings():
    text_only = datasets.Dataset.from_list([make_row([], [{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello"}])])
    assert resolve_attachment_token("auto", text_only, "<|image|>", "t") == "<|image|>"
    mixed = datasets.Dataset.from_list([vqa_row(token="<image>"), vqa_row(token="<image>", seed=1),
                                        vqa_row(token="<|image|>", seed=2)])
    assert resolve_attachment_token("auto", mixed, "<|image|>", "m") == "<image>"  # the convention of most rows
    assert resolve_attachment_token("<x>", mixed, "<|image|>", "m") == "<x>"
    assert resolve_attachment_token(None, mixed, "<|image|>", "m") == "<|image|>"


def test_published_placeholder_trains_image_rows_with_the_default_config(tmp_path):
    _, processor = tiny("tiny-qwen3")
    folder = _save([vqa_row(token="<|reserved_special_token_0|>", seed=i) for i in range(4)], tmp_path / "pub")
    section = DataSection(train=[DatasetEntry(folder)], max_sequence_length=256, on_bad_sample="skip")
    assert section.attachment_token == "auto"
    data = build_sft_datasets(section, processor, seed=0)
    assert data.report.total == 0 and len(data.train) == 4
    item = data.train[0]
    ids = item["input_ids"].tolist() if hasattr(item["input_ids"], "tolist") else list(item["input_ids"])
    assert ids.count(processor.image_token_id) == processor.num_image_tokens  # the image span is in the sequence
    assert "reserved_special_token" not in processor.tokenizer.decode(ids)  # no literal placeholder trained on


def test_mostly_refused_dataset_stops_the_run_naming_the_reason(tmp_path):
    _, processor = tiny("tiny-qwen3")
    # Two placeholders for one image: the row is refused as placeholder_count_mismatch whatever token is detected.
    good = [vqa_row(seed=i) for i in range(97)]
    bad = [make_row(vqa_row(seed=100 + i)["modalities"], [{"role": "user", "content": "<|image|> <|image|> Hi"},
                                                           {"role": "assistant", "content": "a"}]) for i in range(3)]
    folder = _save(good + bad, tmp_path / "mixed")
    section = DataSection(train=[DatasetEntry(folder)], max_sequence_length=128, on_bad_sample="skip")
    with pytest.raises(DataError) as caught:
        build_sft_datasets(section, processor, seed=0)
    message = str(caught.value)
    assert "3 of 100 rows (3.0%) were refused" in message and "max_bad_sample_share = 1%" in message
    assert "mostly placeholder_count_mismatch (3 rows)" in message and "data.attachment_token" in message
    assert caught.value.reason == "placeholder_count_mismatch"
    # Allowed share: the run goes on, the rows are reported.
    section.max_bad_sample_share = 0.05
    data = build_sft_datasets(section, processor, seed=0)
    assert data.report.counts == {"placeholder_count_mismatch": 3} and len(data.train) == 97
