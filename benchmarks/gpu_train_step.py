"""GPU training-step benchmark at 4B scale: MultiMeditron vs transformers' Llava, plus the packing equality checks.

Both models: a Qwen3-4B-architecture LLM (hidden 2560, 36 layers, 32 heads, 8 KV heads, head dim 128, intermediate
9728, vocabulary 151936; random weights) and a ViT-B/16 at 224 px (BiomedCLIP's vision tower; CLIP-shaped for Llava),
bf16 weights on CUDA, end-to-end stage (LLM + projector trained, vision frozen), fused AdamW. Reported per scenario:
step time, tokens/s, samples/s, peak memory and MFU (useful FLOPs: 6 x trained parameters x real tokens + causal
attention + the frozen vision forward, over the measured bf16 matmul peak and over 989 TFLOP/s):
  1. equal-length padded batches;
  2. a variable-length SFT mix (lognormal text lengths): padded batches for Llava, packed rows for MultiMeditron
     with each packing path the machine has (sdpa + dense block mask; flex_attention BlockMask on CUDA;
     flash_attention_2 varlen when flash-attn is installed);
  3. generation tokens/s with a KV cache.
First it checks, for every packing path available, that packed logits and gradients equal separate runs on a small
model; a failed check makes the exit status 1. Needs only torch, transformers, timm and numpy (not `datasets`).

    python benchmarks/gpu_train_step.py            # CUDA; sized for under 5 minutes on one H100/H200 (not yet run)
    python benchmarks/gpu_train_step.py --small    # the same code on CPU with tiny sizes, fp32 (the suite runs this)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

import multimeditron
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.modeling import MultiMeditronForCausalLM

DATASHEET_PEAK = 989e12  # H100 SXM dense bf16
IMAGE_OFFSET, START_OFFSET, END_OFFSET, PAD = 1, 2, 3, 0  # special ids counted from the end of the vocabulary


def _packing():
    """multimeditron.data.packing (bin packer, sample ids) without the data package's __init__, which imports
    `datasets` (absent from plain CUDA PyTorch images)."""
    path = Path(multimeditron.__file__).parent / "data" / "packing.py"
    spec = importlib.util.spec_from_file_location("multimeditron_data_packing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


packing = _packing()


@dataclasses.dataclass
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    image_size: int
    batch: int  # samples per padded step (equal lengths)
    mix_batch: int  # samples per padded Llava step in the variable-length mix (memory: padded to the longest)
    text_tokens: int  # text tokens per sample in the equal-length scenario
    mix_samples: int  # samples in the variable-length mix
    mix_median: int  # median text length of the mix (lognormal, sigma 1)
    mix_max: int
    capacity: int  # tokens per packed row
    rows: int  # packed rows per step
    gen_batch: int
    gen_tokens: int
    repeats: int
    gradient_checkpointing: bool = False


FULL = Sizes(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151936,
             vision_width=768, vision_layers=12, vision_heads=12, image_size=224, batch=8, mix_batch=4,
             text_tokens=512, mix_samples=64, mix_median=192, mix_max=2048, capacity=4096, rows=2, gen_batch=8, gen_tokens=128,
             repeats=3)
SMALL = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=512, vision_width=64,
              vision_layers=2, vision_heads=2, image_size=32, batch=4, mix_batch=4, text_tokens=24, mix_samples=8, mix_median=12,
              mix_max=48, capacity=128, rows=2, gen_batch=2, gen_tokens=4, repeats=1)


# ---- models -------------------------------------------------------------------------------------------------------
def special(sizes: Sizes) -> tuple[int, int, int]:
    return sizes.vocab - IMAGE_OFFSET, sizes.vocab - START_OFFSET, sizes.vocab - END_OFFSET


def text_config(sizes: Sizes):
    return AutoConfig.for_model(
        "qwen3", vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        head_dim=sizes.head_dim, max_position_embeddings=max(8192, sizes.capacity), tie_word_embeddings=True,
        rope_theta=1e6, rms_norm_eps=1e-6, pad_token_id=PAD, eos_token_id=None, bos_token_id=None)


def build_ours(sizes: Sizes, device: str, dtype: torch.dtype, attn: str) -> MultiMeditronForCausalLM:
    image, start, end = special(sizes)
    # ViT-B/16's own values at full size (768 wide, 12 layers, 12 heads); smaller in --small
    options = {"embed_dim": sizes.vision_width, "depth": sizes.vision_layers, "num_heads": sizes.vision_heads}
    config = MultiMeditronConfig(text_config=text_config(sizes), image_token_id=image, image_start_token_id=start,
                                 image_end_token_id=end,
                                 experts=[{"id": "timm:vit_base_patch16_224", "image_size": sizes.image_size,
                                           "options": options}])
    config._attn_implementation = attn
    with torch.device(device):
        model = MultiMeditronForCausalLM(config).to(dtype)
    model.vision.experts.requires_grad_(False)  # end-to-end stage: LLM + projector train, vision frozen
    return model


def build_llava(sizes: Sizes, device: str, dtype: torch.dtype, attn: str) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(hidden_size=sizes.vision_width, intermediate_size=4 * sizes.vision_width,
                              num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                              image_size=sizes.image_size, patch_size=16)
    config = LlavaConfig(vision_config=vision, text_config=text_config(sizes), image_token_index=special(sizes)[0],
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn).to(dtype)
    model.model.vision_tower.requires_grad_(False)
    return model


def image_tokens(model) -> int:
    if isinstance(model, MultiMeditronForCausalLM):
        return model.num_image_tokens
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2  # "default" strategy: the CLS token is dropped


# ---- batches ------------------------------------------------------------------------------------------------------
def sample(sizes: Sizes, n_text: int, n_image: int, rng: np.random.Generator) -> torch.Tensor:
    image, start, end = special(sizes)
    text = torch.from_numpy(rng.integers(10, sizes.vocab - 10, n_text))
    return torch.cat([torch.tensor([start]), torch.full((n_image,), image), torch.tensor([end]), text])


def labels_of(ids: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    # SFT-style: only the text is trained on; image span and padding carry no label
    return ids.masked_fill(ids >= sizes.vocab - 3, -100).masked_fill(ids == PAD, -100)


def padded_batch(samples: list[torch.Tensor], sizes: Sizes, device: str, dtype: torch.dtype) -> dict:
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), PAD)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(samples):
        ids[row, :len(s)], mask[row, :len(s)] = s, 1
    pixels = torch.rand(len(samples), 3, sizes.image_size, sizes.image_size)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels_of(ids, sizes).to(device),
            "pixel_values": pixels.to(device, dtype)}


def packed_batches(samples: list[torch.Tensor], sizes: Sizes, device: str, dtype: torch.dtype) -> list[dict]:
    """The package's packer and sample ids: rows of `capacity` tokens, `rows` per step (the last step may hold fewer)."""
    bins = packing.pack([len(s) for s in samples], sizes.capacity)
    batches = []
    for first in range(0, len(bins), sizes.rows):
        group = bins[first:first + sizes.rows]
        ids = torch.full((len(group), sizes.capacity), PAD)
        for row, members in enumerate(group):
            tokens = torch.cat([samples[i] for i in members])
            ids[row, :len(tokens)] = tokens
        n_images = sum(len(members) for members in group)
        batches.append({
            "input_ids": ids.to(device), "labels": labels_of(ids, sizes).to(device),
            "sample_ids": packing.row_sample_ids([[len(samples[i]) for i in m] for m in group], sizes.capacity)
            .to(device),
            "pixel_values": torch.rand(n_images, 3, sizes.image_size, sizes.image_size).to(device, dtype)})
    return batches


