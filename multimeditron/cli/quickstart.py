"""`multimeditron quickstart --out DIR`: the project's main job on its embedded default (see multimeditron.quickstart)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.quickstart import STAGE1_EPOCHS, STAGE2_EPOCHS
    from multimeditron.quickstart_expert import WARMUP_EPOCHS, WARMUP_IMAGES

    parser.add_argument("--out", default="runs/quickstart", help="output folder (data, checkpoints, metrics.json)")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage1-epochs", type=int, default=STAGE1_EPOCHS)
    parser.add_argument("--stage2-epochs", type=int, default=STAGE2_EPOCHS)
    parser.add_argument("--warmup-epochs", type=int, default=WARMUP_EPOCHS,
                        help="epochs of the expert's fine-tuning on labelled drawn images before the VLM stages "
                             "(0: none; the random expert stays frozen in stage 1 and trains in stage 2 only: an "
                             "ablation, not the measured recipe)")
    parser.add_argument("--warmup-images", type=int, default=WARMUP_IMAGES,
                        help="labelled drawn images the expert is fine-tuned on (val and test: a tenth as many each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: as fast as 2 for this tiny model on an idle 2-core "
                             "machine, and it does not stall when other jobs share the cores; the result depends "
                             "on it, as float sums are ordered by it)")


def run(args: argparse.Namespace) -> int:
    import torch

    from multimeditron.errors import UsageError
    from multimeditron.quickstart import run_quickstart

    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.warmup_epochs < 0:
        raise UsageError(f"--warmup-epochs must be at least 0, got {args.warmup_epochs}")
    if args.warmup_epochs and args.warmup_images < 30:
        raise UsageError(f"--warmup-images must be at least 30 (val and test hold a tenth each, and need images of "
                         f"every label), got {args.warmup_images}")
    torch.set_num_threads(args.threads)
    from multimeditron.cli import configure_logging

    configure_logging()
    run_quickstart(args.out, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                   epochs=(args.stage1_epochs, args.stage2_epochs),
                   warmup_epochs=args.warmup_epochs, warmup_images=args.warmup_images)
    return 0
