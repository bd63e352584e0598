"""Too-long samples: cut only at the end of an assistant turn after the last image span, else dropped and counted."""
from __future__ import annotations

import datasets
import pytest

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import DataError, build_sft_datasets
from multimeditron.data.chat import IGNORE_INDEX, ChatEncoder
from multimeditron.data.report import TOO_LONG, TRUNCATED, BadSample
from multimeditron.data.schema import conversation_features, image_modality, make_row
from tests.conftest import LLM_FAMILIES
from tests.data.conftest import png_bytes, tiny

LONG = "word " * 60


def chat(image_in_last_turn: bool = False):
    return [
        {"role": "user", "content": "<|image|> First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": ("<|image|> " if image_in_last_turn else "") + "Second question?"},
        {"role": "assistant", "content": LONG.strip()},
    ]


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_cut_at_the_end_of_an_answer(family):
    _, processor = tiny(family)
    encoder = ChatEncoder(processor)
    full = encoder.encode(chat())
    limit = len(full.input_ids) - 5  # the long answer no longer fits, the first one does
    cut = encoder.encode(chat(), max_length=limit)
    assert cut.truncated and len(cut.input_ids) == full.turn_ends[0] <= limit
    assert cut.input_ids == full.input_ids[:len(cut.input_ids)]
    trained = processor.tokenizer.decode([t for t in cut.labels if t != IGNORE_INDEX])
    assert trained == "First answer." + encoder.end_of_turn  # the last trained token closes the turn
    assert cut.input_ids.count(processor.image_token_id) == processor.num_image_tokens


def test_never_cut_before_the_last_image():
    _, processor = tiny("tiny-qwen3")
    encoder = ChatEncoder(processor)
    full = encoder.encode(chat(image_in_last_turn=True))
    with pytest.raises(BadSample) as caught:
        encoder.encode(chat(image_in_last_turn=True), max_length=full.turn_ends[-1] - 1)
    assert caught.value.reason == TOO_LONG
    # and a sample whose image span itself crosses the limit is refused, never cut inside the span
    with pytest.raises(BadSample):
        encoder.encode(chat(), max_length=full.input_ids.index(processor.image_end_token_id))


def test_truncated_and_dropped_rows_are_counted(tmp_path):
    _, processor = tiny("tiny-qwen3")
    image = image_modality(png_bytes())
    rows = [make_row([image], chat()), make_row([image, image], chat(image_in_last_turn=True)),
            make_row([image], chat()[:2])]
    datasets.Dataset.from_list(rows, features=conversation_features()).save_to_disk(tmp_path / "d")
    limit = len(ChatEncoder(processor).encode(chat()).input_ids) - 5
    section = DataSection(train=[DatasetEntry(str(tmp_path / "d"))], max_sequence_length=limit,
                          on_bad_sample="skip", max_bad_sample_share=1.0)  # 1 of 3 rows refused on purpose
    data = build_sft_datasets(section, processor, seed=0)
    assert len(data.train) == 2
    assert data.report.counts == {TOO_LONG: 1} and data.report.examples[TOO_LONG] == [(str(tmp_path / "d"), 1)]
    assert data.report.modified == {TRUNCATED: 1}
    assert max(data.train["length"]) <= limit
    with pytest.raises(DataError, match=r"row 1: too_long"):
        build_sft_datasets(DataSection(train=section.train, max_sequence_length=limit), processor, seed=0)
