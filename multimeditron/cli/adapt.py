"""`multimeditron adapt`: self-supervised adaptation of a vision expert to unlabelled images (RETFound-Green's token
reconstruction) on the engine; writes an adapted-expert folder that a VLM stage config loads as
`{id, checkpoint: OUT/final}`. Every flag is a shorthand of a key of the YAML recipe (`--config`)."""
from __future__ import annotations

import argparse
import json

from multimeditron.cli.recipe_flags import (
    SWITCH,
    Shorthand,
    add_recipe_arguments,
    bad_image_shorthand,
    expert_shorthands,
    schedule_shorthands,
    training_shorthands,
)

SHORTHANDS = [
    *expert_shorthands(),
    Shorthand("--data", "data.path", "unlabelled images: any folder of images (searched recursively), or a "
              "parquet/arrow/save_to_disk table (its `image` column or the MultiMediset `modalities` images)",
              type=str, metavar="PATH"),
    Shorthand("--image-column", "data.image_column", "table: the image column (default: image/modalities)", type=str),
    bad_image_shorthand(),
    Shorthand("--objective", "objective", "the self-supervised objective (RETFound-Green's token reconstruction)"),
    Shorthand("--noise", "token_reconstruction.noise", "Gaussian pixel noise std as a fraction of each image's "
              "per-channel std (0: none)"),
    Shorthand("--mask-max", "token_reconstruction.mask_max", "each image masks a fraction U(0, MASK_MAX) of its "
              "patch embeddings (0: none)"),
    Shorthand("--layerscale-init", "token_reconstruction.layerscale_init", "the projector's LayerScale start"),
    Shorthand("--drop-path", "token_reconstruction.drop_path", "stochastic depth of the trained copy"),
    Shorthand("--augment", "token_reconstruction.augment", "random resized crops and flips of the clean image",
              type=SWITCH),
    *schedule_shorthands(),
    *training_shorthands(),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.recipes import AdaptRecipe

    add_recipe_arguments(parser, AdaptRecipe, SHORTHANDS, {"training_args": "training (HF TrainingArguments)"})
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.experts import expert_spec, load_expert, spec_text
    from multimeditron.adaptation.images import load_unlabelled_images
    from multimeditron.adaptation.recipes import AdaptRecipe
    from multimeditron.adaptation.token_reconstruction import (
        adapt_plan,
        adapt_token_reconstruction,
    )
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.run_folder import run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import is_main_process, world_size

    recipe = load_command_recipe(AdaptRecipe, args, SHORTHANDS)
    use_threads(recipe.threads)
    values = recipe.training_arguments(world_size())
    parsed = expert_spec(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny)  # before any image is read
    data = load_unlabelled_images(recipe.data.path, recipe.data.image_column, recipe.data.on_bad_image)
    expert, spec = load_expert(parsed, seed=int(values["seed"]))
    if args.dry_run:
        print(adapt_plan(recipe, len(data.images), expert, world_size()))
        return 0
    say = print if is_main_process() else (lambda *_: None)
    say(f"[adapt] {len(data.images)} images from {recipe.data.path}; expert {expert.describe()}")
    for note in data.notes:
        say(f"[adapt] note: {note}")
    with run_folder(values["output_dir"], "adapt", {**recipe.to_dict(), "training_args": values},
                    {"train": data.fingerprint()}, resume=values.get("resume_from_checkpoint"),
                    overwrite=args.overwrite, main_process=is_main_process(), say=say):
        summary = adapt_token_reconstruction(expert, spec, data.images, data.folder, recipe, world_size(),
                                             data.refused)
    say(f"[adapt] loss {summary['first_loss']:.4g} (epoch 1) -> {summary['last_loss']:.4g} "
        f"(epoch {summary['epochs']}); adapted expert in {summary['final']}")
    say("[adapt] use it in a stage config as  model.experts: [" + json.dumps(
        {k: v for k, v in summary["spec"].items() if k in ("id", "checkpoint")}) + "]")
    return 0
