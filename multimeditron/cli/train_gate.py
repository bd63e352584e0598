"""`multimeditron train-gate`: train the modality gate of a mixture of experts (the published
`scripts/image_router_train.py`) on the engine (`torchrun` for several processes); the best epoch by val accuracy
goes to `OUT/gate/`, a folder `router: pretrained` loads. Every flag is a shorthand of a key of the YAML recipe
(`--config`)."""
from __future__ import annotations

import argparse
import json

from multimeditron.cli.recipe_flags import (
    SWITCH,
    Shorthand,
    add_recipe_arguments,
    bad_image_shorthand,
    overlap_shorthand,
    schedule_shorthands,
    training_shorthands,
)


def _class_experts(text: str) -> dict[str, str]:
    """`ct=biomedclip,xray=clip_xray` -> {"ct": "biomedclip", "xray": "clip_xray"}."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"expected CLASS=EXPERT[,CLASS=EXPERT...], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


SHORTHANDS = [
    Shorthand("--data", "data.path", "an image folder ROOT/{train,val,test}/<modality>/, or a table (MultiMediset "
              "rows included: --image-column modalities) with a modality column", type=str, metavar="PATH"),
    Shorthand("--image-column", "data.image_column", "table: the image column (default: image, else the first of "
              "modalities)", type=str),
    Shorthand("--label-column", "data.label_columns", "table: the modality column (default: `label`)", type=str,
              append=True, metavar="NAME"),
    Shorthand("--split-column", "data.split_column", "table: the column naming each row's split"),
    bad_image_shorthand(),
    overlap_shorthand(),
    Shorthand("--val-fraction", "data.val_fraction", "share of train carved into val when absent"),
    Shorthand("--arch", "gate.arch", "a timm model name (published: resnet18, resnet34, resnet50)"),
    Shorthand("--checkpoint", "gate.checkpoint", "start from timm weights or an earlier gate folder", type=str),
    Shorthand("--image-size", "gate.image_size", "the gate's input side in pixels"),
    Shorthand("--freeze-backbone", "gate.freeze_backbone", "train the classifier layer only", type=SWITCH),
    Shorthand("--max-per-class", "gate.max_samples_per_class", "the first N train images of each class"),
    Shorthand("--augment", "gate.augment", "random resized crop + flip", type=SWITCH),
    Shorthand("--class-experts", "gate.class_experts", "CLASS=EXPERT,...: the expert each class routes to, stored "
              "in the gate folder so a VLM config may omit class_to_expert", type=_class_experts,
              metavar="MAP"),
    *schedule_shorthands(),
    *training_shorthands(),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.gate import GateRecipe

    add_recipe_arguments(parser, GateRecipe, SHORTHANDS, {"training_args": "training (HF TrainingArguments)"})
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from multimeditron.adaptation.gate import GATE_FOLDER, GateRecipe, gate_plan, load_gate_data, train_gate
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.run_folder import check_fresh_out, run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import is_main_process, world_size

    recipe = load_command_recipe(GateRecipe, args, SHORTHANDS, expert_required=False)
    use_threads(recipe.threads)
    values = recipe.training_arguments(world_size())
    check_fresh_out(values["output_dir"], "train-gate", overwrite=args.overwrite,
                    resume=values.get("resume_from_checkpoint"), dry_run=args.dry_run)
    data = load_gate_data(recipe)
    if args.dry_run:
        print(gate_plan(recipe, data, world_size()))
        return 0
    say = print if is_main_process() else (lambda *_: None)
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    say(f"[train-gate] data {data.name}: classes {data.classes}; images: {sizes}")
    for note in data.notes:
        say(f"[train-gate] note: {note}")
    with run_folder(values["output_dir"], "train-gate", {**recipe.to_dict(), "training_args": values},
                    {split: data.fingerprint(split) for split in data.splits},
                    resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                    main_process=is_main_process(), say=say):
        record = train_gate(data, recipe, processes=world_size())
    folder = Path(values["output_dir"]) / GATE_FOLDER
    scores = ", ".join(f"{s} accuracy {record[s]['accuracy']:.3f}" for s in ("val", "test") if s in record)
    say(f"[train-gate] best epoch {record['epoch']} of {len(record['history'])}; {scores}")
    classifier = {"checkpoint": str(folder)}
    if not recipe.gate.class_experts:
        classifier["class_to_expert"] = "[one expert index per class, in the order above]"
    say(f"[train-gate] gate in {folder}; in a VLM config: model.router: pretrained, model.router_classifier: "
        + json.dumps(classifier))
    return 0
