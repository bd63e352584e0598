"""`multimeditron train-expert --objective clip`: train a CLIP-family expert contrastively on image-caption pairs
(the published `train-expert`, `scripts/expert_model_train.py`, `biomed_train.py`) with open_clip's model and loss,
on the engine (`torchrun` for several processes); the best epoch by val recall@1 goes to `OUT/best/`, an expert
folder the registry, `probe` and a VLM stage YAML load. Several `--config` files run one after another, each to
its own output folder, after every recipe and its data were checked (the published `batch-train-expert`, which starts
them in parallel). Every flag is a shorthand of a key of the YAML recipe (`--config`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
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
    Shorthand("--objective", "objective", "clip: contrastive image-text training (open_clip ClipLoss)"),
    Shorthand("--data", "data.paths", "a MultiMediset dataset (caption rows `text`, or conversations: the first "
              "assistant turn) or a table with image and caption columns (repeatable)", type=str, append=True,
              metavar="PATH"),
    Shorthand("--image-column", "data.image_column", "the image column (default: image, else the first of "
              "modalities)", type=str),
    Shorthand("--caption-column", "data.caption_column", "the caption column (default: text, else the first "
              "assistant turn of conversations)", type=str),
    Shorthand("--modality", "data.modalities", "train on this modality only (repeatable; default: all)", type=str,
              append=True, metavar="NAME"),
    Shorthand("--modality-column", "data.modality_column", "the column naming each pair's modality (per-modality "
              "training, zero-shot classes)"),
    bad_image_shorthand(),
    Shorthand("--val-fraction", "data.val_fraction", "share of train carved into val when absent"),
    Shorthand("--max-samples", "data.max_samples", "per dataset and split, the first N rows"),
    Shorthand("--text", "contrastive.text", "open_clip model name or hf-hub id of the text tower and tokenizer",
              type=str),
    Shorthand("--text-pretrained", "contrastive.text_pretrained", "its weights: an open_clip tag or a file",
              type=str),
    Shorthand("--freeze-vision", "contrastive.train_vision", "train the text tower only", type=SWITCH, value=False),
    Shorthand("--freeze-text", "contrastive.train_text", "train the vision tower only", type=SWITCH, value=False),
    Shorthand("--context-length", "contrastive.context_length", "caption tokens (none: the text tower's own)"),
    Shorthand("--name", "contrastive.name", "the expert's name in a gate's class_experts", type=str),
    *schedule_shorthands(),
    *training_shorthands(),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.contrastive.recipe import ContrastiveRecipe

    add_recipe_arguments(parser, ContrastiveRecipe, SHORTHANDS, {"training_args": "training (HF TrainingArguments)"},
                         several_configs=True)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _line(metrics: dict) -> str:
    text = (f"recall@1 image->text {metrics['i2t_r1']:.3f}, text->image {metrics['t2i_r1']:.3f} (chance "
            f"{metrics['chance_r1']:.3f})")
    if "zero_shot_accuracy" in metrics:
        text += f"; zero-shot modality accuracy {metrics['zero_shot_accuracy']:.3f}"
    return text


def load_recipes(args: argparse.Namespace) -> list[tuple[str | None, Any]]:
    """(config file, recipe) for each `--config` (one recipe from the flags alone without any), each with the
    flags and `--set` applied, all validated before anything trains: a bad recipe, or two that write to the same
    output folder, is one error naming the files."""
    from multimeditron.adaptation.contrastive.recipe import ContrastiveRecipe
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.config import ConfigError

    recipes = [(config, load_command_recipe(ContrastiveRecipe, argparse.Namespace(**{**vars(args), "config": config}),
                                            SHORTHANDS)) for config in (args.config or [None])]
    seen: dict[Path, str | None] = {}
    for config, recipe in recipes:
        out = Path(recipe.training_arguments()["output_dir"]).expanduser().resolve()
        if out in seen:
            raise ConfigError(f"{config}: training_args.output_dir (--out): {out} is also the output of {seen[out]}; "
                              f"give each recipe its own output folder")
        seen[out] = config
    return recipes


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.contrastive.data import load_caption_pairs
    from multimeditron.run_folder import check_fresh_out, check_run_folder
    from multimeditron.training.arguments import is_main_process, world_size

    recipes = load_recipes(args)
    for _, recipe in recipes:  # an earlier run in an output folder, before any data is read
        early = recipe.training_arguments(world_size())
        check_fresh_out(early["output_dir"], "train-expert", overwrite=args.overwrite,
                        resume=early.get("resume_from_checkpoint"), dry_run=args.dry_run)
    # every recipe's data read before the first one trains (pairs are read lazily: only the tables are opened)
    runs = [(config, recipe, load_caption_pairs(recipe.data, seed=int(recipe.training_arguments()["seed"])))
            for config, recipe in recipes]
    fingerprints = [{s: p.fingerprint() for s, p in splits.items()} for _, _, splits in runs]
    if not args.dry_run:  # every output folder checked too before the first recipe trains
        for (_, recipe, _), data in zip(runs, fingerprints):
            values = recipe.training_arguments(world_size())
            check_run_folder(values["output_dir"], "train-expert", {**recipe.to_dict(), "training_args": values},
                             data, resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                             say=lambda *_: None)
    say = print if is_main_process() else (lambda *_: None)
    for index, ((config, recipe, splits), data) in enumerate(zip(runs, fingerprints), start=1):
        if len(runs) > 1:
            say(f"[train-expert] recipe {index} of {len(runs)}: {config}")
        _run_one(args, recipe, splits, data)
    return 0


def _run_one(args: argparse.Namespace, recipe: Any, splits: dict, fingerprints: dict[str, str]) -> None:
    from multimeditron.adaptation.contrastive.train import contrastive_plan, train_contrastive
    from multimeditron.data.bad_images import refused_summary
    from multimeditron.run_folder import run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import is_main_process, world_size

    use_threads(recipe.threads)
    values = recipe.training_arguments(world_size())
    if args.dry_run:
        print(contrastive_plan(recipe, splits, world_size()))
        return
    say = print if is_main_process() else (lambda *_: None)
    say("[train-expert] pairs: " + ", ".join(f"{s} {len(p)}" for s, p in splits.items()))
    refused = [r for p in splits.values() for r in p.refused]
    if refused:
        say(f"[train-expert] note: {refused_summary(refused)}")
    with run_folder(values["output_dir"], "train-expert", {**recipe.to_dict(), "training_args": values},
                    fingerprints, resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                    main_process=is_main_process(), say=say):
        record = train_contrastive(recipe, splits, processes=world_size())
    for split, metrics in record["after"].items():
        if split in record["before"]:
            say(f"[train-expert] {split} before: {_line(record['before'][split])}")
        say(f"[train-expert] {split} after:  {_line(metrics)}")
    folder = Path(values["output_dir"]) / "best"
    from multimeditron.experts.adapted import read_adapted_record

    expert_id = read_adapted_record(folder)["spec"].id if is_main_process() else ""
    say(f"[train-expert] best epoch {record['epoch']} of {len(record['history'])}; expert "
        f"{record['name'] or '(unnamed)'} in {folder}; in a stage config: model.experts: ["
        + json.dumps({"id": expert_id, "checkpoint": str(folder)}) + "]")
