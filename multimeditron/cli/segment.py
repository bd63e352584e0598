"""`multimeditron segment`: a segmentation decoder (linear or U-Net-style) on a frozen vision expert, trained on
image + mask pairs on the engine and scored by per-class Dice and Jaccard on test, with overlay PNGs. Every flag is
a shorthand of a key of the YAML recipe (`--config`)."""
from __future__ import annotations

import argparse

from multimeditron.cli.recipe_flags import (
    Shorthand,
    add_recipe_arguments,
    expert_shorthands,
    schedule_shorthands,
    training_shorthands,
)

SHORTHANDS = [
    *expert_shorthands(),
    Shorthand("--data", "data.path", "ROOT/{train,val,test}/{images,masks}/ or ROOT/{images,masks}/ (same file "
              "names; mask pixels are class ids, 0 = background), or a table with image, mask and split columns",
              type=str, metavar="PATH"),
    Shorthand("--image-column", "data.image_column"),
    Shorthand("--mask-column", "data.mask_column"),
    Shorthand("--split-column", "data.split_column"),
    Shorthand("--decoder", "segment.decoder"),
    Shorthand("--num-classes", "segment.num_classes", "default: largest train mask id + 1", type=int),
    Shorthand("--dice-weight", "segment.dice_weight", "loss = cross-entropy + W x Dice loss"),
    Shorthand("--loss", "segment.loss", "ce+dice, or dice (monai's Dice loss alone, DINOv2-on-radiology's)"),
    Shorthand("--overlays", "segment.overlays", "test cases drawn as PNGs"),
    *schedule_shorthands(),
    *training_shorthands(),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.recipes import SegmentRecipe

    add_recipe_arguments(parser, SegmentRecipe, SHORTHANDS, {"training_args": "training (HF TrainingArguments)"})
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.experts import load_expert, spec_text
    from multimeditron.adaptation.recipes import SegmentRecipe
    from multimeditron.adaptation.segmentation.train import segment, segment_plan
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.data.segmentation_pairs import load_segmentation_pairs
    from multimeditron.training.arguments import is_main_process, world_size

    recipe = load_command_recipe(SegmentRecipe, args, SHORTHANDS)
    seed = int(recipe.training_arguments()["seed"])
    section = recipe.data
    data = load_segmentation_pairs(section.path, section.image_column, section.mask_column, section.split_column, seed)
    expert, spec = load_expert(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny, seed=seed)
    if args.dry_run:
        print(segment_plan(recipe, data, expert, world_size()))
        return 0
    say = print if is_main_process() else (lambda *_: None)
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    say(f"[segment] data {data.name}: {sizes}; expert {expert.describe()} (frozen); decoder {recipe.segment.decoder}")
    result = segment(expert, data, recipe, spec.to_dict(), world_size())
    say("\n| class | Dice | Jaccard | pixels |\n|---|---|---|---|")
    for name, m in result["test"]["per_class"].items():
        cells = ("-", "-") if m["dice"] is None else (f"{m['dice']:.3f}", f"{m['jaccard']:.3f}")
        say(f"| {name} | {cells[0]} | {cells[1]} | {m['pixels']} |")
    test = result["test"]
    if test["score"] is not None:
        say(f"\n[segment] test: mean Dice {test['dice']:.3f}, mean Jaccard {test['jaccard']:.3f}, score "
            f"{test['score']:.3f} (best epoch {result['best_epoch']} on val); results in "
            f"{recipe.training_arguments()['output_dir']}")
    return 0
