"""Loading every supported layout, mixing by weight with caps, caption rows, and the cached tokenisation pass."""
from __future__ import annotations

import collections
import io

import datasets
import numpy as np
import pytest
from PIL import Image

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import build_sft_datasets
from multimeditron.data.conversation import CAPTION_PROMPT
from multimeditron.data.encode import RowEncoder
from multimeditron.data.report import DataError
from multimeditron.data.schema import (
    caption_features,
    conversation_features,
    image_modality,
    make_row,
)
from multimeditron.data.sources import load_source, mixture
from tests.data.conftest import png_bytes, vqa_row


def make_dataset(n: int, tag: str = "a") -> datasets.Dataset:
    rows = [vqa_row(question=f"Question {tag}{i}?", answer=f"Answer {tag}{i}.", seed=i) for i in range(n)]
    return datasets.Dataset.from_list(rows, features=conversation_features())


def test_every_layout_loads(tmp_path):
    dataset = make_dataset(3)
    dataset.save_to_disk(tmp_path / "plain")
    datasets.DatasetDict({"train": dataset, "test": make_dataset(2, "t")}).save_to_disk(tmp_path / "dict")
    dataset.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "folder").mkdir()
    dataset.to_parquet(tmp_path / "folder" / "part-0.parquet")
    arrow = next((tmp_path / "plain").glob("*.arrow"))
    cases = {
        "plain": (DatasetEntry(str(tmp_path / "plain")), 3),
        "dict default split": (DatasetEntry(str(tmp_path / "dict")), 3),
        "dict test split": (DatasetEntry(str(tmp_path / "dict"), split="test"), 2),
        "parquet": (DatasetEntry(str(tmp_path / "rows.parquet")), 3),
        "parquet folder": (DatasetEntry(str(tmp_path / "folder")), 3),
        "arrow": (DatasetEntry(str(arrow)), 3),
    }
    for name, (entry, rows) in cases.items():
        source = load_source(entry, "train")
        assert len(source.dataset) == rows, name
        assert source.dataset[0]["conversations"][1]["role"] == "assistant", name
    with pytest.raises(DataError, match="no split 'validation'"):
        load_source(DatasetEntry(str(tmp_path / "dict"), split="validation"), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_source(DatasetEntry(str(tmp_path / "missing")), "train")
    with pytest.raises(DataError, match="could not be loaded from the hub"):  # tests run with HF_HUB_OFFLINE=1
        load_source(DatasetEntry("no-such-org/no-such-dataset"), "train")




def test_split_named_files_are_splits_for_training_and_evaluation_alike(tmp_path):
    """One loader: a hub snapshot's `data/{split}-*.parquet` are splits (before, training read all of them as one
    table, test rows included); evaluation's preference order and training's fixed split share the rule."""
    from multimeditron.data.sources import split_names
    from multimeditron.evaluation.data import SPLIT_PREFERENCE

    snapshot = tmp_path / "snapshot" / "data"
    snapshot.mkdir(parents=True)
    make_dataset(3, "train").to_parquet(snapshot / "train-00000-of-00001.parquet")
    make_dataset(2, "test").to_parquet(snapshot / "test-00000-of-00001.parquet")
    (snapshot.parent / "README.md").write_text("a dataset card")
    folder = str(snapshot.parent)
    assert sorted(split_names(folder)) == ["test", "train"]
    train = load_source(DatasetEntry(folder), "train")
    assert (len(train.dataset), train.name) == (3, f"{folder}[train]")
    assert len(load_source(DatasetEntry(folder), SPLIT_PREFERENCE).dataset) == 2  # test first
    assert len(load_source(DatasetEntry(folder, split="train"), SPLIT_PREFERENCE).dataset) == 3
    with pytest.raises(DataError, match="has no split 'validation'"):
        load_source(DatasetEntry(folder), "validation")
    datasets.DatasetDict({"only": make_dataset(2)}).save_to_disk(tmp_path / "one")
    assert len(load_source(DatasetEntry(str(tmp_path / "one")), SPLIT_PREFERENCE).dataset) == 2  # the only split
    with pytest.raises(DataError, match="has no split 'train'"):  # training never falls back to another split
        load_source(DatasetEntry(str(tmp_path / "one")), "train")
    assert split_names(tmp_path / "one") == ["only"]
    make_dataset(2).to_parquet(tmp_path / "rows.parquet")
    assert split_names(tmp_path / "rows.parquet") is None
def test_a_dollar_escaped_in_the_config_stays_a_dollar(tmp_path, monkeypatch):
    """`$$` in YAML is a literal `$` (config.substitute_env); before, the loader expanded `$HOME` again."""
    import yaml

    from multimeditron.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_dataset(2).save_to_disk(tmp_path / "$HOME" / "set")
    config = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
              "data": {"train": [{"path": f"{tmp_path}/$$HOME/set"}]}, "stage": "alignment",
              "training_args": {"output_dir": str(tmp_path / "out")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    [entry] = load_config(tmp_path / "run.yaml").data.train
    assert entry.path == f"{tmp_path}/$HOME/set"
    assert len(load_source(entry, "train").dataset) == 2
    with pytest.raises(DataError, match="does not exist"):  # a path written with `$` is taken as written
        load_source(DatasetEntry(f"{tmp_path}/$HOME/other"), "train")


def test_mixture_weights_are_deterministic():
    good = [np.arange(10), np.arange(10, 30)]
    mixed = mixture(good, [2.0, 0.5], seed=7)
    counts = collections.Counter(int(i) for i in mixed)
    assert sum(counts[i] for i in range(10)) == 20 and all(counts[i] == 2 for i in range(10))
    assert sum(counts[i] for i in range(10, 30)) == 10 and max(counts[i] for i in range(10, 30)) == 1
    assert (mixture(good, [2.0, 0.5], seed=7) == mixed).all()
    assert not (mixture(good, [2.0, 0.5], seed=8) == mixed).all()


def test_build_mixes_caps_and_weights(tmp_path, qwen):
    _, processor = qwen
    make_dataset(12, "a").save_to_disk(tmp_path / "a")
    make_dataset(6, "b").save_to_disk(tmp_path / "b")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "a"), max_samples=4, weight=1.5),
                                 DatasetEntry(str(tmp_path / "b"), weight=2.0)], max_sequence_length=256)
    data = build_sft_datasets(section, processor, seed=3)
    assert len(data.train) == 6 + 12 and data.eval is None and data.report.total == 0
    texts = [processor.tokenizer.decode(data.train[i]["input_ids"]) for i in range(len(data.train))]
    from_a = [t for t in texts if "Question a" in t]
    assert len(from_a) == 6 and len(set(from_a)) == 4  # 4 capped rows, 1.5 x 4 = 6 drawn
    assert len([t for t in texts if "Question b" in t]) == 12
    again = build_sft_datasets(section, processor, seed=3)
    assert [again.train[i]["input_ids"].tolist() for i in range(len(again.train))] == \
        [data.train[i]["input_ids"].tolist() for i in range(len(data.train))]
    # group-by-length reads the column without decoding images
    assert list(data.train["length"]) == [len(data.train[i]["input_ids"]) for i in range(len(data.train))]


