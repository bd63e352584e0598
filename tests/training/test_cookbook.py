"""Every cookbook config passes `train --dry-run`; the sbatch template is valid bash and renders its torchrun line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multimeditron.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "cookbook").rglob("*.yaml"))
EXPERIMENTS = ["single_clip/qwen_biomedclip", "single_clip/apertus_biomedclip", "single_clip/llama_biomedclip",
               "single_clip/llama_clip"] + [f"moe/{f}/{p}" for f in ("attn", "avg", "cat") for p in ("pep", "shared")]


def test_cookbook_layout():
    for experiment in EXPERIMENTS:
        for stage in ("stage1_alignment.yaml", "stage2_end2end.yaml"):
            assert (ROOT / "cookbook" / "sft" / experiment / stage).is_file(), (experiment, stage)
    for name in ("deepspeed_zero1.json", "deepspeed_zero2.json", "deepspeed_zero3.json", "training_template.sh"):
        assert (ROOT / "cookbook" / name).is_file()
    assert (ROOT / "edf.toml").read_text() == (ROOT / "cookbook" / "assets" / "edf.toml").read_text()


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "cookbook")) for c in CONFIGS])
def test_dry_run(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "models"))
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage:" in out and "effective batch:" in out
    assert str(tmp_path / "models") in out  # $MODEL_ROOT was substituted


def test_dry_run_shows_trainable_table_for_a_tiny_model(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
model:
  llm: tiny-llama
  experts: [{{id: "timm:vit_small_patch16_224", tiny: true}}]
data:
  train: [{{path: {tmp_path}/data}}]
stage: end2end
training_args: {{output_dir: {tmp_path}/out, per_device_train_batch_size: 2, gradient_accumulation_steps: 3}}
""")
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "projector" in out and "trainable" in out and "frozen" in out
    assert "= 6" in out


def test_sbatch_template_is_valid_bash_and_renders(tmp_path):
    template = ROOT / "cookbook" / "training_template.sh"
    subprocess.run(["bash", "-n", str(template)], check=True)
    # Slurm's commands as exported bash functions (no stub executables). A long host list: reading only its first
    # line with `head` under pipefail dies of SIGPIPE (exit 141), which a 2-line list hits only sometimes.
    env = {**os.environ, "BASH_FUNC_scontrol%%": "() {  echo node-a; for i in $(seq 1 20000); do echo node-$i; done; }",
           "BASH_FUNC_srun%%": "() {  echo SRUN \"$@\"; }", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "77", "STORAGE_ROOT": "/s", "MODEL_ROOT": "/m",
           "WORKING_DIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(template), "cookbook/sft/moe/avg/pep/stage1_alignment.yaml"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--rdzv-backend c10d" in out and "--rdzv-endpoint node-a:29500" in out
    assert "--nnodes 2" in out and "-m multimeditron train --config cookbook/sft/moe/avg/pep/stage1_alignment.yaml" in out


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "multimeditron", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout
