"""`multimeditron adapt`: self-supervised adaptation of a vision expert to unlabelled images on the engine
(`--objective token-reconstruction`: RETFound-Green's token reconstruction; `--objective mermed`: MerMED-FM's
memory-augmented self-distillation, from one `--data` folder or several `data.sources`); writes an adapted-expert folder that a VLM stage config loads as
`{id, checkpoint: OUT/final}`. Every flag is a shorthand of a key of the YAML recipe (`--config`)."""
from __future__ import annotations

import argparse
import json
from typing import Any

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
    Shorthand("--objective", "objective", "token-reconstruction, or mermed (MerMED-FM's values for the "
              "training_args and schedule keys not given: cookbook/experts/mermed/pretrain.yaml)"),
    Shorthand("--noise", "token_reconstruction.noise", "Gaussian pixel noise std as a fraction of each image's "
              "per-channel std (0: none)"),
    Shorthand("--mask-max", "token_reconstruction.mask_max", "each image masks a fraction U(0, MASK_MAX) of its "
              "patch embeddings (0: none)"),
    Shorthand("--layerscale-init", "token_reconstruction.layerscale_init", "the projector's LayerScale start"),
    Shorthand("--drop-path", "token_reconstruction.drop_path", "stochastic depth of the trained copy"),
    Shorthand("--augment", "token_reconstruction.augment", "random resized crops and flips of the clean image",
              type=SWITCH),
    Shorthand("--local-crops", "mermed.local_crops_number", "mermed: local crops per image"),
    Shorthand("--out-dim", "mermed.out_dim", "mermed: memory bank entries"),
    Shorthand("--partition-size", "mermed.partition_size", "mermed: entries per random partition of the bank"),
    Shorthand("--momentum-teacher", "mermed.momentum_teacher", "mermed: EMA momentum at the start (cosine to 1)"),
    Shorthand("--teacher-temp", "mermed.teacher_temp", "mermed: teacher temperature after its warm-up"),
    Shorthand("--export", "mermed.export", "mermed: which network final/ holds"),
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
    from multimeditron.run_folder import check_fresh_out, run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import is_main_process, world_size

    recipe = load_command_recipe(AdaptRecipe, args, SHORTHANDS)
    use_threads(recipe.threads)
    values = recipe.training_arguments(world_size())
    check_fresh_out(values["output_dir"], "adapt", overwrite=args.overwrite,
                    resume=values.get("resume_from_checkpoint"), dry_run=args.dry_run)
    parsed = expert_spec(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny)  # before any image is read
    if recipe.objective == "mermed":
        return _run_mermed(recipe, parsed, values, args)
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


def _run_mermed(recipe: Any, parsed: Any, values: dict[str, Any], args: argparse.Namespace) -> int:
    from multimeditron.adaptation.experts import load_expert
    from multimeditron.adaptation.multicrop import load_source_images
    from multimeditron.adaptation.self_distillation import adapt_mermed, mermed_plan
    from multimeditron.run_folder import run_folder
    from multimeditron.training.arguments import is_main_process, world_size

    loaded = load_source_images(recipe.data)  # every file checked (data.on_bad_image) before the expert is built
    expert, spec = load_expert(parsed, seed=int(values["seed"]))
    if args.dry_run:
        print(mermed_plan(recipe, expert, world_size(), loaded))
        return 0
    say = print if is_main_process() else (lambda *_: None)
    say(f"[adapt] mermed on {recipe.data.path or len(recipe.data.sources)} source(s); expert {expert.describe()}")
    for note in (n for images in loaded for n in images.notes):
        say(f"[adapt] note: {note}")
    with run_folder(values["output_dir"], "adapt", {**recipe.to_dict(), "training_args": values},
                    {f"source {i}": images.fingerprint() for i, images in enumerate(loaded)},
                    resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                    main_process=is_main_process(), say=say):
        summary = adapt_mermed(expert, spec, recipe, world_size(), loaded)
    say(f"[adapt] loss {summary['first_loss']:.4g} (epoch 1) -> {summary['last_loss']:.4g} "
        f"(epoch {summary['epochs']}); adapted expert ({recipe.mermed.export}) in {summary['final']}")
    say("[adapt] use it in a stage config as  model.experts: [" + json.dumps(
        {k: v for k, v in summary["spec"].items() if k in ("id", "checkpoint")}) + "]")
    return 0