def mix_lengths(sizes: Sizes) -> list[int]:
    rng = np.random.default_rng(0)
    lengths = rng.lognormal(np.log(sizes.mix_median), 1.0, sizes.mix_samples)
    return [int(x) for x in np.clip(lengths, 8, sizes.mix_max)]


# ---- FLOPs and timing ---------------------------------------------------------------------------------------------
def useful_flops(model, sizes: Sizes, sample_lengths: list[int], images: int) -> float:
    """6 x trained LLM-side parameters x real tokens + causal attention (fwd + bwd) + the frozen vision forward."""
    llm = model.language_model if isinstance(model, MultiMeditronForCausalLM) else model.model.language_model
    embedding = llm.get_input_embeddings().weight.numel()
    # Every LLM matmul weight, the LM head included (tied: the embedding counted once, as the head).
    dense = sum(p.numel() for p in llm.parameters()) - embedding + sizes.vocab * sizes.hidden
    projector = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "projector" in n)
    vision = model.vision.experts if isinstance(model, MultiMeditronForCausalLM) else model.model.vision_tower
    vision_params = sum(p.numel() for p in vision.parameters())
    vision_tokens = (sizes.image_size // 16) ** 2 + 1
    tokens = sum(sample_lengths)
    attention = 6 * sizes.layers * sizes.heads * sizes.head_dim * sum(n * n for n in sample_lengths)
    vision_forward = images * (2 * vision_params * vision_tokens
                               + 4 * sizes.vision_layers * sizes.vision_width * vision_tokens ** 2)
    return 6 * dense * tokens + 6 * projector * images * image_tokens(model) + attention + vision_forward


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    n = 8192 if device.startswith("cuda") else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start, iterations = time.perf_counter(), 20 if device.startswith("cuda") else 5
    for _ in range(iterations):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * iterations / (time.perf_counter() - start)


def optimizer_for(model, device: str) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-6, fused=device.startswith("cuda"))


