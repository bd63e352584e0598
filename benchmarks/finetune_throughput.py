"""Fine-tuning throughput of the expert half's engine (HF Trainer, `adaptation.engine`) against a plain PyTorch loop
over the same model, batch, data and optimiser groups: images per second, and their ratio.

Both train the same `ClassificationObjective` (expert + linear head, layer-wise lr decay groups, AdamW, warmup +
cosine) on the same in-memory canvases (decoding is not what is compared). The plain loop is what timm's `train.py`
does per step: forward, loss, zero_grad, backward, step, scheduler step. Throughput is the steady state: images of
the epochs after the first over their time; the engine's fixed start-up (Trainer and accelerate set-up, the first
epoch's extra cost) is printed apart. Runs alternate engine / plain so that a busy machine slows both alike; each
figure is the median over `--repeats` runs, after one warm-up run each.

    python benchmarks/finetune_throughput.py                         # tiny expert and ViT-S/16 at 224 px, CPU
    python benchmarks/finetune_throughput.py --experts vits16 --device cuda --images 512 --batch-size 64
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

EXPERTS = {
    "tiny": '{id: "timm:vit_small_patch16_224", tiny: true, image_size: 32, options: {patch_size: 8}}',
    "vits16": '{id: "timm:vit_small_patch16_224", image_size: 224}',
}


class Canvases(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(n, 3, size, size, generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def build(spec: str, device: str):
    from multimeditron.adaptation.experts import load_expert
    from multimeditron.adaptation.finetune import ClassificationObjective, build_classifier
    from multimeditron.adaptation.optim import param_groups
    from multimeditron.adaptation.recipes import FinetuneSection

    expert, _ = load_expert(spec, seed=0)
    settings = FinetuneSection(drop_path=0.0, augment=False)
    classifier = build_classifier(expert, 2, settings)
    objective = ClassificationObjective(classifier, settings, 2).to(device)
    return objective, param_groups(classifier.expert, classifier.head, 0.05, settings.layer_decay)


def run_engine(spec: str, data: Canvases, batch: int, epochs: int, device: str) -> tuple[float, float]:
    """(steady images/s, seconds outside the steady epochs)."""
    from transformers import TrainerCallback

    from multimeditron.adaptation.engine import Schedule, train_objective
    from multimeditron.training.arguments import training_arguments

    ends: list[float] = []

    class EpochEnds(TrainerCallback):
        def on_epoch_end(self, *args, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    objective, groups = build(spec, device)
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments({"output_dir": out, "num_train_epochs": epochs, "per_device_train_batch_size": batch,
                                   "learning_rate": 1e-4, "weight_decay": 0.05, "max_grad_norm": 0.0,
                                   "save_strategy": "no", "eval_strategy": "no", "logging_strategy": "epoch",
                                   "report_to": "none", "disable_tqdm": True, "seed": 0,
                                   "use_cpu": device == "cpu", "bf16": device == "cuda"})
        start = time.perf_counter()
        train_objective(objective, data, args, groups, Schedule(warmup_epochs=0.5), callbacks=[EpochEnds()])
        total = time.perf_counter() - start
    steady = ends[-1] - ends[0]
    return (epochs - 1) * len(data) / steady, total - steady


def run_plain(spec: str, data: Canvases, batch: int, epochs: int, device: str) -> tuple[float, float]:
    from transformers import get_scheduler

    objective, groups = build(spec, device)
    optimizer = torch.optim.AdamW([{**g, "lr": 1e-4 * g["lr_scale"]} for g in groups], lr=1e-4)
    steps = epochs * -(-len(data) // batch)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=steps // (2 * epochs),
                              num_training_steps=steps, scheduler_specific_kwargs={"min_lr_rate": 0.01})
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=generator)
    start = time.perf_counter()
    ends = []
    objective.train()
    for _ in range(epochs):
        for item in loader:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = objective(item["pixel_values"].to(device), item["labels"].to(device))["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if device == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    steady = ends[-1] - ends[0]
    return (epochs - 1) * len(data) / steady, ends[-1] - start - steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="tiny,vits16", help=f"comma-separated, of {sorted(EXPERTS)}")
    parser.add_argument("--images", type=int, default=None, help="per epoch (default: 512 tiny, 64 vits16)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not in the steady figure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: no stalls on a busy machine)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for name in [e.strip() for e in args.experts.split(",") if e.strip()]:
        size = 32 if name == "tiny" else 224
        data = Canvases(args.images or (512 if name == "tiny" else 64), size)
        figures: dict[str, list[float]] = {"engine": [], "plain": []}
        startup: dict[str, list[float]] = {"engine": [], "plain": []}
        for repeat in range(args.repeats + 1):  # the first pair warms caches and allocators up, and is dropped
            for label, fn in (("engine", run_engine), ("plain", run_plain)):
                value, outside = fn(EXPERTS[name], data, args.batch_size, args.epochs, args.device)
                if repeat:
                    figures[label].append(value)
                    startup[label].append(outside)
                print(f"{name} {label} run {repeat}: {value:.1f} images/s steady, {outside:.2f} s outside the steady "
                      f"epochs", flush=True)
        engine, plain = (statistics.median(figures[k]) for k in ("engine", "plain"))
        ratios = [e / p for e, p in zip(figures["engine"], figures["plain"])]
        extra = statistics.median(startup["engine"]) - statistics.median(startup["plain"])
        rows.append((name, size, len(data), engine, plain, min(ratios), statistics.median(ratios), max(ratios), extra))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"\n{device}; batch {args.batch_size}, {args.epochs} epochs per run, median of {args.repeats} runs")
    print("| expert | px | images/epoch | engine images/s | plain loop images/s | engine / plain (min, median, max) "
          "| engine start-up, s |")
    print("|---|---|---|---|---|---|---|")
    for name, size, n, engine, plain, low, mid, high, extra in rows:
        print(f"| {name} | {size} | {n} | {engine:.1f} | {plain:.1f} | {low:.2f}, {mid:.2f}, {high:.2f} | {extra:.2f} |")


if __name__ == "__main__":
    main()
