"""Scoring rules on tricky replies: normalisation, yes/no, exact match, option letters, never crashing."""
from __future__ import annotations

import pytest

from multimeditron.evaluation.scoring import (
    choice_correct,
    exact_match,
    extract_choice,
    is_closed,
    normalize_answer,
    percent,
    vqa_summary,
    yes_no,
)

OPTIONS = {"A": "CT", "B": "MRI", "C": "X-ray", "D": "Ultrasound", "E": "Fundus photography"}
LONG = "The image is hard to read. " * 400  # ~10,800 characters, no option in it


@pytest.mark.parametrize("reply,expected", [
    ("Yes.", "yes"), ("YES", "yes"), ("yeah!", "yes"), ("No", "no"), ("nope.", "no"),
    ("The two lesions.", "2 lesions"), ("Two", "2"), ("a lesion", "lesion"), ("An  X-ray", "x ray"),
    ("2.5 cm", "2.5 cm"), ("left lung.", "left lung"), ("", ""), (None, ""), (float("nan"), ""),
])
def test_normalize_answer(reply, expected):
    assert normalize_answer(reply) == expected


@pytest.mark.parametrize("reply,expected", [
    ("Yes.", "yes"), ("yes, there is", "yes"), ("No, it is not.", "no"), ("There is no lesion", None),
    ("", None), (None, None), ("True", "yes"),
])
def test_yes_no_reads_the_leading_word(reply, expected):
    assert yes_no(reply) == expected


@pytest.mark.parametrize("reply,answer,expected", [
    ("Yes.", "yes", True), ("yes, there is", "Yes", True), ("no", "yes", False), ("There is no effusion", "no", False),
    ("two", "2", True), ("2", "two", True), ("three", "2", False), ("The liver", "liver", True),
    ("liver and spleen", "liver", False), ("", "", False), (None, "liver", False), (LONG, "yes", False),
    ("X-ray", "x ray", True), ("Left Lung!", "left lung", True),
])
def test_exact_match(reply, answer, expected):
    assert exact_match(reply, answer) is expected


def test_closed_means_a_yes_no_reference():
    assert is_closed("Yes") and is_closed("no.") and not is_closed("liver") and not is_closed(None)


@pytest.mark.parametrize("reply,expected", [
    ("A) CT", "A"), ("(B)", "B"), ("Answer: C", "C"), ("answer: d", "D"), ("The answer is: (E)", "E"),
    ("C.", "C"), ("B: MRI", "B"), ("D", "D"), ("b", "B"), ("(c)", "C"),
    ("I think it is B because of the contrast", "B"), ("Answer: E\nAnswer: B", "B"),
    ("a lesion", None), ("A lesion is visible in the liver", None), ("Answer: a lesion", None),
    ("", None), (None, None), (LONG, None), ("Z)", None), ("E.g. a scan", None), (LONG + "Answer: B", "B"),
])
def test_extract_choice_letters(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


@pytest.mark.parametrize("reply,expected", [
    ("MRI", "B"), ("Ultrasound.", "D"), ("It is an x-ray image", "C"), ("fundus photography", "E"),
])
def test_extract_choice_maps_option_text_back_to_its_letter(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


def test_extract_choice_prefers_the_longer_option_it_contains():
    options = {"A": "Lesion", "B": "No lesion", "C": "Cyst"}
    assert extract_choice("No lesion", options) == "B"
    assert extract_choice("A lesion", options) == "A"  # the option's own text, read as text, not as the article


def test_extract_choice_only_offers_existing_letters():
    assert extract_choice("E", {"A": "x", "B": "y", "C": "z", "D": "w"}) is None
    assert extract_choice("C", "ABCD") == "C"
    assert extract_choice("C", {}) is None


@pytest.mark.parametrize("reply,answer,expected", [
    ("Answer: B", "B", True), ("(b)", "b", True), ("MRI", "B.", True), ("A", "B", False), (None, "B", False),
    ("", "A", False), ("a lesion", "A", False),
])
def test_choice_correct(reply, answer, expected):
    assert choice_correct(reply, OPTIONS, answer) is expected


def test_summaries():
    assert percent([]) is None and percent([True, False, True, True]) == 75.0
    records = [{"correct": True, "closed": True}, {"correct": False, "closed": True},
               {"correct": True, "closed": False}]
    summary = vqa_summary(records)
    assert summary["accuracy"] == pytest.approx(200 / 3) and summary["closed_accuracy"] == 50.0
    assert summary["open_accuracy"] == 100.0 and (summary["n_closed"], summary["n_open"]) == (2, 1)
    assert vqa_summary([{"correct": True, "closed": True}])["open_accuracy"] is None
