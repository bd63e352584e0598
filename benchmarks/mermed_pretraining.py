"""Does `adapt --objective mermed` learn, and how fast is its step? On labelled drawn images (`--data findings`: the
quickstart's, `multimeditron.data.synthetic_findings`: modality, finding left/right, number of findings; `--data
textures`: grey textures, one label per kind: stripes, checks, dots, cells), a tiny ViT expert is
pretrained WITHOUT labels on the train split; the teacher it writes and the same expert at its random start are
then probed on held-out labels: cosine kNN and a linear probe (`multimeditron.probing`, hyperparameters chosen on
val), test AUROC per label with 95% bootstrap intervals.

Speed: images per second per process of the engine's step (HF Trainer, the objective, the EMA callback) against a
plain-loop re-creation of the published `train_one_epoch` (yangzhou12/MerMED `main_mermed.py`: per-iteration lr /
wd / momentum / teacher-temperature arrays, the criterion's double loop over view pairs, DINO's per-parameter
gradient clipping, the EMA loop over parameters) on the same tiny ViT, crops and batches; data loading included in
both. The loop lives here only, as a yardstick.

    OMP_NUM_THREADS=1 python benchmarks/mermed_pretraining.py       # ~10 min on 2 shared CPU cores
    OMP_NUM_THREADS=1 python benchmarks/mermed_pretraining.py --data textures --skip-speed   # ~4 min
    OMP_NUM_THREADS=1 python benchmarks/mermed_pretraining.py --skip-probes --speed-rounds 5   # speed only

The method's keys at this scale differ from the recipe's (the published command's): `tiny_settings` says which and
why. Speed is steady state: the time from the end of step `--speed-skip` to the end of the last step (start-up,
the first steps and the final save left out), engine and plain loop alternated, the median of `--speed-rounds`.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXPERT = '{id: "timm:vit_small_patch16_224", tiny: true, image_size: 64, options: {patch_size: 8}}'
TEXTURES = ("stripes", "checks", "dots", "cells")


def draw_texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A `size`-px grey (RGB uint8) image of one texture kind filling the frame, so that every crop, flip and colour
    jitter keeps the kind, under nuisances: period, orientation and phase (or density and size) drawn within the
    kind's range, background level, contrast, an illumination slope and noise. The level and contrast stay within the
    colour jitter's span (+-20%), and there is no colour tint: a per-image tint of +-5% per channel, beyond the
    jitter's hue 0.02 / saturation 0.1, was what pretraining kept (the teacher's first principal components, 90% of
    its variance, followed the tint; cosine kNN fell below the random start)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind in ("stripes", "checks"):
        theta, period = rng.uniform(0, np.pi), rng.uniform(5, 10)
        u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
        pattern = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        if kind == "checks":
            pattern = pattern * np.sin(2 * np.pi * v / (period * rng.uniform(0.8, 1.25)) + rng.uniform(0, 2 * np.pi))
            pattern = pattern / max(np.abs(pattern).max(), 1e-6)
    else:
        n = int(rng.integers(25, 50) * size * size / 4096)
        seeds = rng.uniform(0, size, (n, 2))
        d = np.sqrt((x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2)
        if kind == "dots":
            pattern = np.exp(-0.5 * (d.min(-1) / rng.uniform(1.5, 3.0)) ** 2)
        else:  # the edges of the seeds' Voronoi cells
            d.sort(-1)
            pattern = np.exp(-0.5 * ((d[..., 1] - d[..., 0]) / rng.uniform(0.6, 1.2)) ** 2)
        pattern = 2 * pattern - 1
    phi = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(-0.1, 0.1) * ((x - size / 2) * np.cos(phi) + (y - size / 2) * np.sin(phi)) / size
    grey = rng.uniform(0.4, 0.6) + rng.uniform(0.15, 0.25) * pattern + slope
    rgb = grey[..., None] + rng.normal(0, rng.uniform(0.02, 0.05), (size, size, 3))
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def generate_texture_images(out_dir: Path, sizes: dict[str, int], seed: int, image_size: int = 64) -> None:
    """train/val/test splits of drawn textures, one 0/1 column per kind (balanced, shuffled), saved to `out_dir`."""
    from datasets import Dataset, DatasetDict, Features, Value
    from PIL import Image

    from multimeditron.data.synthetic import png_bytes

    schema = Features({"image": {"bytes": Value("binary"), "path": Value("string")},
                       **{kind: Value("int64") for kind in TEXTURES}})
    streams = np.random.SeedSequence([int(seed), 7]).spawn(len(sizes))
    splits = {}
    for (name, n), stream in zip(sizes.items(), streams):
        rng = np.random.default_rng(stream)
        kinds = [TEXTURES[j % len(TEXTURES)] for j in rng.permutation(n)]
        rows = [{"image": {"bytes": png_bytes(Image.fromarray(draw_texture(rng, k, image_size))), "path": None},
                 **{t: int(t == k) for t in TEXTURES}} for k in kinds]
        splits[name] = Dataset.from_dict({c: [r[c] for r in rows] for c in schema}, features=schema)
    DatasetDict(splits).save_to_disk(str(out_dir))


def draw_data(args: argparse.Namespace, out_dir: Path) -> tuple[str, ...]:
    """The labelled drawn set `--data` names, saved to `out_dir`; returns its label columns."""
    if args.data == "textures":
        generate_texture_images(out_dir, {"train": args.train, "val": args.val, "test": args.test}, args.seed)
        return TEXTURES
    from multimeditron.data.synthetic_findings import LABEL_COLUMNS, generate_finding_images

    generate_finding_images(out_dir, args.train, args.val, args.test, seed=args.seed, image_size=64)
    return LABEL_COLUMNS


def tiny_settings(args: argparse.Namespace) -> list[str]:
    """The method's keys at this scale (the recipe's defaults are the published command's, for 131072-entry banks
    and 100s of thousands of steps; README, Benchmarks): a bank of the train split's size (full after
    one epoch, none of the random start left to score against), partitions of 64, an EMA that follows the student
    within ~10 steps (0.9 -> 1; 0.9995 leaves the exported teacher at its random start over a few hundred steps),
    one rate for every block (layer decay 1: a 2-block ViT from random weights has no pretrained lower layers to
    keep), crops that keep most of a 64-px image (global 0.6-1, local 0.1-0.4: at 0.2 the few small findings the
    labels count are often cut out), a narrow head."""
    out_dim = args.out_dim or args.train
    return [f"mermed.local_crops_number={args.local_crops}", f"mermed.out_dim={out_dim}",
            f"mermed.partition_size={min(args.partition_size, out_dim)}", "mermed.momentum_teacher=0.9",
            "mermed.layer_decay=1.0", "mermed.global_crops_scale=[0.6,1.0]", "mermed.local_crops_scale=[0.1,0.4]",
            "mermed.hidden_dim=256", "mermed.bottleneck_dim=64", "mermed.drop_path=0.1",
            "mermed.warmup_teacher_temp_epochs=2"]


def method_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--objective", "mermed", "--expert", EXPERT, "--batch-size", str(args.batch), "--lr", str(args.lr),
             "--warmup-epochs", "2", "--seed", str(args.seed)]
    for key in tiny_settings(args):
        flags += ["--set", key]
    return flags


def probe_table(folder: Path, spec: str, seed: int, n_resamples: int,
                columns: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """{protocol: {label: bootstrap AUROC entry}} of an expert (a SPEC) on the drawn test split."""
    from multimeditron.config import DatasetEntry
    from multimeditron.data.sources import load_source
    from multimeditron.probing.bootstrap import bootstrap_metrics
    from multimeditron.probing.embed import embed
    from multimeditron.probing.protocols.common import Labelled, ProbeInputs
    from multimeditron.probing.protocols.knn import knn_probe
    from multimeditron.probing.protocols.linear import linear_probe
    from multimeditron.probing.specs import build_probe_expert, parse_spec

    expert = build_probe_expert(parse_spec(spec), seed)
    splits = {}
    for split in ("train", "val", "test"):
        table = load_source(DatasetEntry(str(folder)), split).dataset
        rows = [table[i]["image"] for i in range(len(table))]
        labels = np.stack([np.asarray(table[c]) for c in columns], axis=1)
        splits[split] = Labelled(embed(expert, rows, progress=False, n_layers=1), labels)
    data = ProbeInputs(splits["train"], splits["val"], splits["test"], len(columns), multilabel=True)
    out = {}
    for name, result in (("knn", knn_probe(data, ks=(5, 10, 20))),
                         ("linear", linear_probe(data, epochs=100, layer_counts=(1,),
                                                 seed=seed))):
        out[name] = {label: bootstrap_metrics(result.test_labels[:, [c]], result.test_scores[:, [c]], multilabel=True,
                                              n_resamples=n_resamples, seed=seed, metrics=("auroc",))["auroc"]
                     for c, label in enumerate(columns)}
    return out


def published_step_loop(args: argparse.Namespace, data: Path, steps: int) -> list[float]:
    """Time at the end of each step of a plain re-creation of the published loop over the same crops."""
    from multimeditron.adaptation.experts import load_expert
    from multimeditron.adaptation.multicrop import (
        MultiCropCanvases,
        local_crop_size,
        resolve_sources,
    )
    from multimeditron.adaptation.optim import param_groups
    from multimeditron.adaptation.recipes import AdaptRecipe, load_recipe
    from multimeditron.adaptation.self_distillation import MemorySelfDistillation
    from multimeditron.adaptation.trunk import vit_trunk

    keys = [("objective", "mermed", ""), ("data.path", str(data), ""), ("expert.spec", EXPERT, "")]
    recipe = load_recipe(AdaptRecipe, None, keys, tiny_settings(args))
    expert, _ = load_expert(EXPERT, seed=args.seed)
    m = recipe.mermed
    objective = MemorySelfDistillation(expert.train(), m, args.seed)
    sources = resolve_sources(recipe.data, expert.mean, expert.std)
    dataset = MultiCropCanvases(sources, expert.image_size, local_crop_size(expert.image_size, 8, m.local_crop_size), m, args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    groups = param_groups(objective.student, objective.student_head, 0.04, m.layer_decay)
    optimizer = torch.optim.AdamW(groups)
    total = steps
    lr = np.linspace(0, args.lr, total)  # published: cosine_scheduler arrays indexed by the iteration
    wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.arange(total) / total))
    mom = 1 + 0.5 * (m.momentum_teacher - 1) * (1 + np.cos(np.pi * np.arange(total) / total))
    temp = np.full(total, m.teacher_temp)
    it, stamps = 0, []
    while it < total:
        for batch in loader:
            if it == total:
                break
            for g in optimizer.param_groups:
                g["lr"] = lr[it] * g["lr_scale"]
                if g["weight_decay"] != 0:
                    g["weight_decay"] = wd[it]
            crops, n = batch["global_crops"], batch["global_crops"].shape[0]
            views = crops.transpose(0, 1).flatten(0, 1)
            local = batch["local_crops"].transpose(0, 1).flatten(0, 1)
            student = torch.cat([objective.embed(objective.student, objective.student_head, views),
                                 objective.embed(objective.student, objective.student_head, local)])
            with torch.no_grad():
                teacher = objective.embed(objective.teacher, objective.teacher_head, views)
            s, valid = objective.bank.scores(student, batch["modality"])
            t, _ = objective.bank.scores(teacher, batch["modality"])
            objective.bank.enqueue(teacher[n:], batch["modality"])
            s = s.masked_fill(~valid, -float("inf")) / m.student_temp
            t = t.masked_fill(~valid[: 2 * n], -float("inf")) / temp[it]
            ids = torch.multinomial(torch.ones(m.out_dim), (m.out_dim // m.partition_size) * m.partition_size)
            s_views = [torch.stack(v[:, ids].split(m.partition_size, dim=1)) for v in s.chunk(s.shape[0] // n)]
            t_views = [torch.stack(v[:, ids].split(m.partition_size, dim=1)) for v in t.chunk(2)]
            loss, count = 0.0, 0
            for i, p in enumerate(s_views):  # criterion.py: every student crop against every other teacher view
                for j, q in enumerate(t_views):
                    if i == j:
                        continue
                    bad = torch.isinf(p) | torch.isinf(q)
                    terms = -torch.softmax(q, -1) * torch.log_softmax(p, -1)
                    loss = loss + torch.where(bad, torch.zeros_like(terms), terms).sum(-1).mean()
                    count += 1
            loss = loss / count
            optimizer.zero_grad()
            loss.backward()
            for p in [*objective.student.parameters(), *objective.student_head.parameters()]:  # clip_gradients
                if p.grad is not None:
                    coef = 1.0 / (p.grad.norm(2) + 1e-6)
                    if coef < 1:
                        p.grad.mul_(coef)
            optimizer.step()
            with torch.no_grad():
                for q_, k_ in zip([*objective.student.parameters(), *objective.student_head.parameters()],
                                  [*objective.teacher.parameters(), *objective.teacher_head.parameters()]):
                    k_.mul_(mom[it]).add_((1 - mom[it]) * q_.detach())
            stamps.append(time.perf_counter())
            it += 1
    assert vit_trunk(objective.student) is not None
    return stamps


def engine_speed(args: argparse.Namespace, data: Path, out: Path, steps: int) -> list[float]:
    """Time at the end of each optimiser step of `adapt --objective mermed` (after the EMA update: the end of
    `EmaTeacher.on_step_end`), the command run whole; nothing is saved during the steps."""
    from multimeditron.adaptation import self_distillation
    from multimeditron.cli import main

    stamps: list[float] = []
    original = self_distillation.EmaTeacher.on_step_end

    def stamped(self: Any, *a: Any, **k: Any) -> None:
        original(self, *a, **k)
        stamps.append(time.perf_counter())

    self_distillation.EmaTeacher.on_step_end = stamped
    try:
        epochs = steps * args.batch / args.train
        assert main(["adapt", *method_flags(args), "--data", str(data), "--out", str(out), "--epochs", f"{epochs:g}",
                     "--warmup-epochs", "0", "--set", "training_args.save_strategy='no'",
                     "--set", "training_args.disable_tqdm=true"]) == 0
    finally:
        self_distillation.EmaTeacher.on_step_end = original
    return stamps


def steady_rate(stamps: list[float], skip: int, batch: int) -> float:
    """Images per second between the end of step `skip` and the end of the last step: start-up, the first steps
    and the final save left out."""
    if len(stamps) <= skip + 1:
        raise SystemExit(f"--speed-steps must exceed --speed-skip + 1 ({skip + 1})")
    return (len(stamps) - 1 - skip) * batch / (stamps[-1] - stamps[skip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("findings", "textures"), default="findings",
                        help="the quickstart's drawn findings, or drawn textures (labels: the texture's kind)")
    parser.add_argument("--baseline-only", action="store_true", help="probe the random start only, no pretraining")
    parser.add_argument("--train", type=int, default=192)
    parser.add_argument("--val", type=int, default=96)
    parser.add_argument("--test", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--local-crops", type=int, default=2)
    parser.add_argument("--out-dim", type=int, default=None, help="bank entries (default: --train)")
    parser.add_argument("--partition-size", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-steps", type=int, default=30)
    parser.add_argument("--speed-skip", type=int, default=5, help="first steps left out of the speed")
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from multimeditron.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="mermed-bench-"))
    data = work / args.data
    columns = draw_data(args, data)
    train_only = work / "train"
    from datasets import load_from_disk

    load_from_disk(str(data))["train"].remove_columns(
        [c for c in load_from_disk(str(data))["train"].column_names if c != "image"]).save_to_disk(str(train_only))
    if args.baseline_only:
        return print(json.dumps({p: {k: round(v["value"], 3) for k, v in t.items()} for p, t in
                                 probe_table(data, EXPERT, args.seed, args.bootstrap, columns).items()}))
    if args.skip_probes:
        args.epochs = 0
    start = time.perf_counter()
    assert args.epochs == 0 or cli(["adapt", *method_flags(args), "--data", str(train_only), "--out", str(work / "run"), "--epochs",
                str(args.epochs), "--set", "training_args.disable_tqdm=true",
                "--set", "training_args.save_strategy='no'"]) == 0
    minutes = (time.perf_counter() - start) / 60
    if args.skip_probes:
        return speed(args, train_only, work)
    history = json.loads((work / "run" / "history.json").read_text())
    entropy = [h["teacher_entropy"] for h in history]
    print(f"pretraining: {args.train} unlabelled images, {args.epochs} epochs, {minutes:.1f} min; loss "
          f"{history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; teacher entropy {entropy[0]:.2f} -> "
          f"{entropy[-1]:.2f} (range {min(entropy):.2f}-{max(entropy):.2f}; 0 = collapse to one entry, "
          f"{math.log(min(args.partition_size, args.out_dim or args.train)):.2f} = uniform over a partition, "
          f"log(out_dim) {math.log(args.out_dim or args.train):.2f})")
    tables = {"random init": probe_table(data, EXPERT, args.seed, args.bootstrap, columns),
              "mermed (teacher)": probe_table(data, str(work / "run" / "final"), args.seed, args.bootstrap, columns)}

    for protocol in ("knn", "linear"):
        print(f"\n{protocol}: test AUROC [95% bootstrap interval], {args.test} test images")
        print("| label | random init | pretrained (mermed) |\n|---|---|---|")
        means = {name: [] for name in tables}
        for label in columns:
            cells = []
            for name, table in tables.items():
                e = table[protocol][label]
                means[name].append(e["value"])
                cells.append(f"{e['value']:.3f} [{e.get('low', float('nan')):.3f}, {e.get('high', float('nan')):.3f}]")
            print(f"| {label} | " + " | ".join(cells) + " |")
        print("| mean | " + " | ".join(f"{np.mean(v):.3f}" for v in means.values()) + " |")
    if not args.skip_speed:
        speed(args, train_only, work)


def speed(args: argparse.Namespace, train_only: Path, work: Path) -> None:
    """Steady-state images/s per process: engine and plain loop alternated `--speed-rounds` times (so a change in
    the machine's load hits both), each the median of its rounds."""
    engine, plain = [], []
    for r in range(args.speed_rounds):
        engine.append(steady_rate(engine_speed(args, train_only, work / f"speed{r}", args.speed_steps),
                                  args.speed_skip, args.batch))
        plain.append(steady_rate(published_step_loop(args, train_only, args.speed_steps), args.speed_skip,
                                 args.batch))
        print(f"speed round {r + 1}: engine {engine[-1]:.1f} images/s, published loop {plain[-1]:.1f} images/s")
    e, p = float(np.median(engine)), float(np.median(plain))
    ratios = [a / b for a, b in zip(engine, plain)]
    print(f"\nspeed (steps {args.speed_skip + 1}-{args.speed_steps} of {args.speed_steps}, {args.batch} images a step, "
          f"2 + {args.local_crops} crops, one process, {torch.get_num_threads()} threads, median of "
          f"{args.speed_rounds} alternated rounds): engine {e:.1f} images/s, published loop re-created {p:.1f} "
          f"images/s, ratio {e / p:.2f}; per round {', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f})")


if __name__ == "__main__":
    main()
