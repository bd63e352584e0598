"""`multimeditron` / `python -m multimeditron`: one subcommand per module of this package."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from multimeditron.errors import UserError

# subcommand -> module in multimeditron.cli exposing `add_arguments(parser)` and `run(args) -> int`; its one-line
# help is in SUMMARIES below (the only copy).
# Modules are imported only when their subcommand runs, so `--help` stays fast.
SUBCOMMANDS = {
    "train": "train",
    "quickstart": "quickstart",
    "generate": "generate",
    "eval": "evaluate",
    "check-dataset": "check_dataset",
    "convert": "convert",
    "probe": "probe",
    "adapt": "adapt",
    "finetune": "finetune",
    "segment": "segment",
    "train-gate": "train_gate",
    "train-expert": "train_expert",
}

SUMMARIES = {
    "train": "train a model from a YAML config (one process, torchrun or deepspeed)",
    "quickstart": "generate the synthetic VQA set, train a tiny model in two stages, evaluate it",
    "generate": "answer a prompt about an image with a trained model",
    "eval": "score a model on a benchmark task without lmms-eval (or list the tasks)",
    "check-dataset": "validate a dataset and name every bad row",
    "convert": "convert LLaVA JSON or an image-classification folder into an Arrow dataset, or a published config",
    "probe": "evaluate vision experts on labelled images (kNN, linear, logistic regression, few-shot)",
    "adapt": "adapt a vision expert to unlabelled images by token reconstruction (RETFound-Green)",
    "finetune": "fine-tune a vision expert on labelled images (finetune, lp, lora, bitfit)",
    "segment": "train a segmentation decoder on a frozen vision expert (linear or U-Net), Dice/Jaccard on test",
    "train-gate": "train a mixture's modality gate (a timm classifier) for router: pretrained",
    "train-expert": "train a CLIP-family expert contrastively on image-caption pairs (open_clip)",
}


def configure_logging() -> None:
    """The application's log format; INFO on the main process, warnings only on the others (a library module never
    configures logging itself)."""
    from multimeditron.training.arguments import is_main_process

    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _move_launcher_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher passes `--local_rank=N` before the script's own arguments, i.e. before the
    subcommand (`multimeditron --local_rank=0 train ...`); move it behind the subcommand, whose parser takes it."""
    leading: list[str] = []
    while argv and argv[0].split("=")[0] in ("--local_rank", "--local-rank"):
        takes_value = "=" not in argv[0] and len(argv) > 1
        leading += argv[:2] if takes_value else argv[:1]
        argv = argv[2:] if takes_value else argv[1:]
    return argv[:1] + leading + argv[1:] if leading else argv


def main(argv: list[str] | None = None) -> int:
    argv = _move_launcher_rank(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="multimeditron", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        sub.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(f"multimeditron.cli.{SUBCOMMANDS[argv[0]]}")
    command_parser = argparse.ArgumentParser(prog=f"multimeditron {argv[0]}", description=SUMMARIES[argv[0]])
    module.add_arguments(command_parser)
    command_parser.add_argument("--debug", action="store_true",
                                help="show the full traceback of an error instead of one `error: ...` line")
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        # Something the user can fix (a config key, a path, a dataset, a task name): one line, no traceback.
        if args.debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """A user error's message; one raised in a DataLoader worker arrives wrapped in the worker's traceback text
    ("Caught ... in DataLoader worker process 0. Original Traceback ..."), whose last line is the message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
