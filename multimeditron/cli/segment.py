"""`multimeditron segment`: a segmentation decoder (linear or U-Net-style) on a frozen vision expert, trained on
image + mask pairs on the engine and scored by per-class Dice and Jaccard on test, with overlay PNGs. Every flag is
a shorthand of a key of the YAML recipe (`--config`)."""
from __future__ import annotations

import argparse

from multimeditron.cli.recipe_flags import (
    Shorthand,
    add_recipe_arguments,
    bad_image_shorthand,
    expert_shorthands,
    schedule_shorthands,
    training_shorthands,
)

SHORTHANDS = [
    *expert_shorthands(),
    Shorthand("--data", "data.path", "ROOT/{train,val,test}/{images,masks}/ or ROOT/{images,masks}/ (same file "
              "names; mask pixels are class ids, 0 = background, each mask the size of its image), or a table with "
              "image, mask and split columns", type=str, metavar="PATH"),
    Shorthand("--image-column", "data.image_column", "table: the image column"),
    Shorthand("--mask-column", "data.mask_column", "table: the mask column"),
    Shorthand("--split-column", "data.split_column", "table: the column with train/val/test"),
    Shorthand("--ignore-index", "data.ignore_index", "mask value left out of the loss and the metrics (VOC's 255)",
              type=int),
    bad_image_shorthand(),
    Shorthand("--decoder", "segment.decoder", "linear: BatchNorm + 1x1 conv on the last block; unet: 4 blocks "
              "merged coarse to fine; dinov2_linear, dinov2_unet: DINOv2-on-radiology's"),
    Shorthand("--num-classes", "segment.num_classes", "classes including background 0 (default: the largest train "
              "mask id + 1)", type=int),
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
    from multimeditron.adaptation.experts import expert_spec, load_expert, spec_text
    from multimeditron.adaptation.recipes import SegmentRecipe
    from multimeditron.adaptation.segmentation.train import segment, segment_plan
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.data.images import images_fingerprint
    from multimeditron.data.segmentation_pairs import load_segmentation_pairs
    from multimeditron.run_folder import check_fresh_out, run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import is_main_process, world_size

    recipe = load_command_recipe(SegmentRecipe, args, SHORTHANDS)
    use_threads(recipe.threads)
    values = recipe.training_arguments(world_size())
    check_fresh_out(values["output_dir"], "segment", overwrite=args.overwrite,
                    resume=values.get("resume_from_checkpoint"), dry_run=args.dry_run)
    seed = int(values["seed"])
    parsed = expert_spec(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny)  # before any image is read
    section = recipe.data
    data = load_segmentation_pairs(section.path, section.image_column, section.mask_column, section.split_column, seed,
                                   on_bad_image=section.on_bad_image, ignore_index=section.ignore_index,
                                   palette=section.palette, num_classes=recipe.segment.num_classes)
    expert, spec = load_expert(parsed, seed=seed)
    if args.dry_run:
        print(segment_plan(recipe, data, expert, world_size()))
        return 0
    say = print if is_main_process() else (lambda *_: None)
    out = values["output_dir"]
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    say(f"[segment] data {data.name}: {sizes}; {data.num_classes} classes; expert {expert.describe()} (frozen); "
        f"decoder {recipe.segment.decoder}")
    for note in data.notes:
        say(f"[segment] note: {note}")
    with run_folder(out, "segment", {**recipe.to_dict(), "training_args": values},
                    {s: images_fingerprint(p.images, p.masks, folder=data.folder) for s, p in data.splits.items()},
                    resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                    main_process=is_main_process(), say=say):
        result = segment(expert, data, recipe, spec.to_dict(), world_size())
    say("\n| class | Dice | Jaccard | pixels |\n|---|---|---|---|")
    for name, m in result["test"]["per_class"].items():
        cells = ("-", "-") if m["dice"] is None else (f"{m['dice']:.3f}", f"{m['jaccard']:.3f}")
        say(f"| {name} | {cells[0]} | {cells[1]} | {m['pixels']} |")
    test = result["test"]
    if test["score"] is not None:
        say(f"\n[segment] test (each mask at its own resolution): mean Dice {test['dice']:.3f}, mean Jaccard "
            f"{test['jaccard']:.3f}, score {test['score']:.3f} (best epoch {result['best_epoch']} on val); results "
            f"in {out}")
    return 0
