"""The `published` scoring mode: GMAI-MMBench, SLAKE and PathVQA asked and scored as the published evaluation fork
does (prompts, budgets, no stop strings, the placeholder and the question joined with no separator, its verdicts;
see published_scoring.py), with this toolkit's own verdict on the same replies reported beside them ("ours_*"
metrics). Selected with `multimeditron eval --scoring published` or the lmms-eval tasks `mmd_*_published`
(tasks/published/).

SLAKE as the fork scored it: its task filters on `q_lang` only when given the task's keyword arguments, which its
prompt builder receives and its `process_results` does not. So every row of the split is scored, the Chinese ones
asked with an empty question (the image alone); `english_accuracy` is the fork's verdict on the English rows only."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from multimeditron.evaluation.benchmarks import Benchmark, ChoiceBenchmark, SlakeBenchmark, VQABenchmark
from multimeditron.evaluation.published_scoring import (
    GMAI_MAX_NEW_TOKENS,
    VQA_MAX_NEW_TOKENS,
    derived_open,
    gmai_correct,
    gmai_letter,
    gmai_prompt,
    is_yes_no,
    vqa_correct,
    vqa_prompt,
)
from multimeditron.evaluation.scoring import percent

SCORINGS = ("ours", "published")


# The fork's chat wrapper concatenates the content parts: the image placeholder, then the question, no separator.
PUBLISHED_PROMPT_JOIN = ""


@dataclass(frozen=True)
class PublishedChoiceBenchmark(ChoiceBenchmark):
    """GMAI-MMBench as the fork's `gmai` task: reasoning prompt, 2048 new tokens, its letter extraction."""

    prompt_join: ClassVar[str] = PUBLISHED_PROMPT_JOIN
    max_new_tokens: int = GMAI_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "ours_accuracy")

    def question(self, doc: dict[str, Any]) -> str:
        return gmai_prompt(doc["question"], {letter: doc.get(letter) for letter in "ABCDE"})

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        ours = super().score(doc, reply)
        return {"correct": gmai_correct(reply, doc["answer"]), "picked": gmai_letter(reply),
                "ours_correct": ours["correct"]}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"accuracy": percent(r["correct"] for r in records),
                "ours_accuracy": percent(r["ours_correct"] for r in records), "n": len(records)}


class _PublishedVQA:
    """SLAKE / PathVQA as the fork's `slake` / `path_vqa` tasks: short-answer prompt, 64 new tokens, whole-reply
    exact match; yes/no accuracy on rows whose reference is yes/no, the open column derived as the table did."""

    prompt_join: ClassVar[str] = PUBLISHED_PROMPT_JOIN
    max_new_tokens: int = VQA_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "closed_accuracy", "open_accuracy", "ours_accuracy",
                                          "ours_closed_accuracy", "ours_open_accuracy")

    def question(self, doc: dict[str, Any]) -> str:
        return vqa_prompt(doc["question"])

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        ours = VQABenchmark.score(self, doc, reply)  # type: ignore[arg-type]
        return {"correct": vqa_correct(reply, doc["answer"]), "closed": is_yes_no(doc["answer"]),
                "ours_correct": ours["correct"], "ours_closed": ours["closed"]}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return published_vqa_summary(records)


@dataclass(frozen=True)
class PublishedVQABenchmark(_PublishedVQA, VQABenchmark):
    max_new_tokens: int = VQA_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedSlakeBenchmark(_PublishedVQA, SlakeBenchmark):
    """Every row of the split, as the fork scored them: English rows with the short-answer prompt, the others with
    the empty question the fork's prompt builder gave them; `english_accuracy` beside the overall."""

    max_new_tokens: int = VQA_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    metrics: ClassVar[tuple[str, ...]] = _PublishedVQA.metrics + ("english_accuracy",)

    def prepare(self, table: Any) -> Any:
        return table  # no language filter: the fork scored every row

    def question(self, doc: dict[str, Any]) -> str:
        return vqa_prompt(doc["question"]) if slake_is_english(doc) else ""

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        return {**super().score(doc, reply), "english": slake_is_english(doc)}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return published_slake_summary(records)


def slake_is_english(doc: dict[str, Any]) -> bool:
    """A SLAKE row in English (`q_lang` "en"); a table without the column is taken as English."""
    return str(doc.get("q_lang", "en")).strip().lower() == "en"


def published_slake_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The fork's SLAKE columns over every row, and its overall accuracy on the English rows alone."""
    english = [r["correct"] for r in records if r["english"]]
    return {**published_vqa_summary(records), "english_accuracy": percent(english), "n_english": len(english)}


def published_vqa_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The fork's overall and yes/no accuracy, the open column derived from them, and ours on the same replies."""
    n, closed = len(records), [r["correct"] for r in records if r["closed"]]
    overall, yes_no = percent(r["correct"] for r in records), percent(closed)
    ours_closed = [r["ours_correct"] for r in records if r["ours_closed"]]
    ours_open = [r["ours_correct"] for r in records if not r["ours_closed"]]
    return {"accuracy": overall, "closed_accuracy": yes_no,
            "open_accuracy": derived_open(overall, yes_no, n, len(closed)),
            "ours_accuracy": percent(r["ours_correct"] for r in records), "ours_closed_accuracy": percent(ours_closed),
            "ours_open_accuracy": percent(ours_open), "n": n, "n_closed": len(closed), "n_open": n - len(closed)}


_PUBLISHED = {"mmd_gmai_mmbench": PublishedChoiceBenchmark, "mmd_slake": PublishedSlakeBenchmark,
              "mmd_pathvqa": PublishedVQABenchmark}


def with_scoring(bench: Benchmark, scoring: str = "ours") -> Benchmark:
    """`bench` itself for "ours"; for "published", the fork's version of the same task (same data source)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    if scoring == "ours":
        return bench
    if bench.name not in _PUBLISHED:
        raise ValueError(f"--scoring published reproduces the published fork's tasks ({', '.join(_PUBLISHED)}); "
                         f"{bench.name} has no published counterpart")
    fields = {f.name: getattr(bench, f.name) for f in dataclasses.fields(bench) if f.name not in ("max_new_tokens",
                                                                                                  "stop")}
    return _PUBLISHED[bench.name](**fields)


def lmms_prompt_join(task: str) -> str:
    """What joins the placeholders and the question for the lmms-eval task `task`: the published tasks
    (`mmd_*_published`) join as the fork did, every other task with a newline."""
    name = task.removesuffix("_published")
    return _PUBLISHED[name].prompt_join if task.endswith("_published") and name in _PUBLISHED else "\n"


def published_table(results: list[dict[str, Any]]) -> str:
    """Markdown: the fork's verdicts (the published table's columns) beside ours on the same replies."""
    def cell(metrics: dict[str, Any], key: str) -> str:
        return "" if key not in metrics else "n/a" if metrics[key] is None else f"{metrics[key]:.1f}"

    lines = ["| task (published fork's prompts) | n | fork: accuracy | fork: yes/no | fork: open (derived) "
             "| fork: English rows | ours: accuracy | ours: yes/no | ours: open |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        m = result["metrics"]
        keys = ("accuracy", "closed_accuracy", "open_accuracy", "english_accuracy", "ours_accuracy",
                "ours_closed_accuracy", "ours_open_accuracy")
        lines.append(f"| {result['task']} | {m.get('n', '')} | " + " | ".join(cell(m, k) for k in keys) + " |")
    return "\n".join(lines)