def time_training(model, batches: list[dict], device: str, repeats: int) -> tuple[float, float]:
    """Seconds per pass over `batches` (median of `repeats`, after a warm-up step per batch shape) and peak GiB."""
    model.train()
    optimizer = optimizer_for(model, device)

    def step(batch: dict) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seen = set()
    for batch in batches:  # warm-up: kernels, flex compilation, optimizer state
        shape = tuple(batch["input_ids"].shape)
        if shape not in seen:
            seen.add(shape)
            step(batch)
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return statistics.median(times), peak


def time_generation(model, sizes: Sizes, device: str, dtype: torch.dtype) -> float:
    """New tokens per second, greedy, KV cache, a batch of equal-length image + text prompts."""
    model.eval()
    rng = np.random.default_rng(1)
    prompts = [sample(sizes, 32, image_tokens(model), rng) for _ in range(sizes.gen_batch)]
    batch = padded_batch(prompts, sizes, device, dtype)
    batch.pop("labels")
    kwargs = {"max_new_tokens": sizes.gen_tokens, "min_new_tokens": sizes.gen_tokens, "do_sample": False,
              "pad_token_id": PAD}
    with torch.no_grad():
        model.generate(**batch, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        synchronize(device)
    new = (out.shape[1] - batch["input_ids"].shape[1]) * sizes.gen_batch
    return new / (time.perf_counter() - start)


# ---- packing paths and their equality check -------------------------------------------------------------------------
def packing_paths(device: str) -> list[str]:
    """The attention implementations whose packing path runs here (model.packed_attention.PACKING_PATHS)."""
    paths = ["sdpa"]
    if device.startswith("cuda"):
        from transformers.utils import is_torch_flex_attn_available

        if is_torch_flex_attn_available():
            paths.append("flex_attention")
        if importlib.util.find_spec("flash_attn") is not None:
            paths.append("flash_attention_2")
    return paths


def check_packing(device: str, paths: list[str]) -> list[dict]:
    """Packed vs separate runs on a small model, per path: max logit difference and max relative gradient difference."""
    sizes = SMALL
    results = []
    for path in paths:
        dtype = torch.bfloat16 if path.startswith("flash") else torch.float32  # flash-attn takes half precision only
        torch.manual_seed(0)
        model = build_ours(sizes, device, dtype, "sdpa")
        model.language_model.set_attn_implementation(path)
        rng = np.random.default_rng(2)
        samples = [sample(sizes, n, image_tokens(model), rng) for n in (5, 11, 7)]
        ids = torch.cat(samples)[None]
        packed = {"input_ids": ids.to(device), "labels": labels_of(ids, sizes).to(device),
                  "sample_ids": packing.row_sample_ids([[len(s) for s in samples]], ids.shape[1]).to(device),
                  "pixel_values": torch.rand(len(samples), 3, sizes.image_size, sizes.image_size).to(device, dtype)}
        separate = []
        for i, s in enumerate(samples):
            single = padded_batch([s], sizes, device, dtype)
            single["pixel_values"] = packed["pixel_values"][i:i + 1]
            separate.append(single)
        model.eval()
        with torch.no_grad():
            logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0].float()
            start, logit_diff = 0, 0.0
            for s, single in zip(samples, separate):
                alone = model(**{k: v for k, v in single.items() if k != "labels"}).logits[0].float()
                logit_diff = max(logit_diff, float((logits[start:start + len(s)] - alone).abs().max()))
                start += len(s)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        count = int((packed["labels"][:, 1:] != -100).sum())
        packed_grads = torch.autograd.grad(model(**packed, num_items_in_batch=count).loss, params, allow_unused=True)
        separate_loss = sum(model(**single, num_items_in_batch=count).loss for single in separate)
        separate_grads = torch.autograd.grad(separate_loss, params, allow_unused=True)
        grad_diff = max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))
                        for a, b in zip(packed_grads, separate_grads) if a is not None and b is not None)
        tolerance = (5e-2, 5e-2) if dtype == torch.bfloat16 else (2e-3, 1e-3)
        results.append({"path": path, "dtype": str(dtype).replace("torch.", ""), "logit_diff": logit_diff,
                        "grad_diff": grad_diff, "ok": logit_diff <= tolerance[0] and grad_diff <= tolerance[1]})
        del model
    return results


