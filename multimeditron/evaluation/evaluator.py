"""The built-in evaluator: the same tasks, prompts and scores as the lmms-eval task files, without the harness.
Batched generation with a progress bar; results as a dict (saved as JSON) and a markdown table."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from multimeditron.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from multimeditron.evaluation.data import pick_split
from multimeditron.inference import generate_answers, messages_to_chat
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor

# Rows are decoded and generated a chunk at a time, so a 6,700-image benchmark never sits decoded in memory at once.
CHUNK_BATCHES = 16


def evaluate_rows(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor, bench: Benchmark,
                  rows: Dataset, batch_size: int = 8, max_new_tokens: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Answer and score every row; returns {"task", "metrics", "samples"} (one sample per row: reply + score)."""
    samples: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc=bench.name, disable=not progress, dynamic_ncols=True)
    chunk = max(1, batch_size) * CHUNK_BATCHES
    for start in range(0, len(rows), chunk):
        docs = [rows[i] for i in range(start, min(start + chunk, len(rows)))]
        requests = [messages_to_chat(bench.messages(doc), processor.attachment_token) for doc in docs]
        replies = generate_answers(model, processor, requests, batch_size=batch_size, stop=bench.stop,
                                   max_new_tokens=max_new_tokens or bench.max_new_tokens, progress=bar)
        for offset, (doc, reply) in enumerate(zip(docs, replies)):
            samples.append({"index": start + offset, "reply": reply, **bench.score(doc, reply)})
    bar.close()
    return {"task": bench.name, "metrics": bench.summarize(samples), "samples": samples}


def evaluate_task(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor, task: str,
                  data: str | os.PathLike | None = None, limit: int | None = None, batch_size: int = 8,
                  max_new_tokens: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score a model on one task; `data`: a local copy (else $MMD_<TASK>_DATA, else the hub); `limit`: the first
    N rows (lmms-eval's --limit takes the same ones)."""
    bench = get_benchmark(task)
    rows = bench.load(data)
    if limit is not None:
        rows = rows.select(range(min(int(limit), len(rows))))
    result = evaluate_rows(model, processor, bench, rows, batch_size, max_new_tokens, progress)
    result["data"] = str(data or os.environ.get(bench.env_var) or bench.hub_path)
    return result


def evaluate_synthetic(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor,
                       dataset: Dataset | DatasetDict, batch_size: int = 8, limit: int | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Accuracy on the synthetic VQA set (its test split when given the DatasetDict), per question type beside the
    type's chance level, plus overall: {"accuracy", "chance", "n", "per_type": {type: {accuracy, chance, n}}}."""
    rows = pick_split(dataset, "test") if isinstance(dataset, DatasetDict) else dataset
    if limit is not None:
        rows = rows.select(range(min(int(limit), len(rows))))
    return evaluate_rows(model, processor, get_benchmark("synthetic_vqa"), rows, batch_size,
                         progress=progress)["metrics"]


def save_results(results: list[dict[str, Any]], path: str | os.PathLike, model: str | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "results": results}, indent=2, default=str) + "\n")


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per task (and per question type for the synthetic set): n, accuracy, yes/no, open, chance."""
    lines = ["| task | n | accuracy | yes/no | open | chance |", "|---|---|---|---|---|---|"]
    for result in results:
        metrics = result["metrics"]
        lines.append(_row(result["task"], metrics))
        for kind, sub in metrics.get("per_type", {}).items():
            lines.append(_row(f"{result['task']} / {kind}", sub))
    return "\n".join(lines)


def _row(name: str, metrics: dict[str, Any]) -> str:
    def cell(key: str) -> str:  # blank: not a metric of this task; n/a: no rows of that kind
        return "" if key not in metrics else "n/a" if metrics[key] is None else f"{metrics[key]:.1f}"

    keys = ("accuracy", "closed_accuracy", "open_accuracy", "chance")
    return f"| {name} | {metrics.get('n', '')} | " + " | ".join(cell(key) for key in keys) + " |"


def describe_tasks() -> str:
    """The task list for `multimeditron eval --list-tasks`: name, source, how to point at a local copy."""
    from multimeditron.evaluation import TASKS_DIR

    lines = []
    for bench in BENCHMARKS.values():
        source = f"hub {bench.hub_path}" if bench.hub_path else "local only"
        lines.append(f"{bench.name:18s} {bench.title} ({source}; local copy: --data PATH or ${bench.env_var})")
    lines.append(f"\nlmms-eval task files (all but synthetic_vqa): --include_path {TASKS_DIR}")
    return "\n".join(lines)
