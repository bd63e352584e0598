"""`multimeditron finetune`: adapt a vision expert to a labelled image set (full fine-tuning, linear probe, LoRA or
BitFit) as RETFound's `main_finetune.py` does; `--eval --checkpoint` scores a saved run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from multimeditron.cli.adaptation_args import SPEC_HELP, add_loop_arguments, loop_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.adaptation.finetune import BALANCE
    from multimeditron.adaptation.peft_methods import ADAPTATIONS
    from multimeditron.probing.metrics import SELECTION_METRICS

    parser.add_argument("--expert", default=None, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="an image folder ROOT/{train,val,test}/<class>/ or a parquet/arrow table with image, "
                             "label and split columns (part 1's formats)")
    parser.add_argument("--adaptation", default="finetune", choices=ADAPTATIONS,
                        help="finetune: everything trains (layer-wise lr decay); lp: the head only; lora: PEFT "
                             "adapters on qkv/fc1/fc2; bitfit: the expert's biases only")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="run folder (default runs/finetune): best/ (the chosen epoch: adapted expert + head), "
                             "last/ (resumable), history.json, results.{json,csv,md}, plots/")
    parser.add_argument("--eval", action="store_true", help="only score --checkpoint on val and test")
    parser.add_argument("--checkpoint", default=None, metavar="DIR", help="with --eval: a run folder or its best/")
    parser.add_argument("--tiny", action="store_true", help="build the expert's tiny architecture (smoke runs)")
    parser.add_argument("--pool", default=None, choices=("token", "avg", "avg_all"),
                        help="timm experts: the global output the head reads (class token, mean of patch tokens, "
                             "mean of all tokens); default: the family's")
    data = parser.add_argument_group("data")
    data.add_argument("--image-column", default=None)
    data.add_argument("--label-column", action="append", default=[], metavar="NAME",
                      help="table: the label column (default: `label`); several = multi-label, each 0/1")
    data.add_argument("--split-column", default="split")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved into val when absent")
    method = parser.add_argument_group("recipe")
    method.add_argument("--blr", type=float, default=5e-3,
                        help="base learning rate: lr = blr x batch size / 256 unless --lr is given (RETFound)")
    method.add_argument("--layer-decay", type=float, default=0.65, help="finetune: layer-wise lr decay (1: off)")
    method.add_argument("--drop-path", type=float, default=0.2, help="stochastic depth (not for lp)")
    method.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    method.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off; RETFound uses 0.8)")
    method.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off; RETFound uses 1.0)")
    method.add_argument("--balance", default="none", choices=BALANCE,
                        help="imbalanced data: inverse-frequency class weights, or a balanced sampler")
    method.add_argument("--no-augment", action="store_true", help="no random resized crop / flip")
    method.add_argument("--select-metric", default="retfound", choices=SELECTION_METRICS,
                        help="what the best epoch maximises on val (retfound: mean of macro F1, AUROC, kappa)")
    method.add_argument("--lora-r", type=int, default=48)
    method.add_argument("--lora-alpha", type=int, default=16)
    method.add_argument("--lora-dropout", type=float, default=0.1)
    method.add_argument("--lora-targets", default="qkv,fc1,fc2", help="comma-separated module names")
    add_loop_arguments(parser, epochs=50, batch_size=16, lr=None, warmup_epochs=10, weight_decay=0.05)


def run(args: argparse.Namespace) -> int:
    from multimeditron.adaptation.finetune import FinetuneSettings, finetune, load_finetuned, score_checkpoint
    from multimeditron.adaptation.peft_methods import LoraSettings
    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.data.splits import ImageDataError
    from multimeditron.probing.report import markdown_table
    from multimeditron.probing.specs import parse_spec

    try:
        data = load_labelled_images(args.data, image_column=args.image_column,
                               label_columns=args.label_column,
                               split_column=args.split_column, val_fraction=args.val_fraction, seed=args.seed)
    except ImageDataError as error:
        raise SystemExit(f"multimeditron finetune: {error}") from error
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    print(f"[finetune] data {data.name}: {len(data.classes)} classes; images: {sizes}")
    loop = loop_settings(args, lr=args.lr if args.lr is not None else args.blr * args.batch_size / 256)
    if args.eval:
        if not args.checkpoint:
            raise SystemExit("multimeditron finetune: --eval needs --checkpoint DIR (a run folder or its best/)")
        classifier, record = load_finetuned(args.checkpoint)
        out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
        result = score_checkpoint(classifier, record, data, loop.batch_size, loop.device, out,
                                  record["spec"].id)
    else:
        if not args.expert:
            raise SystemExit("multimeditron finetune: --expert SPEC is required (or --eval --checkpoint DIR)")
        from multimeditron.adaptation.experts import load_expert

        expert, spec = load_expert(args.expert, tiny=args.tiny, options={"cls_pool": args.pool} if args.pool else {},
                                   seed=args.seed)
        print(f"[finetune] expert {expert.describe()}; adaptation {args.adaptation}, lr {loop.lr:.3g}")
        settings = FinetuneSettings(
            adaptation=args.adaptation, layer_decay=args.layer_decay, drop_path=args.drop_path,
            label_smoothing=args.smoothing, mixup=args.mixup, cutmix=args.cutmix, balance=args.balance,
            weight_decay=args.weight_decay, augment=not args.no_augment, select_metric=args.select_metric,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                              target_modules=[t.strip() for t in args.lora_targets.split(",") if t.strip()]))
        out = Path(args.out or "runs/finetune")
        name = parse_spec(args.expert, tiny=args.tiny).name
        result = finetune(expert, spec, data, out, loop, settings, resume=args.resume, name=name)
        details = result["runs"][0]["details"]
        print(f"[finetune] trained {details['trainable_parameters']:,} of {details['parameters']:,} parameters; "
              f"best epoch {result['runs'][0]['chosen']['epoch']} of {len(details['history'])}")
        print(f"[finetune] adapted expert + head in {out / 'best'}; in a stage config: model.experts: ["
              + json.dumps({"id": spec.id, "checkpoint": str(out / "best")}) + "]")
    print()
    print(markdown_table(result))
    print(f"\n[finetune] results in {out} (results.json, results.csv, results.md, plots/)")
    return 0