# ---- the run ------------------------------------------------------------------------------------------------------
def measure(model, sizes: Sizes, batches: list[dict], lengths: list[int], device: str) -> dict:
    seconds, peak = time_training(model, batches, device, sizes.repeats)
    return {"steps": len(batches), "seconds": seconds, "tokens": sum(lengths), "samples": len(lengths), "peak": peak,
            "flops": useful_flops(model, sizes, lengths, images=len(lengths))}


def run_model(name: str, sizes: Sizes, device: str, dtype: torch.dtype, paths: list[str]) -> list[dict]:
    builder = build_llava if name == "llava" else build_ours
    torch.manual_seed(0)
    model = builder(sizes, device, dtype, "sdpa")
    if sizes.gradient_checkpointing:  # not counted in the useful FLOPs: it lowers MFU by the recomputation
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_image = image_tokens(model)
    rng = np.random.default_rng(0)
    rows = []
    equal = [sample(sizes, sizes.text_tokens, n_image, rng) for _ in range(sizes.batch)]
    rows.append({"scenario": "equal lengths, padded", "model": name, "path": "sdpa",
                 **measure(model, sizes, [padded_batch(equal, sizes, device, dtype)], [len(s) for s in equal],
                           device)})
    mix = [sample(sizes, n, n_image, rng) for n in mix_lengths(sizes)]
    lengths = [len(s) for s in mix]
    if name == "llava":
        batches = [padded_batch(mix[i:i + sizes.mix_batch], sizes, device, dtype)
                   for i in range(0, len(mix), sizes.mix_batch)]
        rows.append({"scenario": "variable-length mix", "model": name, "path": "sdpa, padded",
                     **measure(model, sizes, batches, lengths, device)})
    else:
        batches = packed_batches(mix, sizes, device, dtype)
        for path in paths:
            model.language_model.set_attn_implementation(path)
            rows.append({"scenario": "variable-length mix", "model": name, "path": f"{path}, packed",
                         **measure(model, sizes, batches, lengths, device)})
        model.language_model.set_attn_implementation("sdpa")
    rows.append({"scenario": "generation (KV cache)", "model": name, "path": "sdpa",
                 "tokens_per_s": time_generation(model, sizes, device, dtype)})
    del model, batches
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def print_report(rows: list[dict], peak: float, device: str) -> None:
    baseline = {(r["scenario"]): r for r in rows if r["model"] == "llava"}
    print(f"\n| scenario | model | attention | step s | tokens/s | samples/s | peak GiB | MFU ({peak / 1e12:.3g} "
          "TFLOP/s measured) | MFU (989 TFLOP/s) | samples/s vs Llava |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "tokens_per_s" in r:
            ratio = r["tokens_per_s"] / baseline[r["scenario"]]["tokens_per_s"]
            print(f"| {r['scenario']} | {r['model']} | {r['path']} | | {r['tokens_per_s']:.0f} new | | | | | "
                  f"{ratio:.2f}x (tokens/s) |")
            continue
        rate = r["samples"] / r["seconds"]
        ratio = rate / (baseline[r["scenario"]]["samples"] / baseline[r["scenario"]]["seconds"])
        achieved = r["flops"] / r["seconds"]
        memory = f"{r['peak']:.1f}" if device.startswith("cuda") else "n/a"
        print(f"| {r['scenario']} | {r['model']} | {r['path']} | {r['seconds'] / r['steps']:.3f} | "
              f"{r['tokens'] / r['seconds']:.0f} | {rate:.2f} | {memory} | {100 * achieved / peak:.1f}% | "
              f"{100 * achieved / DATASHEET_PEAK:.1f}% | {ratio:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes on CPU in fp32 (a smoke run of this code)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="checkpoint both models' layers (less memory; the recomputation lowers MFU)")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    if not args.small and not torch.cuda.is_available():
        parser.error("no CUDA device here; --small runs the same code on CPU")
    device, dtype = ("cpu", torch.float32) if args.small else ("cuda", torch.bfloat16)
    sizes = dataclasses.replace(sizes, gradient_checkpointing=args.gradient_checkpointing)
    threads = torch.get_num_threads()
    if args.small:
        torch.set_num_threads(1)  # tiny matrices: several threads only contend (40x slower on a loaded machine)
    try:
        return run(sizes, device, dtype)
    finally:
        torch.set_num_threads(threads)


def run(sizes: Sizes, device: str, dtype: torch.dtype) -> int:
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"flash-attn {'installed' if importlib.util.find_spec('flash_attn') else 'absent'}; {dtype}")
    paths = packing_paths(device)
    checks = check_packing(device, paths + ["eager"])
    print("\n| packing path | dtype | max logit diff | max grad diff (relative) | packed == separate |")
    print("|---|---|---|---|---|")
    for c in checks:
        print(f"| {c['path']} | {c['dtype']} | {c['logit_diff']:.2e} | {c['grad_diff']:.2e} | "
              f"{'yes' if c['ok'] else 'NO'} |")
    peak = matmul_peak(device, dtype)
    rows = run_model("llava", sizes, device, dtype, paths) + run_model("multimeditron", sizes, device, dtype, paths)
    print(f"\nLLM hidden {sizes.hidden} x {sizes.layers} layers, vision width {sizes.vision_width} x "
          f"{sizes.vision_layers} at {sizes.image_size} px; equal batch {sizes.batch} x {sizes.text_tokens} text "
          f"tokens; mix of {sizes.mix_samples} samples (median {sizes.mix_median} text tokens), Llava padded "
          f"{sizes.mix_batch} per step, ours packed {sizes.rows} x {sizes.capacity} per step; measured peak "
          f"{peak / 1e12:.3g} TFLOP/s")
    print_report(rows, peak, device)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
