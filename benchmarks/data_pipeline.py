"""Data-pipeline benchmark: tokenisation rate, DataLoader samples/s (0 and 2 workers), padding with/without packing.

Run: `python benchmarks/data_pipeline.py [--rows 400] [--image-size 384] [--llm tiny-qwen3]`. Builds its own data
(random PNG images, lognormal answer lengths) in a temporary folder; needs no network and no synthetic generator.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from multimeditron import build_model
from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import SFTCollator, build_sft_datasets
from multimeditron.data.schema import conversation_features, image_modality, make_row

WORDS = ["the", "left", "lower", "lobe", "shows", "a", "small", "opacity", "without", "effusion", "heart", "size",
         "is", "normal", "no", "fracture", "seen"]


def random_png(rng: np.random.Generator, size: int) -> bytes:
    # smooth noise compresses like a scan rather than like white noise
    small = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=max(1, words))).capitalize() + "."


def make_rows(n: int, image_size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = [random_png(rng, image_size) for _ in range(16)]  # a pool: encoding PNGs is not what we measure
    rows = []
    for _ in range(n):
        n_images = int(rng.choice([0, 1, 1, 1, 2]))
        turns = []
        for turn in range(int(rng.choice([1, 1, 1, 2, 3]))):
            question = sentence(rng, int(rng.lognormal(2.3, 0.5)))
            if turn == 0 and n_images:
                question = " ".join(["<|image|>"] * n_images + [question])
            turns += [{"role": "user", "content": question},
                      {"role": "assistant", "content": sentence(rng, int(rng.lognormal(3.0, 1.0)))}]
        picked = [image_modality(images[int(rng.integers(len(images)))]) for _ in range(n_images)]
        rows.append(make_row(picked, turns))
    return rows


def loader_rate(dataset, collator, workers: int, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collator, persistent_workers=False)
    start, samples = time.perf_counter(), 0
    for batch in loader:
        samples += int((batch["position_ids"] == 0).sum()) if "position_ids" in batch else batch["input_ids"].shape[0]
    return samples / (time.perf_counter() - start)


def padding_fraction(lengths: np.ndarray, batch_size: int, seed: int = 0, grouped: bool = False) -> float:
    """Padding share of the batches the collator builds (each batch padded to its longest row)."""
    order = np.argsort(lengths, kind="stable") if grouped else np.random.default_rng(seed).permutation(len(lengths))
    padded = real = 0
    for start in range(0, len(order), batch_size):
        chunk = lengths[order[start:start + batch_size]]
        padded += int(chunk.max()) * len(chunk)
        real += int(chunk.sum())
    return 1.0 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--llm", default="tiny-qwen3")
    parser.add_argument("--expert", default="timm:vit_small_patch16_224")
    args = parser.parse_args()

    _, processor = build_model(args.llm, [{"id": args.expert, "tiny": True}])
    rows = make_rows(args.rows, args.image_size)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench"
        datasets.Dataset.from_list(rows, features=conversation_features()).save_to_disk(path)
        entries = [DatasetEntry(str(path))]
        start = time.perf_counter()
        plain = build_sft_datasets(DataSection(train=entries, max_sequence_length=args.max_length,
                                               on_bad_sample="skip"), processor, seed=0)
        tokenise = args.rows / (time.perf_counter() - start)
        packed = build_sft_datasets(DataSection(train=entries, max_sequence_length=args.max_length, packing=True,
                                                on_bad_sample="skip"), processor, seed=0)
        lengths = np.asarray(plain.train["length"])
        packed_lengths = np.asarray(packed.train["length"])
        for name, data, packing in (("unpacked", plain, False), ("packed", packed, True)):
            collator = SFTCollator(processor, packing=packing)
            for workers in (0, 2):
                results.append((name, workers, loader_rate(data.train, collator, workers, args.batch_size)))

    print(f"\n{args.rows} rows, {args.image_size}px PNG images, {processor.num_image_tokens} tokens per image, "
          f"lengths: median {int(np.median(lengths))}, p95 {int(np.percentile(lengths, 95))}, max {lengths.max()}")
    print(f"tokenisation pass (map, first run, incl. image checks): {tokenise:8.1f} rows/s")
    print(f"\n| {'pipeline':<9} | {'workers':>7} | {'samples/s':>10} |")
    print(f"|{'-' * 11}|{'-' * 9}|{'-' * 12}|")
    for name, workers, rate in results:
        print(f"| {name:<9} | {workers:>7} | {rate:>10.1f} |")
    print(f"\n| {'batching':<32} | {'padding tokens':>14} |")
    print(f"|{'-' * 34}|{'-' * 16}|")
    print(f"| {'random batches, no packing':<32} | {padding_fraction(lengths, args.batch_size):>13.1%} |")
    print(f"| {'sorted by length, no packing':<32} | "
          f"{padding_fraction(lengths, args.batch_size, grouped=True):>13.1%} |")
    print(f"| {'packed rows (' + str(args.max_length) + ' tokens)':<32} | "
          f"{padding_fraction(packed_lengths, args.batch_size):>13.1%} |")
    print(f"  ({len(lengths)} samples in {len(packed_lengths)} packed rows)")


if __name__ == "__main__":
    main()
