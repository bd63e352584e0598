"""`multimeditron segment`: a segmentation decoder (linear or U-Net-style) on a frozen vision expert, trained on
image + mask pairs and scored by per-class Dice and Jaccard on test, with overlay PNGs."""
from __future__ import annotations

import argparse

from multimeditron.cli.adaptation_args import SPEC_HELP, add_loop_arguments, loop_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expert", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="ROOT/{train,val,test}/{images,masks}/ or ROOT/{images,masks}/ (same file names; mask "
                             "pixels are class ids, 0 = background), or a table with image, mask and split columns")
    parser.add_argument("--decoder", default="linear", choices=("linear", "unet"))
    parser.add_argument("--out", default="runs/segment", metavar="DIR",
                        help="decoder.safetensors, segmentation.json (per-class Dice/Jaccard), overlays/")
    parser.add_argument("--tiny", action="store_true", help="build the expert's tiny architecture (smoke runs)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: largest train mask id + 1")
    parser.add_argument("--dice-weight", type=float, default=1.0, help="loss = cross-entropy + W x Dice loss")
    parser.add_argument("--overlays", type=int, default=4, help="test cases drawn as PNGs")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--mask-column", default="mask")
    parser.add_argument("--split-column", default="split")
    add_loop_arguments(parser, epochs=20, batch_size=16, lr=1e-3, warmup_epochs=1, weight_decay=1e-4)


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.experts import load_expert
    from multimeditron.adaptation.segmentation.train import SegmentSettings, segment
    from multimeditron.data.segmentation_pairs import load_segmentation_pairs

    if args.resume:
        raise SystemExit("multimeditron segment: --resume is not supported (decoders train in seconds to minutes)")
    data = load_segmentation_pairs(args.data, args.image_column, args.mask_column, args.split_column, args.seed)
    expert, spec = load_expert(args.expert, tiny=args.tiny, seed=args.seed)
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    print(f"[segment] data {data.name}: {sizes}; expert {expert.describe()} (frozen); decoder {args.decoder}")
    result = segment(expert, data, args.out, loop_settings(args),
                     SegmentSettings(decoder=args.decoder, num_classes=args.num_classes, dice_weight=args.dice_weight,
                                     weight_decay=args.weight_decay, overlays=args.overlays), spec.to_dict())
    print("\n| class | Dice | Jaccard | pixels |\n|---|---|---|---|")
    for name, m in result["test"]["per_class"].items():
        cells = ("-", "-") if m["dice"] is None else (f"{m['dice']:.3f}", f"{m['jaccard']:.3f}")
        print(f"| {name} | {cells[0]} | {cells[1]} | {m['pixels']} |")
    test = result["test"]
    if test["score"] is not None:
        print(f"\n[segment] test: mean Dice {test['dice']:.3f}, mean Jaccard {test['jaccard']:.3f}, score "
              f"{test['score']:.3f} (best epoch {result['best_epoch']} on val); results in {args.out}")
    return 0
