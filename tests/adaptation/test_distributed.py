"""The expert half under torchrun: two CPU processes (DDP, gloo; and DeepSpeed ZeRO-2 for `finetune`) train and score
like one process with the same global batch, for `finetune` and for `adapt`, and a YAML recipe runs exactly as the
same flags.

Tolerance: the weights agree to 1e-5 (DDP sums the two halves' gradients in another order than one process does,
which changes the last bits of each step); the metrics, computed on every image once, agree to 1e-6."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.adaptation.conftest import TEXTURE_EXPERT

ROOT = Path(__file__).resolve().parents[2]


def launch(processes: int, argv: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None) -> None:
    port = str(29700 + os.getpid() % 500)
    prefix = [sys.executable, "-m"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port", port, "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    proc = subprocess.run([*prefix, "multimeditron", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def assert_close_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    worst = max(float((left[k].float() - right[k].float()).abs().max()) for k in left)
    assert worst < atol, worst


def test_two_processes_finetune_like_one_with_the_same_global_batch(texture_folder: Path, tmp_path: Path) -> None:
    # Train divides by the global batch (32 images, 8 a step); val (7) and test (9) do not divide by 2 processes,
    # and every image must still be scored once. No drop path or mixup (they draw from each process's own
    # generator); augmentation is drawn per image, so it may stay on.
    import shutil

    data = tmp_path / "data"
    shutil.copytree(texture_folder, data)
    for split, keep in (("val", 7), ("test", 9)):
        files = sorted((data / split).rglob("*.png"), key=lambda p: (p.name, p.parent.name))  # classes alternate
        for extra in files[keep:]:
            extra.unlink()
    common = ["finetune", "--expert", TEXTURE_EXPERT, "--data", str(data), "--epochs", "2",
              "--lr", "2e-3", "--warmup-epochs", "0.5", "--drop-path", "0", "--seed", "3"]
    launch(1, [*common, "--batch-size", "8", "--out", "one"], tmp_path)
    launch(2, [*common, "--batch-size", "4", "--out", "two"], tmp_path)
    # DeepSpeed ZeRO-2 through the recipe's `deepspeed` key (CPU: DS_ACCELERATOR=cpu, the cookbook's CPU JSON)
    launch(2, [*common, "--batch-size", "4", "--out", "zero2", "--set",
               f"deepspeed={ROOT / 'cookbook' / 'deepspeed_zero2_cpu.json'}"], tmp_path, {"DS_ACCELERATOR": "cpu"})
    for run in ("two", "zero2"):
        for name in ("expert.safetensors", "head.safetensors"):
            assert_close_weights(tmp_path / "one" / "best" / name, tmp_path / run / "best" / name)
    one, two = (json.loads((tmp_path / run / "results.json").read_text())["runs"][0] for run in ("one", "two"))
    for split in ("val", "test"):
        for metric, value in one[split].items():
            if isinstance(value, float):
                assert two[split][metric] == pytest.approx(value, abs=1e-6), (split, metric)
    # every test image scored once: no duplicated or dropped image when 9 are shared by 2 processes
    import numpy as np

    predictions = np.load(tmp_path / "two" / "test_predictions.npz")
    assert len(predictions["labels"]) == len(predictions["probabilities"]) == 9
    assert one["chosen"] == two["chosen"]


def test_two_processes_adapt_like_one_with_the_same_global_batch(unlabelled_folder: Path, tmp_path: Path) -> None:
    common = ["adapt", "--expert", "retfound_green", "--tiny", "--data", str(unlabelled_folder), "--epochs", "2",
              "--lr", "1e-3", "--warmup-epochs", "0.5", "--augment", "--seed", "2"]
    launch(1, [*common, "--batch-size", "8", "--out", "one"], tmp_path)
    launch(2, [*common, "--batch-size", "4", "--out", "two"], tmp_path)
    assert_close_weights(tmp_path / "one" / "final" / "expert.safetensors",
                         tmp_path / "two" / "final" / "expert.safetensors")
    from multimeditron.experts.registry import build_expert

    torch.manual_seed(2)  # the run's random start (the command seeds before building the expert)
    start = build_expert({"id": "retfound_green", "tiny": True}).state_dict()
    adapted = load_file(str(tmp_path / "one" / "final" / "expert.safetensors"))
    assert start.keys() == adapted.keys() and any(not torch.equal(start[k], adapted[k]) for k in start)
    one, two = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("one", "two"))
    assert [h["loss"] for h in two] == pytest.approx([h["loss"] for h in one], rel=1e-4)


def test_a_yaml_recipe_runs_as_the_same_flags(texture_folder: Path, tmp_path: Path) -> None:
    """One process, in-process: `--config FILE` and the equivalent flags give identical weights and results."""
    from multimeditron.cli import main

    flags = ["--expert", TEXTURE_EXPERT, "--data", str(texture_folder), "--epochs", "1", "--batch-size", "8",
             "--lr", "2e-3", "--warmup-epochs", "0.5", "--layer-decay", "0.8", "--no-augment", "--seed", "4"]
    assert main(["finetune", *flags, "--out", str(tmp_path / "flags")]) == 0
    recipe = {"expert": {"spec": yaml.safe_load(TEXTURE_EXPERT)}, "data": {"path": str(texture_folder)},
              "finetune": {"layer_decay": 0.8, "augment": False}, "schedule": {"warmup_epochs": 0.5},
              "training_args": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 2e-3,
                                "seed": 4, "output_dir": str(tmp_path / "yaml")}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["finetune", "--config", str(tmp_path / "recipe.yaml")]) == 0
    for name in ("expert.safetensors", "head.safetensors"):
        assert_close_weights(tmp_path / "flags" / "best" / name, tmp_path / "yaml" / "best" / name, atol=0.0 + 1e-12)
    results = [json.loads((tmp_path / run / "results.json").read_text())["runs"][0]["test"] for run in ("flags", "yaml")]
    assert results[0] == results[1]
