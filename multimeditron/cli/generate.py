"""`multimeditron generate`: answer a prompt about one or more images with a saved model and print the answer."""
from __future__ import annotations

import argparse
import os

from multimeditron.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder (model + processor)")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="an image file; repeat for several (in placeholder order)")
    parser.add_argument("--prompt", required=True,
                        help="the question; without image placeholders, one per image is put before it")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def run(args: argparse.Namespace) -> int:
    from multimeditron.data.images import load_image
    from multimeditron.data.report import BadSample
    from multimeditron.inference import generate_answers, load_pretrained

    try:  # the decoder training uses (EXIF, 16-bit, alpha, DICOM); a file named here is taken as written
        images = [load_image(os.path.abspath(path)) for path in args.image]
    except BadSample as bad:
        raise UsageError(f"--image: {bad}") from bad
    model, processor = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    prompt = args.prompt
    placeholders = processor.count_placeholders(prompt)
    if placeholders == 0 and images:
        prompt = "\n".join([processor.attachment_token] * len(images) + [prompt])
    elif placeholders != len(images):
        raise UsageError(f"--prompt: it holds {placeholders} {processor.attachment_token} placeholder(s) but "
                         f"{len(images)} --image were given")
    [answer] = generate_answers(model, processor, [(prompt, images)], batch_size=1,
                                max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                                temperature=args.temperature or 1.0, top_p=args.top_p,
                                system_prompt=args.system_prompt, progress=False)
    print(answer)
    return 0
