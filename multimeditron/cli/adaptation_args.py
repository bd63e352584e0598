"""Options shared by `multimeditron finetune`, `adapt` and `segment`: the training loop's knobs."""
from __future__ import annotations

import argparse

from multimeditron.cli.probe import SPEC_HELP as PROBE_SPEC_HELP

SPEC_HELP = PROBE_SPEC_HELP.removesuffix("; repeat for several experts") + (
    "; or an adapted-expert folder written by finetune/adapt (runs/adapt/final)")


def add_loop_arguments(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float | None,
                       warmup_epochs: float, weight_decay: float) -> None:
    loop = parser.add_argument_group("training loop")
    loop.add_argument("--epochs", type=int, default=epochs)
    loop.add_argument("--batch-size", type=int, default=batch_size)
    loop.add_argument("--lr", type=float, default=lr, help="peak learning rate (after warmup)")
    loop.add_argument("--min-lr", type=float, default=1e-6, help="where the cosine ends")
    loop.add_argument("--warmup-epochs", type=float, default=warmup_epochs, help="linear warmup, then cosine")
    loop.add_argument("--weight-decay", type=float, default=weight_decay)
    loop.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (default: off)")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    loop.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                      help="bf16 autocast (default: on CUDA only)")
    loop.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    loop.add_argument("--resume", action="store_true", help="continue the run from OUT/last/")


def loop_settings(args: argparse.Namespace, lr: float | None = None):
    from multimeditron.adaptation.loop import LoopSettings
    from multimeditron.inference import resolve_device

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return LoopSettings(epochs=args.epochs, batch_size=args.batch_size, lr=lr if lr is not None else args.lr,
                        min_lr=args.min_lr, warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip,
                        seed=args.seed, device=str(resolve_device(args.device)), bf16=args.bf16,
                        num_workers=args.workers)
