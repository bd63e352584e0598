"""Scoring as the published MultiMeditron evaluation fork (EPFLiGHT/lmms-eval: tasks gmai, slake, path_vqa) does it:
its prompts, token budgets, answer extraction, normalisation and exact match, and its derived open-ended column.
Reimplemented from its behaviour, quirks included, so that our replies can be scored the way the published table
was; `scoring.py` stays this toolkit's own (more lenient) scoring."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

# Generation settings of the fork's task files: greedy, no stop strings, these budgets.
VQA_MAX_NEW_TOKENS = 64
GMAI_MAX_NEW_TOKENS = 2048
VQA_POST_PROMPT = ("Answer with a single short word or phrase only (no punctuation, no explanation). If the answer is "
                   "affirmative, reply 'Yes'; if negative, reply 'No'.")
GMAI_POST_PROMPT = ("Let's think step by step. Detail your reasoning before answering carefully. Your answer should "
                    "have the following format: <reasoning leading to the answer> Answer: <letter> The <letter> is "
                    "chosen amongst the possible options (A, B, C, D or E)")
GMAI_LETTERS = "ABCDE"

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBERS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
            "eight": "8", "nine": "9", "ten": "10"}
# The fork maps a whole reply of "1"/"0" and "y"/"n" to yes/no too.
_YES = frozenset({"yes", "y", "yeah", "yep", "true", "1"})
_NO = frozenset({"no", "n", "nope", "false", "0"})
_NOT_KEPT = re.compile(r"[^\w\s%/.-]")  # every character but word characters, spaces, % / . - becomes a space
_ANSWER_TAIL = re.compile(r"answer\s*[:\-]\s*(.+)", re.IGNORECASE)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def vqa_prompt(question: Any) -> str:
    """The fork's SLAKE / PathVQA prompt: the stripped question, a newline, the short-answer instruction."""
    return f"{_text(question).strip()}\n{VQA_POST_PROMPT}".strip()


def normalize_vqa(text: Any) -> str:
    """The fork's normalisation: a whole reply that is a yes/no alias -> "yes"/"no"; else lowercase, characters
    other than word characters, spaces and % / . - -> spaces, articles dropped, number words up to ten -> digits,
    surrounding dots stripped. "Yes." -> "yes", but "Yes, there is a mass" -> "yes there is mass"."""
    text = _text(text).strip().lower()
    if text in _YES:
        return "yes"
    if text in _NO:
        return "no"
    words = [_NUMBERS.get(word, word) for word in _NOT_KEPT.sub(" ", text).split() if word not in _ARTICLES]
    return " ".join(words).strip().strip(".")


def extract_final_answer(reply: Any) -> str:
    """What the fork scores: the text after the last "answer:" / "answer -" (to the end of its line), else the last
    non-empty line, else the stripped reply."""
    text = _text(reply)
    if not text:
        return ""
    tails = list(_ANSWER_TAIL.finditer(text))
    if tails:
        return tails[-1].group(1).strip()
    for line in reversed([line.strip() for line in text.splitlines()]):
        if line:
            return line
    return text.strip()


def is_yes_no(answer: Any) -> bool:
    """The fork's "binary" rows: the normalised reference is yes or no."""
    return normalize_vqa(answer) in ("yes", "no")


def vqa_correct(reply: Any, answer: Any) -> bool:
    """The fork's verdict: the normalised extracted answer equals the normalised reference (and is not empty)."""
    predicted = normalize_vqa(extract_final_answer(reply))
    return predicted != "" and predicted == normalize_vqa(answer)


def gmai_prompt(question: Any, options: Mapping[str, Any]) -> str:
    """The fork's GMAI prompt: question, "Options:", one "X: text" line per present option, then the reasoning
    instruction appended with no separator (as the fork does)."""
    lines = [_text(question).strip() + "\nOptions:"]
    lines += [f"{letter}: {_text(options[letter])}" for letter in GMAI_LETTERS if _text(options.get(letter))]
    return "\n".join(lines) + GMAI_POST_PROMPT


def gmai_letter(reply: Any) -> str:
    """The letter the fork reads ("a"-"e"), or "other". Lowercased; only what follows the first "answer:" on its line
    when there is one; ".", ")" and "]" removed; the first standalone a-e, else the first character when it is a-e.
    So the article in "there is a mass" reads as option a, and "because ..." as option b."""
    text = _text(reply).lower().strip()
    after = re.search(r"answer\s*:\s*(.*)", text)
    if after:
        text = after.group(1).strip()
    text = re.sub(r"[.\)\]]", "", text)
    standalone = re.search(r"\b[a-e]\b", text)
    if standalone:
        return standalone.group(0)
    if text and text[0] in "abcde":
        return text[0]
    return "other"


def gmai_correct(reply: Any, answer: Any) -> bool:
    """The fork's verdict: its letter equals the reference lowercased with dots removed."""
    return gmai_letter(reply) == _text(answer).lower().strip().replace(".", "")


def derived_open(overall: float | None, yes_no: float | None, n: int, n_yes_no: int) -> float | None:
    """The published table's open-ended column, which the fork does not report: derived from the overall and the
    yes/no accuracy (percent) and the row counts, (overall * n - yes_no * n_yes_no) / (n - n_yes_no)."""
    if overall is None or n <= n_yes_no:
        return None
    return (overall * n - (yes_no or 0.0) * n_yes_no) / (n - n_yes_no)
