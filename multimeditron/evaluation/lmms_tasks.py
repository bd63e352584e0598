"""The functions the lmms-eval task files in `tasks/` name with `!function`: thin bindings of `benchmarks.py`, so
that lmms-eval and `multimeditron eval` build the same prompts and compute the same scores."""
from __future__ import annotations

import math
import os
from typing import Any, Callable

from multimeditron.evaluation.benchmarks import Benchmark, get_benchmark
from multimeditron.evaluation.scoring import percent, vqa_summary


def bind_task(task: str | Benchmark, **options_from_env: str) -> tuple[Callable[..., Any], ...]:
    """The bindings of a task (docs, doc_to_visual, doc_to_text, doc_to_messages, process_results).
    `options_from_env` maps a benchmark option to the environment variable that sets it, read when lmms-eval first
    calls a binding (not when this module is imported)."""
    built: list[Benchmark] = [task] if isinstance(task, Benchmark) else []

    def bench() -> Benchmark:
        if not built:
            built.append(get_benchmark(task, **{option: os.environ.get(variable) or None
                                                for option, variable in options_from_env.items()}))
        return built[0]

    def docs(_placeholder: Any) -> Any:
        # lmms-eval first opens the task file's one-row placeholder; the real rows come from here (local copy
        # named by $MMD_<TASK>_DATA, else the hub), the same rows `multimeditron eval` reads.
        return bench().load()

    def doc_to_visual(doc: dict[str, Any]) -> list:
        return bench().images(doc, bench().image_dir())

    def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
        return bench().question(doc)

    def doc_to_messages(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
        return bench().messages(doc, bench().image_dir())

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
        record = bench().score(doc, results[0] if results else "")
        return {metric: record for metric in bench().metrics}

    return docs, doc_to_visual, doc_to_text, doc_to_messages, process_results


def metric_value(value: float | None) -> float:
    return math.nan if value is None else float(value)  # no rows of that kind: NaN, not a fake 0


def accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(percent(r["correct"] for r in records))


def closed_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(vqa_summary(records)["closed_accuracy"])


def open_accuracy(records: list[dict[str, Any]]) -> float:
    return metric_value(vqa_summary(records)["open_accuracy"])


gmai_docs, gmai_doc_to_visual, gmai_doc_to_text, gmai_doc_to_messages, gmai_process_results = bind_task("mmd_gmai_mmbench")
slake_docs, slake_doc_to_visual, slake_doc_to_text, slake_doc_to_messages, slake_process_results = bind_task("mmd_slake")
(pathvqa_docs, pathvqa_doc_to_visual, pathvqa_doc_to_text, pathvqa_doc_to_messages,
 pathvqa_process_results) = bind_task("mmd_pathvqa")
# Your own MultiMediset data: $MMD_MULTIMEDISET_DATA, optional $MMD_MULTIMEDISET_SPLIT (default test, else the first
# of validation/val/train) and $MMD_MULTIMEDISET_ATTACHMENT_TOKEN (the data's image placeholder).
(multimediset_docs, multimediset_doc_to_visual, multimediset_doc_to_text, multimediset_doc_to_messages,
 multimediset_process_results) = bind_task("multimediset", split="MMD_MULTIMEDISET_SPLIT",
                                       attachment_token="MMD_MULTIMEDISET_ATTACHMENT_TOKEN")


def multimediset_doc_to_target(doc: dict[str, Any]) -> str:
    return get_benchmark("multimediset").reference(doc)
