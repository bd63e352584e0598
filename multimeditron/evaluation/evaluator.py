"""The built-in evaluator: the same tasks, prompts and scores as the lmms-eval task files, without the harness.
Batched generation with a progress bar; results as a dict (saved as JSON) and a markdown table."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image
from tqdm.auto import tqdm

from multimeditron.data.placeholders import AUTO, resolve_attachment_token
from multimeditron.data.sources import choose_split
from multimeditron.evaluation.benchmarks import BENCHMARKS, Benchmark, ConversationBenchmark, get_benchmark
from multimeditron.evaluation.data import SPLIT_PREFERENCE
from multimeditron.evaluation.published_tasks import with_scoring
from multimeditron.evaluation.routing import expert_names, route_images, routes_images, usage_by_modality, usage_table
from multimeditron.inference import generate_answers, messages_to_chat
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor

# Rows are decoded and generated a chunk at a time, so a 6,700-image benchmark never sits decoded in memory at once.
CHUNK_BATCHES = 16


def evaluate_rows(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor, bench: Benchmark,
                  rows: Dataset, batch_size: int = 8, max_new_tokens: int | None = None,
                  progress: bool = True, image_dir: str | None = None,
                  ablation: str | None = None) -> dict[str, Any]:
    """Answer and score every row; returns {"task", "metrics", "samples"} (one sample per row: reply + score).
    `image_dir`: the folder relative image paths resolve against (the data's folder). `ablation`: replace every
    image by a blank one, by noise, or by another row's image (see `ABLATIONS`). A model that routes images
    (learned or pretrained router) also gets "router_usage": per modality (`bench.modality`), the fraction of
    images each expert ran (`routing.usage_by_modality`), and each sample the experts of its images."""
    if ablation is not None and ablation not in ABLATIONS:
        raise ValueError(f"unknown image ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
    samples: list[dict[str, Any]] = []
    routed = ablation is None and routes_images(model)
    names = expert_names(model) if routed else []
    selections: list[list[list[int]]] = []  # per row, per image: the experts it ran
    desc = bench.name if ablation is None else f"{bench.name} ({ABLATIONS[ablation]})"
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, dynamic_ncols=True)
    partners = _partners(len(rows)) if ablation == "other" else None
    chunk = max(1, batch_size) * CHUNK_BATCHES
    for start in range(0, len(rows), chunk):
        indices = range(start, min(start + chunk, len(rows)))
        docs = [rows[i] for i in indices]
        requests = [messages_to_chat(bench.messages(doc, image_dir), processor.attachment_token,
                                     separator=bench.prompt_join) for doc in docs]
        if ablation is not None:
            requests = [(chat, _ablate(ablation, images, index, bench, rows, partners, image_dir))
                        for index, (chat, images) in zip(indices, requests)]
        replies = generate_answers(model, processor, requests, batch_size=batch_size, stop=bench.stop,
                                   max_new_tokens=max_new_tokens or bench.max_new_tokens, progress=bar)
        chosen = route_images(model, processor, [images for _, images in requests], batch_size) if routed else []
        selections += chosen
        for offset, (doc, reply) in enumerate(zip(docs, replies)):
            sample = {"index": start + offset, "reply": reply, **bench.score(doc, reply)}
            if routed:
                sample.update(modality=bench.modality(doc),
                              experts=[[names[i] for i in image] for image in chosen[offset]])
            samples.append(sample)
    bar.close()
    result = {"task": bench.name, "metrics": bench.summarize(samples), "samples": samples}
    if routed:
        result["router_usage"] = usage_by_modality([s["modality"] for s in samples], selections, names)
    return result


# What each image becomes in an ablation run: the accuracy left shows how much the answers depend on the image.
ABLATIONS = {"blank": "blank image", "noise": "noise image", "other": "another sample's image"}


def _partners(n_rows: int, seed: int = 0) -> list[int]:
    """For each row, another row (a seeded cycle through all rows, so no row is paired with itself when n > 1)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    partners = [0] * n_rows
    for position, row in enumerate(order):
        partners[int(row)] = int(order[(position + 1) % n_rows])
    return partners


def _ablate(kind: str, images: list[Image.Image], index: int, bench: Benchmark, rows: Dataset,
            partners: list[int] | None, image_dir: str | None) -> list[Image.Image]:
    """The row's images replaced, each at its own size (so the padding on the canvas stays the same)."""
    if not images:
        return images
    if kind == "blank":
        return [Image.new("RGB", image.size) for image in images]
    if kind == "noise":
        rng = np.random.default_rng([index, 1])
        return [Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8))
                for image in images]
    others = bench.images(rows[partners[index]], image_dir) if partners and len(rows) > 1 else []
    if not others:  # a single row, or a partner without images: nothing else to show, so a blank one
        return _ablate("blank", images, index, bench, rows, partners, image_dir)
    return [others[i % len(others)] for i in range(len(images))]


