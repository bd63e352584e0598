"""The synthetic VQA generator: determinism, splits, schema, balance, chance levels, and labels that a hand-written
pixel statistic recovers from the images (so a model can learn them, and they are not noise)."""
from __future__ import annotations

import io
from collections import Counter, deque

import numpy as np
import pytest
from datasets import DatasetDict, load_from_disk
from PIL import Image

from multimeditron.data.synthetic import (
    ANSWERS,
    ATTACHMENT_TOKEN,
    CHANCE_LEVELS,
    FINDINGS,
    MC_OPTIONS,
    MODALITIES,
    NO_FINDING,
    QUESTION_TYPES,
    features,
    generate_synthetic_vqa,
)

# Module-level sets, generated once: generation is the slow part of these tests.
BALANCED = 120  # a multiple of 60 = 5 types x lcm(3, 2, 2, 4, 4): every answer of every type exactly equally often


@pytest.fixture(scope="module")
def data() -> DatasetDict:
    return generate_synthetic_vqa(None, num_train=BALANCED, num_test=300, seed=7)


def pixels(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["modalities"][0]["value"]["bytes"])).convert("RGB"), dtype=np.int16)


# ---- a hand-written reader of the images: no learning, just thresholds ------------------------------------------
def modality_of(a: np.ndarray) -> str:
    """X-rays are exactly grey; fundus photographs have black corners; the rest is histology."""
    if not np.any(a[..., 0] != a[..., 1]) and not np.any(a[..., 1] != a[..., 2]):
        return "x-ray"
    k = max(2, a.shape[0] // 12)
    corners = np.concatenate([a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:]])
    return "fundus" if corners.mean() < 40 else "histology"


def finding_mask(a: np.ndarray, modality: str) -> np.ndarray:
    """Pixels of the findings: bright nodules, dark-red haemorrhages, deep-purple clusters."""
    red, green = a[..., 0], a[..., 1]
    if modality == "x-ray":
        return red > 205
    if modality == "fundus":
        return (red > 35) & (red < 105) & (green < 50)
    return red < 125


def blob_sizes(mask: np.ndarray, min_size: int = 8) -> list[int]:
    """Sizes of the 4-connected components of `mask` with at least `min_size` pixels (noise specks are smaller)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    sizes = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, n = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            n += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if n >= min_size:
            sizes.append(n)
    return sizes


def read_answer(row: dict) -> str:
    """The answer to `row`'s question, computed from its pixels alone."""
    a = pixels(row)
    modality = modality_of(a)
    mask = finding_mask(a, modality)
    count = len(blob_sizes(mask))
    qtype = row["question_type"]
    if qtype == "modality":
        return modality
    if qtype == "presence":
        return "yes" if count else "no"
    if qtype == "count":
        return str(count)
    if qtype == "side":  # the image's own left half = the columns with the smaller index
        half = a.shape[1] // 2
        return "left" if mask[:, :half].sum() > mask[:, half:].sum() else "right"
    option = FINDINGS[modality].option if count else NO_FINDING
    return "ABCD"[row["choices"].index(option)]


# ---- tests --------------------------------------------------------------------------------------------------------
def test_contract_constants() -> None:
    assert QUESTION_TYPES == ("modality", "presence", "side", "count", "multiple_choice")
    assert CHANCE_LEVELS == pytest.approx({"modality": 1 / 3, "presence": 0.5, "side": 0.5, "count": 0.25,
                                           "multiple_choice": 0.25})
    assert set(ANSWERS) == set(QUESTION_TYPES) and set(ANSWERS["modality"]) == set(MODALITIES)


def test_deterministic_for_a_seed() -> None:
    first = generate_synthetic_vqa(None, 15, 10, seed=3)
    again = generate_synthetic_vqa(None, 15, 10, seed=3)
    other = generate_synthetic_vqa(None, 15, 10, seed=4)
    for split in ("train", "test"):
        assert first[split].to_list() == again[split].to_list()
        assert first[split]["modalities"] != other[split]["modalities"]


def test_splits_are_independent(data: DatasetDict) -> None:
    assert set(data) == {"train", "test"} and len(data["train"]) == BALANCED and len(data["test"]) == 300
    # The test stream does not depend on the train size (an empty train split keeps its columns) ...
    alone, beside = generate_synthetic_vqa(None, 0, 20, seed=7), generate_synthetic_vqa(None, 25, 20, seed=7)
    assert len(alone["train"]) == 0 and alone["train"].features == features()
    assert alone["test"].to_list() == beside["test"].to_list()
    # ... and no image is shared between the splits.
    train_images = {m[0]["value"]["bytes"] for m in data["train"]["modalities"]}
    test_images = {m[0]["value"]["bytes"] for m in data["test"]["modalities"]}
    assert len(train_images) == BALANCED and len(test_images) == 300 and not train_images & test_images


