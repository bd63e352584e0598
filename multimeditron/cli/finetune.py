"""`multimeditron finetune`: adapt a vision expert to a labelled image set (full fine-tuning, linear probe, LoRA or
BitFit) on the outline of RETFound's `main_finetune.py`, on the engine (`torchrun` for several processes); `--eval
--checkpoint` scores a saved run. Every flag is a shorthand of a key of the YAML recipe (`--config`); the papers'
exact recipes are `cookbook/experts/*.yaml` (what still differs: `cookbook/experts/README.md`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from multimeditron.cli.recipe_flags import (
    SWITCH,
    Shorthand,
    add_recipe_arguments,
    bad_image_shorthand,
    comma_list,
    expert_shorthands,
    overlap_shorthand,
    schedule_shorthands,
    training_shorthands,
)

SHORTHANDS = [
    *expert_shorthands(),
    Shorthand("--data", "data.path", "an image folder ROOT/{train,val,test}/<class>/ or a parquet/arrow table with "
              "image, label and split columns", type=str, metavar="PATH"),
    Shorthand("--image-column", "data.image_column", "table: the image column (`image`, else its one image-typed "
              "column)", type=str),
    Shorthand("--label-column", "data.label_columns", "table: the label column (default: `label`); several = "
              "multi-label, each 0/1", type=str, append=True, metavar="NAME"),
    Shorthand("--split-column", "data.split_column", "table: the column with train/val/test"),
    Shorthand("--val-fraction", "data.val_fraction", "share of train carved into val when absent"),
    bad_image_shorthand(),
    overlap_shorthand(),
    Shorthand("--adaptation", "finetune.adaptation", "finetune: everything trains (layer-wise lr decay); lp: the "
              "head only; lora: PEFT adapters; bitfit: the expert's biases only"),
    Shorthand("--pool", "finetune.pool", "the global output the head reads: class token, mean of patch tokens, "
              "mean of all tokens (default: the family's)"),
    Shorthand("--blr", "finetune.blr", "base learning rate: the peak lr is blr x global batch / 256 unless --lr "
              "(RETFound)"),
    Shorthand("--layer-decay", "finetune.layer_decay", "finetune: layer-wise lr decay (1: off)"),
    Shorthand("--drop-path", "finetune.drop_path", "stochastic depth (not for lp)"),
    Shorthand("--smoothing", "finetune.label_smoothing", "label smoothing (in the loss; with --smoothing-applies "
              "mixing only inside mixup/cutmix, as RETFound, whose loss is a plain CrossEntropyLoss)"),
    Shorthand("--smoothing-applies", "finetune.smoothing_applies", "always: in the loss; mixing: only inside "
              "mixup/cutmix (RETFound)"),
    Shorthand("--mixup", "finetune.mixup", "mixup alpha (0: off; RETFound's default is 0 too)"),
    Shorthand("--cutmix", "finetune.cutmix", "cutmix alpha (0: off; RETFound's default is 0 too)"),
    Shorthand("--balance", "finetune.balance", "imbalanced data: inverse-frequency class weights, or a balanced "
              "sampler"),
    Shorthand("--no-augment", "finetune.augment", "no random resized crop / flip", type=SWITCH, value=False),
    Shorthand("--transform", "finetune.transform", "canvas: the VLM's letterbox canvas (crop 0.5-1 + flip); timm: "
              "RETFound's timm create_transform (RandAugment, random erasing, bicubic, Resize + CenterCrop eval; "
              "finetune.timm.* keys)"),
    Shorthand("--backbone-lr", "finetune.backbone_lr", "the expert's (adapters') peak rate beside the head's --lr "
              "(DINOv2-on-radiology)", type=float),
    Shorthand("--paper-metrics", "finetune.paper_metrics", "also report this paper's metric set", type=str),
    Shorthand("--select-metric", "finetune.select_metric", "what the best epoch maximises on val (retfound: mean "
              "of macro F1, AUROC, kappa)"),
    Shorthand("--bootstrap", "finetune.bootstrap", "test-set resamples for the 95%% intervals of the test metrics "
              "(0: none)"),
    Shorthand("--lora-r", "finetune.lora.r", "LoRA rank"),
    Shorthand("--lora-alpha", "finetune.lora.alpha", "LoRA scaling numerator (scale = alpha / r)"),
    Shorthand("--lora-dropout", "finetune.lora.dropout", "dropout on the LoRA path"),
    Shorthand("--lora-targets", "finetune.lora.target_modules", "comma-separated module names", type=comma_list),
    Shorthand("--lora-bias", "finetune.lora.bias", "which biases train beside the adapters (DINOv2-on-radiology: "
              "lora_only)"),
    *schedule_shorthands(),
    *(dataclasses.replace(s, help=s.help + " (default: --blr x global batch / 256)") if s.flag == "--lr" else s
      for s in training_shorthands()),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.recipes import FinetuneRecipe

    add_recipe_arguments(parser, FinetuneRecipe, SHORTHANDS, {"training_args": "training (HF TrainingArguments)"})
    parser.add_argument("--eval", action="store_true", help="only score --checkpoint on val and test (with --out: "
                        "write the results there; without: print them)")
    parser.add_argument("--checkpoint", default=None, metavar="DIR", help="with --eval: a run folder or its best/")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from multimeditron.adaptation.finetune import (
        finetune,
        finetune_plan,
        finetune_spec,
        load_finetune_data,
        load_finetuned,
        prepare_finetune_expert,
        score_checkpoint,
    )
    from multimeditron.adaptation.recipes import FinetuneRecipe
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.errors import UsageError
    from multimeditron.probing.report import markdown_table, per_label_table
    from multimeditron.run_folder import check_fresh_out, run_folder
    from multimeditron.threads import use_threads
    from multimeditron.training.arguments import (
        is_main_process,
        training_arguments,
        world_size,
    )

    recipe = load_command_recipe(FinetuneRecipe, args, SHORTHANDS, expert_required=not args.eval)
    use_threads(recipe.threads)
    if args.eval and not args.checkpoint:
        raise UsageError("--eval needs --checkpoint DIR (a run folder or its best/)")
    if args.eval and recipe.training_args.get("resume_from_checkpoint"):
        raise UsageError("--eval scores a finished run; --resume continues training: give one of them")
    if args.eval:
        check_fresh_out(recipe.training_args.get("output_dir"), "finetune --eval", overwrite=args.overwrite)
    else:
        early = recipe.training_arguments(world_size())
        check_fresh_out(early["output_dir"], "finetune", overwrite=args.overwrite,
                        resume=early.get("resume_from_checkpoint"), dry_run=args.dry_run)
    parsed = None if args.eval else finetune_spec(recipe)  # a wrong SPEC or --pool, before any image is read
    data = load_finetune_data(recipe)
    say = print if is_main_process() else (lambda *_: None)
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    say(f"[finetune] data {data.name}: {len(data.classes)} {'labels' if data.multilabel else 'classes'}; "
        f"images: {sizes}")
    for note in data.notes:
        say(f"[finetune] note: {note}")
    fingerprints = {split: data.fingerprint(split) for split in data.splits}
    bootstrap = recipe.finetune.bootstrap
    if args.eval:
        classifier, record = load_finetuned(args.checkpoint)
        out = recipe.training_args.get("output_dir")
        with tempfile.TemporaryDirectory() as scratch:  # without --out: printed only, the trainer still needs one
            folder = run_folder(out, "finetune --eval", recipe.to_dict(), fingerprints, overwrite=args.overwrite,
                                main_process=is_main_process(), say=say) if out else contextlib.nullcontext()
            with folder:
                eval_args = training_arguments({**recipe.training_arguments(world_size()),
                                                "output_dir": out or scratch, "eval_strategy": "no",
                                                "load_best_model_at_end": False})
                result = score_checkpoint(classifier, record, data, eval_args, record["spec"].id, bootstrap,
                                          write=bool(out))
    else:
        expert, spec, name = prepare_finetune_expert(recipe, parsed)
        if args.dry_run:
            print(finetune_plan(recipe, data, expert, world_size()))
            return 0
        values = recipe.training_arguments(world_size())
        out = values["output_dir"]
        say(f"[finetune] expert {expert.describe()}; adaptation {recipe.finetune.adaptation}, "
            f"lr {values['learning_rate']:.3g}")
        with run_folder(out, "finetune", {**recipe.to_dict(), "training_args": values}, fingerprints,
                        resume=values.get("resume_from_checkpoint"), overwrite=args.overwrite,
                        main_process=is_main_process(), say=say):
            result = finetune(expert, spec, data, recipe, name=name, processes=world_size())
        details = result["runs"][0]["details"]
        say(f"[finetune] trained {details['trainable_parameters']:,} of {details['parameters']:,} parameters; "
            f"best epoch {result['runs'][0]['chosen']['epoch']} of {len(details['history'])}")
        say(f"[finetune] adapted expert + head in {Path(out) / 'best'}; in a stage config: model.experts: ["
            + json.dumps({"id": spec.id, "checkpoint": str(Path(out) / "best")}) + "]")
    for table in (markdown_table(result), per_label_table(result)):
        if table:
            say()
            say(table)
    if out:
        say(f"\n[finetune] results in {out} (results.json, results.csv, results.md, plots/)")
    return 0
