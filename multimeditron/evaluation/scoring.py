"""Answer scoring shared by the lmms-eval tasks and the built-in evaluator: normalisation, exact match, yes/no and
multiple-choice letter extraction. Every function accepts any reply (None, empty, very long) and never raises."""
from __future__ import annotations

import math
import re
import string
from typing import Any, Iterable, Mapping

YES_WORDS = frozenset({"yes", "yeah", "yep", "yup", "true"})
NO_WORDS = frozenset({"no", "nope", "false"})
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20", "single": "1", "once": "1", "twice": "2",
}
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation.replace(".", "")) + "]")
_DOT_NOT_DECIMAL = re.compile(r"\.(?!\d)|(?<!\d)\.")


def _text(reply: Any) -> str:
    if reply is None or (isinstance(reply, float) and math.isnan(reply)):
        return ""
    return str(reply)  # every pattern below runs in linear time, so even a runaway reply is read whole


def normalize_answer(reply: Any) -> str:
    """Lowercase, punctuation -> spaces (decimal points kept), articles dropped, number words -> digits, and a lone
    yes/no alias -> "yes"/"no". "The two lesions." -> "2 lesions"; "X-ray" -> "x ray"; "Yeah!" -> "yes"."""
    text = _DOT_NOT_DECIMAL.sub(" ", _PUNCTUATION.sub(" ", _text(reply).lower()))
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    joined = " ".join(words)
    if joined in YES_WORDS:
        return "yes"
    if joined in NO_WORDS:
        return "no"
    return joined


def yes_no(reply: Any) -> str | None:
    """"yes"/"no" when the reply opens with a yes/no word ("Yes, there is" -> "yes"), else None."""
    words = normalize_answer(reply).split()
    if not words:
        return None
    if words[0] in YES_WORDS:
        return "yes"
    if words[0] in NO_WORDS:
        return "no"
    return None


def is_closed(answer: Any) -> bool:
    """A closed question is one whose reference answer is yes or no (the published tables' "y/n" column)."""
    return normalize_answer(answer) in ("yes", "no")


def exact_match(reply: Any, answer: Any) -> bool:
    """Normalised exact match; for a yes/no reference the reply's leading yes/no word decides."""
    target = normalize_answer(answer)
    if target in ("yes", "no"):
        return yes_no(reply) == target
    return bool(target) and normalize_answer(reply) == target


# ---- multiple choice --------------------------------------------------------------------------------------------
def _letter_class(letters: str) -> str:
    return "[" + "".join(sorted(set(letters))) + "]"


def extract_choice(reply: Any, options: Mapping[str, Any] | Iterable[str] = "ABCDE") -> str | None:
    """The option letter a reply picks, or None. In order: the letter after the last "Answer:"; a leading "X)",
    "(X)", "X." or "X:" or a reply that is just "X"; a reply equal to one option's text; an option text found in
    the reply; a standalone capital letter. The article "a"/"A" before a word ("a lesion") is never option A."""
    texts = {str(k).strip().upper(): _text(v) for k, v in options.items()} if isinstance(options, Mapping) else {}
    letters = "".join(texts) if texts else "".join(str(x).upper() for x in options)
    if not letters:
        return None
    text, upper = _text(reply).strip(), _letter_class(letters)
    either = _letter_class(letters + letters.lower())
    after_answer = rf"(?i:answer)\s*(?i:is)?\s*[:\uff1a]\s*\(?\s*({either})(?![A-Za-z0-9])"
    picks = [match for match in re.finditer(after_answer, text) if not _is_article(text, match)]
    if picks:
        return picks[-1].group(1).upper()
    leading = rf"[\s*_]*(?:\(\s*({upper})\s*\)|({upper})\s*[).:](?![A-Za-z0-9])|({upper})\s*$)"  # (X) | X) X. X: | X
    lead = re.match(leading, text)
    if lead:
        return next(group for group in lead.groups() if group)
    alone = re.fullmatch(rf"\(?\s*({either})\s*[).:]?", text)  # "b", "(c)", "d." and nothing else
    if alone:
        return alone.group(1).upper()
    by_text = _match_option_text(text, texts)
    if by_text:
        return by_text
    # standalone: not inside a word, nor an abbreviation such as "E.g."
    for match in re.finditer(rf"(?<![A-Za-z0-9'])({upper})(?![A-Za-z0-9']|\.[A-Za-z])", text):
        if not _is_article(text, match):
            return match.group(1)
    return None


_WORD_AHEAD = re.compile(r"\s+[a-z]")


def _is_article(text: str, match: re.Match) -> bool:
    # "A"/"a" followed by a lowercase word is the article ("A lesion is seen"), not option A.
    return match.group(1) in "Aa" and _WORD_AHEAD.match(text, match.end()) is not None


def _match_option_text(reply: str, texts: Mapping[str, str]) -> str | None:
    normalized = {letter: normalize_answer(text) for letter, text in texts.items() if normalize_answer(text)}
    target = normalize_answer(reply)
    if not target:
        return None
    equal = [letter for letter, text in normalized.items() if text == target]
    if len(equal) == 1:
        return equal[0]
    padded = f" {target} "
    found = {letter: text for letter, text in normalized.items() if f" {text} " in padded}
    # "No lesion" contains both "lesion" and "no lesion": keep only the options no other found option contains.
    kept = [letter for letter, text in found.items()
            if not any(text != other and f" {text} " in f" {other} " for other in found.values())]
    return kept[0] if len(kept) == 1 else None


def choice_correct(reply: Any, options: Mapping[str, Any], answer: Any) -> bool:
    """Whether the reply picks the reference letter (the reference may be "C", "c", "C." or "(C)")."""
    gold = extract_choice(_text(answer).upper(), options)
    return gold is not None and extract_choice(reply, options) == gold


# ---- aggregation -------------------------------------------------------------------------------------------------
def percent(flags: Iterable[bool]) -> float | None:
    """Accuracy in percent, or None when there is nothing to score."""
    flags = [bool(flag) for flag in flags]
    return 100.0 * sum(flags) / len(flags) if flags else None


def vqa_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Overall, closed (yes/no) and open accuracy in percent from records holding "correct" and "closed"."""
    records = list(records)
    closed = [r["correct"] for r in records if r["closed"]]
    opened = [r["correct"] for r in records if not r["closed"]]
    return {"accuracy": percent(r["correct"] for r in records), "closed_accuracy": percent(closed),
            "open_accuracy": percent(opened), "n": len(records), "n_closed": len(closed), "n_open": len(opened)}