def test_schema_round_trip(tmp_path, data: DatasetDict) -> None:
    saved = generate_synthetic_vqa(tmp_path / "synthetic", 10, 5, seed=1, image_size=48)
    loaded = load_from_disk(str(tmp_path / "synthetic"))
    assert isinstance(loaded, DatasetDict) and set(loaded) == {"train", "test"}
    assert loaded["train"].features == features() == data["train"].features
    assert loaded["train"].to_list() == saved["train"].to_list()
    assert Image.open(io.BytesIO(loaded["test"][0]["modalities"][0]["value"]["bytes"])).size == (48, 48)
    for row in data["train"]:
        (modality,) = row["modalities"]
        assert modality["type"] == "image" and modality["value"]["path"] is None
        image = Image.open(io.BytesIO(modality["value"]["bytes"]))
        assert image.format == "PNG" and image.size == (64, 64)
        user, assistant = row["conversations"]
        assert user["role"] == "user" and user["content"].startswith(ATTACHMENT_TOKEN + "\n")
        assert user["content"].count(ATTACHMENT_TOKEN) == 1
        assert assistant == {"role": "assistant", "content": row["answer"]}
        assert row["answer"] in ANSWERS[row["question_type"]]
        if row["question_type"] == "multiple_choice":
            assert sorted(row["choices"]) == sorted(MC_OPTIONS)
            for letter, text in zip("ABCD", row["choices"]):
                assert f"\n{letter}. {text}\n" in user["content"]
        else:
            assert row["choices"] == []
        if row["question_type"] == "side":  # the convention is spelled out, not left to guess
            assert "image's own left and right" in user["content"] and "not the patient's" in user["content"]


def test_answers_are_balanced(data: DatasetDict) -> None:
    types = Counter(data["train"]["question_type"])
    assert types == {qtype: BALANCED // 5 for qtype in QUESTION_TYPES}
    for qtype, answers in ANSWERS.items():
        got = Counter(row["answer"] for row in data["train"] if row["question_type"] == qtype)
        assert got == {answer: BALANCED // 5 // len(answers) for answer in answers}, qtype
        # Balanced means the best constant guess scores exactly the chance level.
        assert max(got.values()) / sum(got.values()) == pytest.approx(CHANCE_LEVELS[qtype])
    # An unbalanced size stays within one row per answer.
    odd = generate_synthetic_vqa(None, 37, 0, seed=2)["train"]
    for qtype, answers in ANSWERS.items():
        got = Counter(row["answer"] for row in odd if row["question_type"] == qtype)
        assert max(got.values()) - min(got.get(answer, 0) for answer in answers) <= 1


def test_answers_are_readable_from_the_pixels(data: DatasetDict) -> None:
    """A fixed threshold-and-count reader answers every type far above chance on the test split: the labels agree
    with the pixels (side = the image's left/right half, count = number of blobs, and so on)."""
    correct: dict[str, list[bool]] = {qtype: [] for qtype in QUESTION_TYPES}
    for row in data["test"]:
        correct[row["question_type"]].append(read_answer(row) == row["answer"])
    accuracy = {qtype: float(np.mean(hits)) for qtype, hits in correct.items()}
    for qtype, value in accuracy.items():
        assert value >= 0.95 > CHANCE_LEVELS[qtype] + 0.4, accuracy


def test_labels_do_not_leak_without_the_image(data: DatasetDict) -> None:
    """The same reader on another row's image is at chance: the answer is in the image, not in the question."""
    rows = [row for row in data["test"] if row["question_type"] == "side"]
    hits = [read_answer(dict(row, modalities=other["modalities"])) == row["answer"]
            for row, other in zip(rows, rows[1:] + rows[:1])]
    assert 0.25 < float(np.mean(hits)) < 0.75


@pytest.mark.parametrize("kwargs", [{"num_train": -1, "num_test": 1}, {"num_train": 1.5, "num_test": 1},
                                    {"num_train": 1, "num_test": 1, "image_size": 16}])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_vqa(None, **kwargs)


def test_train_mix_weights_the_types_and_keeps_answers_balanced() -> None:
    mix = {"modality": 1, "presence": 1, "side": 1, "count": 2, "multiple_choice": 3}
    per_unit = 48  # a multiple of every answer count (and of the 16 letter x option pairs of multiple choice)
    data = generate_synthetic_vqa(None, num_train=8 * per_unit, num_test=60, seed=3, train_mix=mix)
    types = Counter(data["train"]["question_type"])
    assert types == {qtype: weight * per_unit for qtype, weight in mix.items()}
    for qtype, answers in ANSWERS.items():
        got = Counter(row["answer"] for row in data["train"] if row["question_type"] == qtype)
        assert got == {answer: types[qtype] // len(answers) for answer in answers}, qtype
    # the mix is the train split's only: test asks every type equally, and its rows do not change with the mix
    assert Counter(data["test"]["question_type"]) == {qtype: 12 for qtype in QUESTION_TYPES}
    plain = generate_synthetic_vqa(None, num_train=8 * per_unit, num_test=60, seed=3)
    assert plain["test"]["conversations"] == data["test"]["conversations"]


@pytest.mark.parametrize("mix", [{"modality": 1, "colour": 1}, {"modality": -1}, {"modality": 0}, {"side": 1.5}])
def test_rejects_a_bad_train_mix(mix: dict) -> None:
    with pytest.raises(ValueError, match="question mix"):
        generate_synthetic_vqa(None, num_train=10, num_test=0, train_mix=mix)
