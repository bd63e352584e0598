"""`multimeditron eval`: score a saved model on a benchmark task without lmms-eval, or list the tasks."""
from __future__ import annotations

import argparse
import os

from multimeditron.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="saved model folder (model + processor)")
    parser.add_argument("--task", action="append", default=[], metavar="NAME",
                        help="a task from --list-tasks; repeat or comma-separate for several")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="local copy of the task's data: .parquet/.arrow file, parquet folder or save_to_disk "
                             "folder (default: $MMD_<TASK>_DATA, else the hub); one task at a time")
    parser.add_argument("--split", default=None,
                        help="the split to score (default: the task's own; for multimediset: test, else validation, "
                             "val, train, else the only one)")
    parser.add_argument("--question-type-column", default=None, metavar="COL",
                        help="multimediset: also report accuracy per value of this column")
    parser.add_argument("--attachment-token", default=None,
                        help="multimediset/synthetic_vqa: the image placeholder in the data (default: the known "
                             "placeholder its rows use, as training's `auto`, else the model's)")
    parser.add_argument("--modality-column", default=None, metavar="COL",
                        help="the rows' modality column, for the router usage per modality that a model with a "
                             "learned or pretrained router reports (default: modality)")
    parser.add_argument("--image-base-dir", default=None, metavar="DIR",
                        help="folder relative image paths resolve against (training's data.image_base_dir; "
                             "default: the data's own folder)")
    parser.add_argument("--image-ablation", action="store_true",
                        help="run each task again with every image replaced by a blank image, by noise and by "
                             "another sample's image, and print those accuracies beside the real one")
    parser.add_argument("--scoring", choices=("ours", "published"), default="ours",
                        help="published: the published evaluation fork's prompts, token budgets and verdicts (the "
                             "published table's), with ours on the same replies beside them")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the results (with every reply) as JSON to FILE, or to FOLDER/results.json when "
                             "it names a folder (an existing one, or a path ending in /)")
    parser.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    parser.add_argument("--tasks-dir", action="store_true",
                        help="print the folder of lmms-eval task files (for --include_path) and exit")


def run(args: argparse.Namespace) -> int:
    from multimeditron.evaluation import TASKS_DIR

    if args.tasks_dir:
        print(TASKS_DIR)
        return 0
    from multimeditron.evaluation.evaluator import (
        describe_tasks,
        evaluate_task,
        markdown_table,
        save_results,
    )

    if args.list_tasks:
        print(describe_tasks())
        return 0
    tasks = [name.strip() for value in args.task for name in value.split(",") if name.strip()]
    if not args.model or not tasks:
        raise UsageError("--model and --task are required (or --list-tasks)")
    if args.data and len(tasks) > 1:
        raise UsageError("--data names one task's data; give one --task with it")
    from multimeditron.evaluation.benchmarks import get_benchmark
    from multimeditron.evaluation.published_tasks import published_table, with_scoring
    from multimeditron.inference import check_model_path

    try:  # refuse a wrong option or task name, a missing model, data or column before loading the model
        benches = [with_scoring(get_benchmark(task, args.split, args.question_type_column, args.attachment_token,
                                              args.modality_column), args.scoring) for task in tasks]
    except (KeyError, ValueError) as error:
        raise UsageError(str(error.args[0])) from error
    check_model_path(args.model)
    for bench in benches:
        bench.check_source(args.data)
        if args.question_type_column and (args.data or os.environ.get(bench.env_var)):
            bench.check_rows(bench.load(args.data))  # a local copy is memory-mapped: cheap to look at
    from multimeditron.inference import load_pretrained

    model, processor = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    results = [evaluate_task(model, processor, task, data=args.data, limit=args.limit, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, split=args.split,
                             question_type_column=args.question_type_column, attachment_token=args.attachment_token,
                             image_ablation=args.image_ablation, scoring=args.scoring,
                             image_base_dir=args.image_base_dir, modality_column=args.modality_column)
               for task in tasks]
    if args.out:
        print(f"results in {save_results(results, args.out, model=args.model)}")
    print(markdown_table(results) if args.scoring == "ours" else published_table(results))
    ablated = [result for result in results if result.get("ablation")]
    if ablated and args.scoring != "ours":  # markdown_table already ends with it
        from multimeditron.evaluation.evaluator import ablation_table

        print("\n" + ablation_table(ablated))
    if args.scoring != "ours":  # markdown_table already ends with it
        from multimeditron.evaluation.evaluator import router_usage_tables

        routing = router_usage_tables(results)
        if routing:
            print("\n" + routing)
    return 0
