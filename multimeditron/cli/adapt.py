"""`multimeditron adapt`: self-supervised adaptation of a vision expert to unlabelled images (RETFound-Green's token
reconstruction); writes an adapted-expert folder that a VLM stage config loads as `{id, checkpoint: OUT/final}`."""
from __future__ import annotations

import argparse
import json

from multimeditron.cli.adaptation_args import SPEC_HELP, add_loop_arguments, loop_settings

OBJECTIVES = ("token-reconstruction",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expert", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="unlabelled images: any folder of images (searched recursively), or a parquet/arrow/"
                             "save_to_disk table (its `image` column or the MultiMediset `modalities` images)")
    parser.add_argument("--objective", default="token-reconstruction", choices=OBJECTIVES)
    parser.add_argument("--out", default="runs/adapt", metavar="DIR",
                        help="run folder: final/ (the adapted expert), last/ (resumable state), history.json")
    parser.add_argument("--tiny", action="store_true", help="build the expert's tiny architecture (smoke runs)")
    parser.add_argument("--image-column", default=None, help="table: the image column (default: image/modalities)")
    parser.add_argument("--augment", action="store_true", help="random resized crops and flips of the clean image")
    tr = parser.add_argument_group("token reconstruction")
    tr.add_argument("--noise", type=float, default=0.2,
                    help="Gaussian pixel noise std as a fraction of each image's per-channel std (0: none)")
    tr.add_argument("--mask-max", type=float, default=1 / 3,
                    help="each image masks a fraction U(0, MASK_MAX) of its patch embeddings (0: none)")
    tr.add_argument("--layerscale-init", type=float, default=1e-5, help="the projector's LayerScale start")
    tr.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth of the trained copy")
    add_loop_arguments(parser, epochs=10, batch_size=32, lr=5e-5, warmup_epochs=1.0, weight_decay=0.05)


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.experts import load_expert
    from multimeditron.adaptation.images import unlabelled_images
    from multimeditron.adaptation.token_reconstruction import CorruptionSettings, adapt_token_reconstruction

    images, folder = unlabelled_images(args.data, args.image_column)
    expert, spec = load_expert(args.expert, tiny=args.tiny, seed=args.seed)
    print(f"[adapt] {len(images)} images from {args.data}; expert {expert.describe()}")
    summary = adapt_token_reconstruction(
        expert, spec, images, folder, args.out, loop_settings(args),
        CorruptionSettings(noise=args.noise, mask_max=args.mask_max), layerscale_init=args.layerscale_init,
        drop_path=args.drop_path, weight_decay=args.weight_decay, augment=args.augment, resume=args.resume)
    print(f"[adapt] loss {summary['first_loss']:.4g} (epoch 1) -> {summary['last_loss']:.4g} "
          f"(epoch {summary['epochs']}); adapted expert in {summary['final']}")
    print("[adapt] use it in a stage config as  model.experts: [" + json.dumps(
        {k: v for k, v in summary["spec"].items() if k in ("id", "checkpoint")}) + "]")
    return 0
