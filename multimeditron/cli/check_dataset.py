"""`multimeditron check-dataset PATH`: name every bad row of a MultiMediset dataset, then count them by reason.

Needs no model: schema, roles, empty turns, placeholders against images, image presence (and with --decode, every
image fully decoded). Exit status 0 when every row is good, 1 when any is bad (the check's finding, with a last
`error:` line), 2 when the dataset cannot be read (a user error, as for every command).
"""
from __future__ import annotations

import argparse
import collections
import sys

from multimeditron.config import DatasetEntry
from multimeditron.data.conversation import parse_row
from multimeditron.data.images import DEFAULT_MAX_PIXELS, ImageResolver
from multimeditron.data.placeholders import (
    AUTO,
    KNOWN_PLACEHOLDERS,
    resolve_attachment_token,
)
from multimeditron.data.report import BadSample
from multimeditron.data.sources import load_source
from multimeditron.model.configuration import DEFAULT_ATTACHMENT_TOKEN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="save_to_disk folder, parquet/arrow file(s) or hub id")
    parser.add_argument("--split", default=None, help="split of a DatasetDict or hub dataset (default: train)")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (slower)")
    parser.add_argument("--attachment-token", default=AUTO,
                        help=f"image placeholder in the text; `auto` (default, as training's data.attachment_token) "
                             f"detects it from the rows among {', '.join(KNOWN_PLACEHOLDERS)} ({DEFAULT_ATTACHMENT_TOKEN} "
                             "when they hold none)")
    parser.add_argument("--image-base-dir", default=None,
                        help="base folder of relative image paths (default: the dataset's folder)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest accepted image, in pixels (decompression bomb guard)")


def run(args: argparse.Namespace) -> int:
    source = load_source(DatasetEntry(args.path, split=args.split), "train")  # a DataError: `error:`, exit 2
    token = resolve_attachment_token(args.attachment_token, source.dataset, DEFAULT_ATTACHMENT_TOKEN, source.name)
    print(f"{source.name}: image placeholder {token}"
          + (" (detected from its rows, as training does; --attachment-token to override)"
             if args.attachment_token == AUTO else ""))
    resolver = ImageResolver(args.image_base_dir, source.folder, args.max_pixels)
    counts: collections.Counter[str] = collections.Counter()
    for index, row in enumerate(source.dataset):
        try:
            _, images = parse_row(row, token)
            for image in images:
                resolver.load(image) if args.decode else resolver.locate(image)
        except BadSample as bad:
            counts[bad.reason] += 1
            print(f"row {index}: {bad.reason}: {bad.detail}" if bad.detail else f"row {index}: {bad.reason}")
    total = sum(counts.values())
    print(f"{source.name}: {len(source.dataset)} rows checked, {total} bad"
          + ("" if args.decode else " (images located, not decoded; add --decode to decode them)"))
    for reason, count in counts.most_common():
        print(f"  {reason}: {count}")
    if total:
        print(f"error: {source.name}: {total} of {len(source.dataset)} rows are bad (listed above)", file=sys.stderr)
    return 1 if total else 0