def test_tokenisation_is_cached_by_fingerprint(tmp_path, qwen, monkeypatch):
    _, processor = qwen
    make_dataset(5).save_to_disk(tmp_path / "a")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "a"))], max_sequence_length=256)
    build_sft_datasets(section, processor, seed=0)
    calls = []
    original = RowEncoder.__call__
    monkeypatch.setattr(RowEncoder, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    build_sft_datasets(section, processor, seed=0)
    assert not calls  # served from the cache file written by the first run
    build_sft_datasets(DataSection(train=section.train, max_sequence_length=200), processor, seed=0)
    assert calls  # another max_sequence_length is another fingerprint


def test_caption_rows_become_a_chat(tmp_path, qwen):
    _, processor = qwen
    rows = [{"modalities": [image_modality(png_bytes(1))], "text": "A frontal chest radiograph."},
            {"modalities": [image_modality(png_bytes(2))], "text": "<|image|> An axial CT slice."}]
    datasets.Dataset.from_list(rows, features=caption_features()).save_to_disk(tmp_path / "captions")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "captions"))], max_sequence_length=256)
    data = build_sft_datasets(section, processor, seed=0)
    assert len(data.train) == 2
    for i in range(2):
        item = data.train[i]
        text = processor.tokenizer.decode(item["input_ids"])
        answer = processor.tokenizer.decode([t for t in item["labels"].tolist() if t != -100])
        assert CAPTION_PROMPT in text and "<|image_start|>" in text and item["pixel_values"].shape[0] == 1
        assert answer in ("A frontal chest radiograph.<|im_end|>", "An axial CT slice.<|im_end|>")


def test_parallel_tokenisation_matches(tmp_path, qwen):
    _, processor = qwen
    make_dataset(8).save_to_disk(tmp_path / "a")
    entries = [DatasetEntry(str(tmp_path / "a"))]
    one = build_sft_datasets(DataSection(train=entries, max_sequence_length=256), processor, seed=0).train
    two = build_sft_datasets(DataSection(train=entries, max_sequence_length=255, num_proc=2), processor, seed=0).train
    assert [one[i]["input_ids"].tolist() for i in range(8)] == [two[i]["input_ids"].tolist() for i in range(8)]


def test_images_keep_placeholder_order(tmp_path, qwen):
    _, processor = qwen
    white, black = (Image.new("RGB", (8, 8), colour) for colour in ((255, 255, 255), (0, 0, 0)))
    images = [image_modality(encode_png(white)), image_modality(encode_png(black))]
    row = make_row(images, [{"role": "user", "content": "<|image|> then <|image|>: same?"},
                            {"role": "assistant", "content": "No."}])
    datasets.Dataset.from_list([row], features=conversation_features()).save_to_disk(tmp_path / "a")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "a"))], max_sequence_length=256)
    pixels = build_sft_datasets(section, processor, seed=0).train[0]["pixel_values"]
    assert pixels.shape == (2, 3, processor.image_size, processor.image_size)
    assert pixels[0].min() == 1.0 and pixels[1].max() == 0.0


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["save_to_disk", "dict_split", "parquet"])
def test_an_empty_dataset_is_an_error_naming_it(tmp_path, layout):
    empty = datasets.Dataset.from_dict({k: [] for k in conversation_features()}, features=conversation_features())
    path = tmp_path / layout
    if layout == "save_to_disk":
        empty.save_to_disk(str(path))
    elif layout == "dict_split":
        datasets.DatasetDict({"train": empty}).save_to_disk(str(path))
    else:
        path.mkdir()
        empty.to_parquet(str(path / "part-0.parquet"))
    with pytest.raises(DataError, match=rf"dataset '{path}(\[train\])?' has no rows"):
        load_source(DatasetEntry(path=str(path)), "train")
