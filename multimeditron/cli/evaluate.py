"""`multimeditron eval`: score a saved model on a benchmark task without lmms-eval, or list the tasks."""
from __future__ import annotations

import argparse

HELP = "score a model on a benchmark task without lmms-eval (or list the tasks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="saved model folder (model + processor)")
    parser.add_argument("--task", action="append", default=[], metavar="NAME",
                        help="a task from --list-tasks; repeat or comma-separate for several")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="local copy of the task's data: .parquet/.arrow file, parquet folder or save_to_disk "
                             "folder (default: $MMD_<TASK>_DATA, else the hub); one task at a time")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the results (with every reply) as JSON")
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
    from multimeditron.evaluation.evaluator import describe_tasks, evaluate_task, markdown_table, save_results

    if args.list_tasks:
        print(describe_tasks())
        return 0
    tasks = [name.strip() for value in args.task for name in value.split(",") if name.strip()]
    if not args.model or not tasks:
        raise SystemExit("multimeditron eval: --model and --task are required (or --list-tasks)")
    if args.data and len(tasks) > 1:
        raise SystemExit("multimeditron eval: --data names one task's data; give one --task with it")
    from multimeditron.inference import load_pretrained

    model, processor = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    results = [evaluate_task(model, processor, task, data=args.data, limit=args.limit, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens) for task in tasks]
    if args.out:
        save_results(results, args.out, model=args.model)
    print(markdown_table(results))
    return 0
