"""`multimeditron quickstart --out DIR`: the project's main job on its embedded default (see multimeditron.quickstart)."""
from __future__ import annotations

import argparse

HELP = "synthetic VQA -> two-stage training of a tiny model -> held-out accuracy per question type"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output folder (data, checkpoints, metrics.json)")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage1-epochs", type=int, default=None, help="stage-1 epochs (default: the tuned value)")
    parser.add_argument("--stage2-epochs", type=int, default=None, help="stage-2 epochs (default: the tuned value)")


def run(args: argparse.Namespace) -> int:
    from multimeditron.quickstart import STAGE1_EPOCHS, STAGE2_EPOCHS, run_quickstart

    epochs = (args.stage1_epochs or STAGE1_EPOCHS, args.stage2_epochs or STAGE2_EPOCHS)
    run_quickstart(args.out, num_train=args.num_train, num_test=args.num_test, seed=args.seed, epochs=epochs)
    return 0
