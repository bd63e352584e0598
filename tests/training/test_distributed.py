"""Multi-process training on CPU: torchrun DDP (gloo), DeepSpeed ZeRO-2 under torchrun and under the `deepspeed`
launcher all match a one-process run's losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import write_run_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def train(config: Path, launcher: list[str], extra_env: dict[str, str] | None = None, overrides=()) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    command = [*launcher, "multimeditron", "train", "--config", str(config)]
    for item in overrides:
        command += ["--set", item]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    output_dir = config.parent / "out"  # write_run_config puts the run there
    history = json.loads((output_dir / "log_history.json").read_text())
    return [entry["loss"] for entry in history if "loss" in entry]


# Each launcher ends with its flag for "the next argument is a module".
def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port",
            str(29500 + os.getpid() % 1000), "-m"]


def deepspeed_launcher(n: int) -> list[str]:
    # The `deepspeed` console script is this module's main; it passes --local_rank to every process.
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(n), "--master_port",
            str(28500 + os.getpid() % 1000), "--module"]


def test_ddp_and_deepspeed_match_one_process(synthetic_dir, tmp_path):
    runs = {}
    for name, launcher, env, overrides in (
        ("single", [sys.executable, "-m"], {}, ["training_args.per_device_train_batch_size=4"]),
        ("ddp", torchrun(2), {}, ["training_args.per_device_train_batch_size=2"]),
        ("zero2", torchrun(2), {"DS_ACCELERATOR": "cpu"},
         ["training_args.per_device_train_batch_size=2", f"deepspeed={ROOT / 'cookbook' / 'deepspeed_zero2_cpu.json'}"]),
        # LOCAL_SIZE: how many CPU "accelerators" DeepSpeed's launcher may use on this host.
        ("zero2_deepspeed_launcher", deepspeed_launcher(2), {"DS_ACCELERATOR": "cpu", "LOCAL_SIZE": "2"},
         ["training_args.per_device_train_batch_size=2", f"deepspeed={ROOT / 'cookbook' / 'deepspeed_zero2_cpu.json'}"]),
    ):
        folder = tmp_path / name
        folder.mkdir()
        config = write_run_config(folder / "run.yaml", synthetic_dir, folder / "out")
        runs[name] = train(config, launcher, env, overrides)
        assert (folder / "out" / "final" / "model.safetensors").is_file()
    assert len(runs["single"]) == 4
    for name in ("ddp", "zero2", "zero2_deepspeed_launcher"):
        assert runs[name] == pytest.approx(runs["single"], rel=2e-3), (name, runs)
