"""The functions the lmms-eval task files in `tasks/published/` name with `!function`: the `published` scoring mode
of GMAI-MMBench, SLAKE and PathVQA (published_tasks.py) bound for lmms-eval, and the aggregations of its metrics."""
from __future__ import annotations

from typing import Any

from multimeditron.evaluation.benchmarks import get_benchmark
from multimeditron.evaluation.lmms_tasks import accuracy, bind_task, metric_value  # noqa: F401  (accuracy: named by the YAMLs)
from multimeditron.evaluation.published_tasks import published_slake_summary, published_vqa_summary, with_scoring
from multimeditron.evaluation.scoring import percent


def _bind_published(task: str) -> tuple[Any, ...]:
    return bind_task(with_scoring(get_benchmark(task), "published"))


gmai_docs, gmai_doc_to_visual, gmai_doc_to_text, gmai_doc_to_messages, gmai_process_results = \
    _bind_published("mmd_gmai_mmbench")
slake_docs, slake_doc_to_visual, slake_doc_to_text, slake_doc_to_messages, slake_process_results = \
    _bind_published("mmd_slake")
pathvqa_docs, pathvqa_doc_to_visual, pathvqa_doc_to_text, pathvqa_doc_to_messages, pathvqa_process_results = \
    _bind_published("mmd_pathvqa")


def closed_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(published_vqa_summary(records)["closed_accuracy"])


def open_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(published_vqa_summary(records)["open_accuracy"])


def ours_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(percent(r["ours_correct"] for r in records))


def ours_closed_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(published_vqa_summary(records)["ours_closed_accuracy"])


def ours_open_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(published_vqa_summary(records)["ours_open_accuracy"])


def english_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(published_slake_summary(records)["english_accuracy"])
