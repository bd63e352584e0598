"""Embeddings per second of each expert family at its native resolution, and the embedding cache's speed-up.

Random weights (nothing is downloaded): the speed of a ViT does not depend on its weights. For each family the
script embeds the same drawn images twice through `multimeditron.probing.embed_splits` with a fresh cache folder:
the first pass computes (and writes) the embeddings, the second reads them back (hashing the weights for the key
included). Prints one line per family and a markdown table.

    python benchmarks/embedding_speed.py                       # default families, 32 images, batch 16
    python benchmarks/embedding_speed.py --experts retfound_mae,dinov2_vitl14 --images 16 --device cuda
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multimeditron.data.labelled_images import read_labelled_folder
from multimeditron.probing import ProbeSettings, build_probe_expert, embed_splits, parse_spec

DEFAULT_EXPERTS = ("dinov2_vits14", "retfound_green", "mermed_fm", "biomedclip", "dinov3_vits16",
                   "timm:vit_small_patch16_224")


def write_images(root: Path, n: int) -> Path:
    """n images per split (train/val/test), two classes, 256 px JPEGs (decoded and resized like real data)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(max(1, n // 6)):
                pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", default=",".join(DEFAULT_EXPERTS))
    parser.add_argument("--images", type=int, default=32, help="images in all (split over train/val/test)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = read_labelled_folder(write_images(Path(tmp) / "images", args.images))
        n = sum(len(s) for s in data.splits.values())
        print(f"device {args.device}, dtype {args.dtype}, {n} images, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch threads")
        for spec in args.experts.split(","):
            expert = build_probe_expert(parse_spec(spec), seed=0)
            times = []
            for _ in range(2):
                settings = ProbeSettings(cache_dir=Path(tmp) / f"cache-{len(rows)}", batch_size=args.batch_size,
                                         device=args.device, dtype=args.dtype, progress=False)
                started = time.perf_counter()
                embed_splits(expert, data, settings, spec)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            params = sum(p.numel() for p in expert.parameters()) / 1e6
            rows.append((spec, expert.image_size, params, n / times[0], times[0], times[1], times[0] / times[1]))
            print(f"{spec}: {expert.image_size} px, {params:.0f} M params: {n / times[0]:.1f} images/s "
                  f"({times[0]:.2f} s), cached rerun {times[1]:.3f} s ({times[0] / times[1]:.0f}x)", flush=True)
            del expert
    print("\n| expert | input | params (M) | embeddings/s | first pass (s) | cached rerun (s) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for spec, size, params, rate, first, second, speedup in rows:
        print(f"| {spec} | {size} | {params:.0f} | {rate:.1f} | {first:.2f} | {second:.3f} | {speedup:.0f}x |")


if __name__ == "__main__":
    main()