def evaluate_task(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor, task: str,
                  data: str | os.PathLike | None = None, limit: int | None = None, batch_size: int = 8,
                  max_new_tokens: int | None = None, progress: bool = True, split: str | None = None,
                  question_type_column: str | None = None, attachment_token: str | None = None,
                  image_ablation: bool = False, scoring: str = "ours",
                  image_base_dir: str | os.PathLike | None = None,
                  modality_column: str | None = None) -> dict[str, Any]:
    """Score a model on one task; `data`: a local copy (else $MMD_<TASK>_DATA, else the hub); `limit`: the first
    N rows (lmms-eval's --limit takes the same ones); `split`, `question_type_column`, `attachment_token`: see
    `get_benchmark`. Relative image paths resolve against `image_base_dir` (training's `data.image_base_dir`), else
    the data's folder; `modality_column`: the rows' modality for the router usage (default `modality`). With
    `image_ablation` the task runs again per kind of `ABLATIONS`, whose metrics go to
    `result["ablation"][kind]`. `scoring="published"`: the published fork's prompts, budgets and verdicts, with ours
    on the same replies as "ours_*" metrics (published_tasks.py)."""
    bench = with_scoring(get_benchmark(task, split, question_type_column, attachment_token, modality_column),
                         scoring)
    rows = bench.load(data)
    bench.check_rows(rows)  # a misspelt column is named before any answer is generated
    if attachment_token is None and isinstance(bench, ConversationBenchmark):
        # The data's placeholder as training reads it (`data.attachment_token: auto`): the one its rows use, else
        # the model's own (not the toolkit's default, which a model trained on other data may not use).
        token = resolve_attachment_token(AUTO, rows, processor.attachment_token, bench.source(data) or task)
        bench = dataclasses.replace(bench, attachment_token=token)
    if limit is not None:
        rows = rows.select(range(min(int(limit), len(rows))))
    image_dir = str(image_base_dir) if image_base_dir else bench.image_dir(data)
    result = evaluate_rows(model, processor, bench, rows, batch_size, max_new_tokens, progress, image_dir=image_dir)
    result["data"], result["scoring"] = bench.source(data), scoring
    if image_ablation:
        result["ablation"] = {kind: evaluate_rows(model, processor, bench, rows, batch_size, max_new_tokens, progress,
                                                  image_dir=image_dir, ablation=kind)["metrics"]
                              for kind in ABLATIONS}
    return result


def evaluate_synthetic(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor,
                       dataset: Dataset | DatasetDict, batch_size: int = 8, limit: int | None = None,
                       progress: bool = True, image_ablation: bool = False) -> dict[str, Any]:
    """Accuracy on the synthetic VQA set (its test split when given the DatasetDict), per question type beside the
    type's chance level, plus overall: {"accuracy", "chance", "n", "per_type": {type: {accuracy, chance, n}}}; with
    `image_ablation`, also "ablation": {kind: the same metrics with every image replaced}."""
    rows = dataset[choose_split("synthetic_vqa", list(dataset), None, SPLIT_PREFERENCE)] \
        if isinstance(dataset, DatasetDict) else dataset
    if limit is not None:
        rows = rows.select(range(min(int(limit), len(rows))))
    bench = get_benchmark("synthetic_vqa")
    metrics = evaluate_rows(model, processor, bench, rows, batch_size, progress=progress)["metrics"]
    if image_ablation:
        metrics["ablation"] = {kind: evaluate_rows(model, processor, bench, rows, batch_size, progress=progress,
                                                   ablation=kind)["metrics"] for kind in ABLATIONS}
    return metrics


def results_path(path: str | os.PathLike) -> Path:
    """Where `--out` writes: the file it names, or `results.json` inside it when it names a folder (one that exists,
    or a path ending in a separator)."""
    text = os.fspath(path)
    folder = Path(text).is_dir() or text.endswith((os.sep, "/"))
    return Path(text) / "results.json" if folder else Path(text)


def save_results(results: list[dict[str, Any]], path: str | os.PathLike, model: str | None = None) -> Path:
    """The results (every reply included) as JSON at `results_path(path)`; returns that file."""
    path = results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "results": results}, indent=2, default=str) + "\n")
    return path


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per task (and per question type when the task reports them): n, accuracy, yes/no, open, chance;
    then, for results with an image ablation, the accuracy with each kind of replaced image beside the real one, and
    for a routing model the router usage per modality."""
    lines = ["| task | n | accuracy | yes/no | open | chance |", "|---|---|---|---|---|---|"]
    for result in results:
        metrics = result["metrics"]
        lines.append(_row(result["task"], metrics))
        for kind, sub in metrics.get("per_type", {}).items():
            lines.append(_row(f"{result['task']} / {kind}", sub))
    ablated = [result for result in results if result.get("ablation")]
    if ablated:
        lines += ["", ablation_table(ablated)]
    routing = router_usage_tables(results)
    if routing:
        lines += ["", routing]
    return "\n".join(lines)


def router_usage_tables(results: list[dict[str, Any]]) -> str:
    """For each result of a routing model: the fraction of each modality's images sent to each expert."""
    return "\n\n".join(f"router usage, {result['task']} (fraction of each modality's images per expert):\n"
                       + usage_table(result["router_usage"]) for result in results if result.get("router_usage"))


def ablation_table(results: list[dict[str, Any]]) -> str:
    """Accuracy with the real images beside blank, noise and another sample's images (and chance when known)."""
    lines = ["| task | real images | " + " | ".join(ABLATIONS.values()) + " | chance |",
             "|---|---|" + "---|" * len(ABLATIONS) + "---|"]
    for result in results:
        metrics, ablation = result["metrics"], result["ablation"]
        lines.append(_ablation_row(result["task"], metrics, [ablation[kind] for kind in ABLATIONS]))
        for kind, sub in metrics.get("per_type", {}).items():
            lines.append(_ablation_row(f"{result['task']} / {kind}", sub,
                                       [ablation[k].get("per_type", {}).get(kind, {}) for k in ABLATIONS]))
    return "\n".join(lines)


def _ablation_row(name: str, real: dict[str, Any], ablated: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    cells = [cell(real.get("accuracy"))] + [cell(metrics.get("accuracy")) for metrics in ablated]
    return f"| {name} | " + " | ".join(cells) + f" | {cell(real.get('chance'))} |"


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
    lines.append("published evaluation fork's prompts and scoring (the published table's): --scoring published, or "
                 "the lmms-eval tasks mmd_gmai_mmbench_published, mmd_slake_published, mmd_pathvqa_published")
    return "\n".join(lines)
