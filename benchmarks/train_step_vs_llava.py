"""One training step of MultiMeditron vs transformers' LlavaForConditionalGeneration, interleaved in one process.

Same LLM config, vision width/depth, image size, projector and batch; vision frozen, LLM + projector trained (the
end-to-end stage). Prints samples/s, tokens/s, peak memory (CUDA only) and our/Llava ratios for (1) equal padded
batches and (2) a variable-length batch, padded for Llava and packed for MultiMeditron (sdpa + block mask).

    python benchmarks/train_step_vs_llava.py [--device cuda] [--repeats 8] [--batch 8] [--hidden 256] [--layers 4]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from multimeditron.data.packing import pack, row_sample_ids
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.modeling import MultiMeditronForCausalLM

VOCAB = 4096
IMAGE_TOKEN, START, END, PAD = VOCAB - 1, VOCAB - 2, VOCAB - 3, 0


def text_config(args: argparse.Namespace):
    return AutoConfig.for_model("qwen3", vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                                num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                                num_key_value_heads=max(1, args.hidden // 128), head_dim=64,
                                max_position_embeddings=8192, tie_word_embeddings=False, pad_token_id=PAD)


def build_models(args: argparse.Namespace):
    torch.manual_seed(0)
    ours_config = MultiMeditronConfig(
        text_config=text_config(args), image_token_id=IMAGE_TOKEN, image_start_token_id=START,
        image_end_token_id=END,
        experts=[{"id": "timm:vit_base_patch16_224", "image_size": args.image_size,
                  "options": {"embed_dim": args.vision_width, "depth": args.vision_layers,
                              "num_heads": args.vision_width // 64}}])
    ours_config._attn_implementation = "sdpa"
    ours = MultiMeditronForCausalLM(ours_config)
    llava_config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=args.vision_width, intermediate_size=args.vision_width * 4,
                                       num_hidden_layers=args.vision_layers,
                                       num_attention_heads=args.vision_width // 64, image_size=args.image_size,
                                       patch_size=16),
        text_config=text_config(args), image_token_index=IMAGE_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    llava = LlavaForConditionalGeneration._from_config(llava_config, attn_implementation="sdpa")
    ours.vision.experts.requires_grad_(False)
    llava.model.vision_tower.requires_grad_(False)
    return ours.to(args.device), llava.to(args.device)


def sample_lengths(args: argparse.Namespace, variable: bool) -> list[int]:
    if not variable:
        return [args.text_tokens] * args.batch
    # A VLM SFT mix: mostly short VQA turns, some long descriptions (lognormal, heavy right tail).
    rng = np.random.default_rng(0)
    return [int(x) for x in np.clip(rng.lognormal(np.log(args.text_tokens / 3), 1.0, args.batch), 8,
                                    8 * args.text_tokens)]


def padded_batch(lengths: list[int], n_image: int, image_size: int, device: str) -> dict[str, torch.Tensor]:
    total = [n + n_image + 2 for n in lengths]
    width = max(total)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros_like(ids)
    for row, (n, t) in enumerate(zip(lengths, total)):
        ids[row, :t] = torch.cat([torch.tensor([START]), torch.full((n_image,), IMAGE_TOKEN), torch.tensor([END]),
                                  torch.randint(10, VOCAB - 10, (n,))])
        mask[row, :t] = 1
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == IMAGE_TOKEN, -100)
    pixels = torch.rand(len(lengths), 3, image_size, image_size)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels,
                                             pixel_values=pixels).items()}


def packed_batch(lengths: list[int], n_image: int, image_size: int, max_len: int, device: str):
    """The samples packed with the package's own packer; the model derives the block mask from the sample ids."""
    sizes = [n + n_image + 2 for n in lengths]
    bins = pack(sizes, max_len)
    width = max(sum(sizes[i] for i in b) for b in bins)
    ids = torch.full((len(bins), width), PAD)
    for r, members in enumerate(bins):
        start = 0
        for i in members:
            ids[r, start:start + sizes[i]] = torch.cat([
                torch.tensor([START]), torch.full((n_image,), IMAGE_TOKEN), torch.tensor([END]),
                torch.randint(10, VOCAB - 10, (lengths[i],))])
            start += sizes[i]
    sample_ids = row_sample_ids([[sizes[i] for i in b] for b in bins], width)
    labels = ids.masked_fill(ids == IMAGE_TOKEN, -100).masked_fill(ids == PAD, -100)
    pixels = torch.rand(len(lengths), 3, image_size, image_size)
    return {k: v.to(device) for k, v in dict(input_ids=ids, sample_ids=sample_ids, labels=labels,
                                             pixel_values=pixels).items()}


def timed_step(model, optimizer, batch, device: str) -> tuple[float, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return time.perf_counter() - start, peak


def compare(name: str, ours, llava, ours_batch, llava_batch, samples: int, tokens: int, args) -> None:
    ours_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    llava_opt = torch.optim.AdamW([p for p in llava.parameters() if p.requires_grad], lr=1e-5)
    times = {"multimeditron": [], "llava": []}
    peaks = {"multimeditron": 0.0, "llava": 0.0}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for key, model, optimizer, batch in (("multimeditron", ours, ours_opt, ours_batch),
                                             ("llava", llava, llava_opt, llava_batch)):
            elapsed, peak = timed_step(model, optimizer, batch, args.device)
            if repeat:
                times[key].append(elapsed)
                peaks[key] = max(peaks[key], peak)
    print(f"\n## {name} ({samples} samples, {tokens} real tokens per step, median of {args.repeats})")
    print("| model | samples/s | tokens/s | peak GiB |\n|---|---|---|---|")
    rates = {}
    for key in times:
        median = statistics.median(times[key])
        rates[key] = samples / median
        peak = f"{peaks[key]:.2f}" if args.device.startswith("cuda") else "n/a (CPU)"
        print(f"| {key} | {samples / median:.2f} | {tokens / median:.0f} | {peak} |")
    print(f"ratio multimeditron / llava: {rates['multimeditron'] / rates['llava']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vision-width", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ours, llava = build_models(args)
    n_image = ours.num_image_tokens
    print(f"device {args.device}; LLM hidden {args.hidden} x {args.layers} layers; vision width "
          f"{args.vision_width} x {args.vision_layers}; {n_image} image tokens; batch {args.batch}")

    lengths = sample_lengths(args, variable=False)
    batch = padded_batch(lengths, n_image, args.image_size, args.device)
    tokens = int(batch["attention_mask"].sum())
    compare("equal padded batches", ours, llava, batch, batch, args.batch, tokens, args)

    lengths = sample_lengths(args, variable=True)
    padded = padded_batch(lengths, n_image, args.image_size, args.device)
    packed = packed_batch(lengths, n_image, args.image_size, max(padded["input_ids"].shape[1], 2 * (n_image + args.text_tokens)), args.device)
    tokens = int(padded["attention_mask"].sum())
    waste = 1 - tokens / padded["input_ids"].numel()
    print(f"\nvariable lengths {min(lengths)}..{max(lengths)} text tokens: padding is {100 * waste:.0f}% of the padded "
          f"batch; packed into {packed['input_ids'].shape[0]} rows of {packed['input_ids'].shape[1]}")
    compare("variable lengths: MultiMeditron packed vs Llava padded", ours, llava, packed, padded, args.batch,
            tokens, args)


if __name__ == "__main__":
    main()
