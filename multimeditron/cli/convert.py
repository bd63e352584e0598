"""`multimeditron convert llava|image-folder`: LLaVA-style JSON/JSONL or a RETFound-style `train|val|test/<class>/`
folder -> a MultiMediset Arrow dataset (`save_to_disk`), images embedded as bytes. `convert config`: a published
MultiMeditron YAML -> ours (convert_config.py). `convert checkpoint`: a published MultiMeditron model folder -> a model
folder this toolkit loads (model/published_checkpoint.py).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

MAX_LISTED = 50  # bad rows printed one a line; beyond that a count (a broken mixture can have thousands)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    layouts = parser.add_subparsers(dest="layout", metavar="LAYOUT", required=True)
    llava = layouts.add_parser(
        "llava", help="LLaVA rows {image, conversations: [{from: human|gpt|system, value}]}",
        description="LLaVA-style rows -> MultiMediset conversations. Every <image> becomes the attachment token; a "
                    "row with a missing or unreadable image, a placeholder/image count mismatch or an unknown role is "
                    "reported with its index, and nothing is written unless --skip-bad.")
    llava.add_argument("--json", required=True, help="the rows: a .json list or a .jsonl file")
    llava.add_argument("--images", default=None,
                       help="folder the rows' image paths are relative to (default: the JSON file's folder)")
    image_folder = layouts.add_parser(
        "image-folder", help="ROOT/{train,val,test}/<class>/*.png|jpg -> classification VQA per split",
        description="One VQA row per image: the question lists the classes, the answer is the class folder's name. "
                    "Writes a DatasetDict with the splits present (train, val/validation, test).")
    image_folder.add_argument("--root", required=True, help="folder holding train/, val/ and/or test/")
    image_folder.add_argument("--question", default=None,
                              help="question text; '{classes}' is replaced by the class list, which is appended "
                                   "when the text does not contain it")
    from multimeditron.cli.convert_config import add_config_parser

    add_config_parser(layouts)  # `convert config`: a published YAML -> ours (not a dataset)
    checkpoint = layouts.add_parser(
        "checkpoint", help="a published MultiMeditron model folder -> a model folder this toolkit loads",
        description="Reads the published folder (config.json with model_type multimodal, safetensors shards, "
                    "tokenizer) and writes a model + processor that `from_pretrained`, `eval` and `train` "
                    "(model.base_model) read, with the published forward (attn: attn_variant published). Weights "
                    "the converter cannot place are refused with their names.")
    checkpoint.add_argument("published_dir", help="the published model folder")
    checkpoint.add_argument("--out", required=True, help="output folder")
    checkpoint.add_argument("--tokenizer", default=None,
                            help="the model's tokenizer folder when the published folder holds none")
    checkpoint.add_argument("--attachment-token", default=None,
                            help="the image placeholder of the data (default: the published <|reserved_special_token_0|>)")
    for sub in (llava, image_folder):
        sub.add_argument("--out", required=True, help="output folder (datasets.save_to_disk)")
        sub.add_argument("--attachment-token", default=None, help="image placeholder in the text (default <|image|>)")
        sub.add_argument("--skip-bad", action="store_true", help="drop bad rows (and report them) instead of failing")
        sub.add_argument("--overwrite", action="store_true", help="replace a dataset already saved at --out")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")


def _report_bad(bad: Sequence[object], stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr  # looked up per call: tests and callers may swap sys.stderr
    for row in bad[:MAX_LISTED]:
        print(f"bad {row}", file=stream)
    if len(bad) > MAX_LISTED:
        print(f"... and {len(bad) - MAX_LISTED} more bad rows", file=stream)


def run(args: argparse.Namespace) -> int:
    if args.layout == "config":
        from multimeditron.cli import convert_config

        return convert_config.run(args)
    if args.layout == "checkpoint":
        return _convert_checkpoint(args)
    # Imported on use: building the parser (`convert --help`) needs neither datasets nor PIL.
    from multimeditron.data.convert import (
        DEFAULT_ATTACHMENT_TOKEN,
        BadRowsError,
        convert_image_folder,
        convert_llava,
    )

    token = args.attachment_token or DEFAULT_ATTACHMENT_TOKEN
    try:
        if args.layout == "llava":
            report = convert_llava(args.json, args.images, args.out, attachment_token=token, skip_bad=args.skip_bad,
                                   overwrite=args.overwrite, progress=not args.no_progress)
        else:
            report = convert_image_folder(args.root, args.out, question=args.question, attachment_token=token,
                                          skip_bad=args.skip_bad, overwrite=args.overwrite,
                                          progress=not args.no_progress)
    except BadRowsError as error:
        _report_bad(error.bad)  # every bad row on its own line, then the one `error:` line of the dispatcher
        raise
    if report.bad:
        _report_bad(report.bad)
        print(f"skipped {len(report.bad)} bad rows, kept {report.total}", file=sys.stderr)
    print(report.summary())
    return 0


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from multimeditron.errors import UsageError
    from multimeditron.model.published_checkpoint import (
        PUBLISHED_ATTACHMENT_TOKEN,
        convert_published_checkpoint,
    )

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty")
    model, processor = convert_published_checkpoint(args.published_dir, args.tokenizer,
                                                    args.attachment_token or PUBLISHED_ATTACHMENT_TOKEN)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    config = model.config
    print(f"wrote {out}: {len(config.experts)} experts, fusion {config.fusion}"
          + (f" ({config.attn_variant})" if config.fusion == "attn" else "")
          + f", projection {config.projection}, router {config.router}; placeholder {config.attachment_token}")
    return 0
