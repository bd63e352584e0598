"""Every cookbook config passes `train --dry-run`; the sbatch template is valid bash and renders its torchrun line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multimeditron.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
# The VLM stage configs; cookbook/experts/ holds the expert commands' recipes (tests/adaptation/test_expert_cookbook.py),
# cookbook/mixture/ the README's mixture example, whose stages need its trained parts (tests/test_mixture_example.py).
CONFIGS = sorted(p for p in (ROOT / "cookbook").rglob("*.yaml")
                 if not {"experts", "mixture"} & set(p.relative_to(ROOT / "cookbook").parts))
EXPERIMENTS = ["single_clip/qwen_biomedclip", "single_clip/apertus_biomedclip", "single_clip/llama_biomedclip",
               "single_clip/llama_clip"] + [f"moe/{f}/{p}" for f in ("attn", "avg", "cat") for p in ("pep", "shared")]


def test_cookbook_layout():
    for experiment in EXPERIMENTS:
        for stage in ("stage1_alignment.yaml", "stage2_end2end.yaml"):
            assert (ROOT / "cookbook" / "sft" / experiment / stage).is_file(), (experiment, stage)
    for name in ("deepspeed_zero1.json", "deepspeed_zero2.json", "deepspeed_zero3.json", "training_template.sh"):
        assert (ROOT / "cookbook" / name).is_file()
    # One EDF: the top-level file, and the published location as a link to it (never a second copy).
    published = ROOT / "cookbook" / "assets" / "edf.toml"
    assert published.is_symlink() and published.resolve() == (ROOT / "edf.toml").resolve()


def test_edf_has_the_published_environment():
    import tomllib
    edf = tomllib.loads((ROOT / "cookbook" / "assets" / "edf.toml").read_text())
    assert edf["env"] == {
        "NCCL_NET": "AWS Libfabric", "NCCL_CROSS_NIC": "1", "NCCL_NET_GDR_LEVEL": "0",
        "FI_CXI_DISABLE_HOST_REGISTER": "1", "FI_MR_CACHE_MONITOR": "userfaultfd", "FI_CXI_DEFAULT_CQ_SIZE": "131072",
        "FI_CXI_DEFAULT_TX_SIZE": "32768", "FI_CXI_RX_MATCH_MODE": "software",
        "FI_CXI_SAFE_DEVMEM_COPY_THRESHOLD": "16777216", "FI_CXI_COMPAT": "0"}
    assert edf["annotations"]["com"]["hooks"]["aws_ofi_nccl"]["variant"] == "cuda12" and edf["writable"] is True


# The published cookbook's values (EPFLiGHT/MultiMeditron, cookbook/sft/**): LLM, stage-1 datasets, then per stage
# (learning rate, min_lr, per-device batch, accumulation). Stage-2 datasets are the same for every experiment.
S1_DATA = ["llava_pretrain_cleaned", "pixmo_anything", "pixmo_cap", "medtrinity_conversations_1_formatted_alignment"]
S2_DATA = {"BUSI", "COVID_US", "ct2", "iu_xray", "PMC_VQA_FULL", "medtrinity_conversations_1_formatted",
           "medtrinity_conversations_2_formatted", "image_mammoth", "llava_instruct"}
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
SINGLE = {1: ("0.0001", "3e-05", 4, 8), 2: ("1e-05", "3e-06", 4, 8)}
PUBLISHED = {
    "single_clip/qwen_biomedclip": ("Qwen/Qwen3-4B-Instruct-2507", S1_DATA, SINGLE),
    "single_clip/apertus_biomedclip": ("swiss-ai/Apertus-8B-Instruct-2509", S1_DATA, SINGLE),
    "single_clip/llama_biomedclip": (LLAMA, S1_DATA, SINGLE),
    "single_clip/llama_clip": (LLAMA, ["llava_instruct", "llava_pretrain_cleaned", "medtrinity_conversations_1",
                                       "medtrinity_conversations_2", "pixmo_anything"],
                               {1: ("0.0001", "3e-05", 4, 8), 2: ("1e-05", "1e-06", 2, 8)}),
    **{f"moe/attn/{p}": (LLAMA, S1_DATA, {1: ("1e-05", "1e-06", 2, 8), 2: ("1e-05", "1e-06", 2, 8)})
       for p in ("pep", "shared")},
    **{f"moe/{f}/{p}": (LLAMA, S1_DATA, {1: ("1e-05", "1e-06", 4, 4), 2: ("1e-05", "1e-06", 2, 8)})
       for f in ("avg", "cat") for p in ("pep", "shared")},
}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "cookbook")) for c in CONFIGS])
def test_dry_run_prints_the_published_settings(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "models"))
    monkeypatch.delenv("NNODES", raising=False)
    monkeypatch.delenv("GPUS_PER_NODE", raising=False)
    assert cli_main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage:" in out and "effective batch:" in out
    assert str(tmp_path / "models") in out  # $MODEL_ROOT was substituted
    experiment = str(config.parent.relative_to(ROOT / "cookbook" / "sft"))
    if experiment not in PUBLISHED:
        return  # an improved recipe beside the published ones
    llm, stage1_data, hyper = PUBLISHED[experiment]
    stage = 1 if config.name.startswith("stage1") else 2
    rate, min_lr, batch, accumulation = hyper[stage]
    assert f"learning rate {rate}; schedule cosine_with_min_lr {{'min_lr': {min_lr}}}; warmup 0; epochs 1" in out
    assert f"effective batch: {batch} per device x {accumulation} accumulation" in out
    # the published runs: 4 nodes x 4 GPUs, as the sbatch template launches them by default
    assert (f"global batch under cookbook/training_template.sh: {batch} x {accumulation} x 4 node(s) x 4 process(es) "
            f"per node = {batch * accumulation * 16}") in out
    assert "loss averaging: micro_batch" in out
    assert "placeholder <|reserved_special_token_0|>; captions published" in out and "max_sequence_length 4096" in out
    datasets = {line.split(" (weight")[0].rsplit("/", 1)[1] for line in out.splitlines() if "(weight" in line}
    assert datasets == (set(stage1_data) if stage == 1 else S2_DATA)
    if stage == 1:
        assert f"LLM {llm};" in out and "(mlp3x_gelu)" in out and "; image geometry center_crop" in out
        if experiment.startswith("moe/"):
            # the published gate: a frozen ResNet-50 whose class i weighs expert i, dense, trained only in `full`
            assert ("router pretrained top-5 (classifier {'class_to_expert': [0, 1, 2, 3, 4], 'checkpoint': "
                    "'ClosedMeditron/MultiMeditron-Gating', 'arch': 'resnet50', 'trainable_stages': ['full']})"
                    "; image geometry center_crop; generalist expert[4]") in out
            assert out.count("'post_norm': False") == 5
            if experiment.startswith("moe/attn/"):
                assert "fusion attn (published layer, 8 heads)" in out
        elif experiment.endswith("llama_clip"):
            assert "checkpoint=openai/clip-vit-large-patch14 options={'backend': 'hf', 'post_norm': False}" in out


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
           "WORKING_DIR": str(tmp_path), "NNODES": "2"}
    proc = subprocess.run(["bash", str(template), "cookbook/sft/moe/avg/pep/stage1_alignment.yaml"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--rdzv-backend c10d" in out and "--rdzv-endpoint node-a:29500" in out
    assert "--nnodes 2" in out and "-m multimeditron train --config cookbook/sft/moe/avg/pep/stage1_alignment.yaml" in out


TEMPLATE = ROOT / "cookbook" / "training_template.sh"


def test_sbatch_template_runs_any_subcommand_with_its_arguments_intact(tmp_path):
    """`bash training_template.sh finetune --config ... --expert '{id: x, tiny: true}'`: the expert half under
    torchrun on every node, each argument one word (a YAML mapping with spaces and braces included); the VLM's
    data roots are not asked for."""
    env = {**os.environ, "BASH_FUNC_scontrol%%": "() {  echo node-a; echo node-b; }",
           "BASH_FUNC_srun%%": "() {  shift 2; \"$@\"; }",  # run the node command: `bash -c "torchrun ..."`
           "BASH_FUNC_torchrun%%": "() {  printf '<%s>' \"$@\"; }", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "WORKING_DIR": str(tmp_path)}
    env = {k: v for k, v in env.items() if k not in ("STORAGE_ROOT", "MODEL_ROOT", "NNODES")}
    proc = subprocess.run(["bash", str(TEMPLATE), "finetune", "--config", "cookbook/experts/x.yaml", "--expert",
                           "{id: retfound_green, tiny: true}"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "<-m><multimeditron><finetune><--config><cookbook/experts/x.yaml><--expert>" \
           "<{id: retfound_green, tiny: true}>" in proc.stdout
    assert "<--nnodes><2>" in proc.stdout and "<--rdzv-endpoint><node-a:29500>" in proc.stdout


def _outside_slurm_env(tmp_path, **extra):
    """The environment of a login node: no job yet; `sbatch` is an exported function that prints its arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("NNODES", "ACCOUNT")}
    return {**env, "BASH_FUNC_sbatch%%": "() {  echo SBATCH \"$@\"; }", "WORKING_DIR": str(tmp_path), **extra}


def test_sbatch_template_submits_itself_with_nnodes_and_creates_the_log_folder(tmp_path):
    proc = subprocess.run(["bash", str(TEMPLATE), "stage1.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          env=_outside_slurm_env(tmp_path, NNODES="3", ACCOUNT="a123"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "logs").is_dir()
    assert proc.stdout.split() == ["SBATCH", "--nodes", "3", "--output", "logs/%x-%j.out", "--account", "a123",
                                   str(TEMPLATE), "stage1.yaml"]
    # NNODES from .env (the published cookbook's place for it); default 4 (the published README) without it.
    (tmp_path / ".env").write_text("export NNODES=5\n")
    proc = subprocess.run(["bash", str(TEMPLATE), "c.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          env=_outside_slurm_env(tmp_path))
    assert proc.stdout.split()[:3] == ["SBATCH", "--nodes", "5"]
    (tmp_path / ".env").unlink()
    proc = subprocess.run(["bash", str(TEMPLATE), "c.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          env=_outside_slurm_env(tmp_path))
    assert proc.stdout.split()[:3] == ["SBATCH", "--nodes", "4"]
    assert "#SBATCH --nodes=4" in TEMPLATE.read_text()


def test_sbatch_template_refuses_a_job_whose_node_count_is_not_nnodes(tmp_path):
    env = _outside_slurm_env(tmp_path, NNODES="4", SLURM_JOB_ID="7", SLURM_NNODES="2", STORAGE_ROOT="/s",
                             MODEL_ROOT="/m", **{"BASH_FUNC_srun%%": "() {  echo SRUN; }"})
    proc = subprocess.run(["bash", str(TEMPLATE), "c.yaml"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "NNODES=4 but the job has 2 nodes" in proc.stderr
    assert "SRUN" not in proc.stdout


def _envsubst(text: str, env: dict) -> str:
    """GNU envsubst's substitution ($VAR and ${VAR}; unset -> empty), for machines without gettext."""
    import re
    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))",
                  lambda m: env.get(m.group(1) or m.group(2), ""), text)


def test_sbatch_template_refuses_to_run_after_envsubst(tmp_path):
    env = _outside_slurm_env(tmp_path, STORAGE_ROOT="/s", MODEL_ROOT="/m", NNODES="4", HOME=str(tmp_path))
    text = TEMPLATE.read_text()
    if shutil.which("envsubst"):
        rendered = subprocess.run(["envsubst"], input=text, capture_output=True, text=True, env=env, check=True).stdout
        assert rendered == _envsubst(text, env)  # the emulation is what the real tool does
    else:
        rendered = _envsubst(text, env)
    (tmp_path / "training.sh").write_text(rendered)
    proc = subprocess.run(["bash", str(tmp_path / "training.sh"), "c.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and "went through envsubst" in proc.stderr
    assert "SBATCH" not in proc.stdout and not (tmp_path / "logs").exists()


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "multimeditron", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout


def _flat_recipe(path: Path) -> dict[str, object]:
    """A cookbook YAML as dotted keys (datasets as a set: their order is not a difference between recipes); the
    paths that name the experiment itself (output_dir, base_model) are checked apart."""
    import yaml

    data = yaml.safe_load(path.read_text())
    data["data"]["train"] = sorted(data["data"]["train"], key=lambda entry: entry["path"])
    data["training_args"].pop("output_dir")
    data["model"].pop("base_model", None)

    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix[:-1]}[{i}].").items()}
        return {prefix[:-1]: value}

    return flat(data)


# (recipe, recipe, stage) -> the only keys in which they may differ. The 20 YAMLs stay flat (each is the published
# file, readable alone); this keeps them from drifting apart where the published experiments agree.
SIBLINGS = {
    **{(f"moe/{f}/pep", f"moe/{f}/shared", 1): {"model.projection"} for f in ("attn", "avg", "cat")},
    **{(f"moe/{f}/pep", f"moe/{f}/shared", 2): set() for f in ("attn", "avg", "cat")},
    **{(f"moe/avg/{p}", f"moe/cat/{p}", 1): {"model.fusion"} for p in ("pep", "shared")},
    **{(f"moe/attn/{p}", f"moe/avg/{p}", 1): {"model.fusion", "model.attn_variant", "training_args.per_device_train_batch_size",
                                              "training_args.gradient_accumulation_steps"} for p in ("pep", "shared")},
    **{(f"moe/{a}/{p}", f"moe/{b}/{p}", 2): set() for a, b in (("attn", "avg"), ("avg", "cat")) for p in ("pep", "shared")},
    **{("single_clip/qwen_biomedclip", f"single_clip/{other}", 1): {"model.llm"}
       for other in ("apertus_biomedclip", "llama_biomedclip")},
    **{("single_clip/qwen_biomedclip", f"single_clip/{other}", 2): set()
       for other in ("apertus_biomedclip", "llama_biomedclip")},
    # packed rows change what a micro-batch is, so the packed recipe averages over the global batch's tokens
    ("single_clip/qwen_biomedclip", "packed/qwen_biomedclip", 2): {"data.packing", "loss_averaging",
                                                                   "training_args.per_device_train_batch_size"},
}


@pytest.mark.parametrize(("first", "second", "stage"), list(SIBLINGS), ids=lambda value: str(value))
def test_sibling_recipes_differ_only_where_the_experiments_do(first, second, stage):
    name = "stage1_alignment.yaml" if stage == 1 else "stage2_end2end.yaml"
    a, b = (_flat_recipe(ROOT / "cookbook" / "sft" / recipe / name) for recipe in (first, second))
    assert {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)} == SIBLINGS[(first, second, stage)]


@pytest.mark.parametrize("experiment", EXPERIMENTS + ["packed/qwen_biomedclip"])
def test_each_recipe_writes_its_own_folder_and_stage2_continues_stage1(experiment):
    import yaml

    folder = ROOT / "cookbook" / "sft" / experiment
    stage2 = yaml.safe_load((folder / "stage2_end2end.yaml").read_text())
    assert stage2["training_args"]["output_dir"] == f"$MODEL_ROOT/multimeditron/sft/{experiment}/stage2"
    first = experiment.replace("packed/", "single_clip/")  # the packed variant continues the unpacked stage 1
    assert stage2["model"]["base_model"] == f"$MODEL_ROOT/multimeditron/sft/{first}/stage1/final"
    if (folder / "stage1_alignment.yaml").is_file():
        stage1 = yaml.safe_load((folder / "stage1_alignment.yaml").read_text())
        assert stage1["training_args"]["output_dir"] == f"$MODEL_ROOT/multimeditron/sft/{experiment}/stage1"


def test_the_dry_runs_template_defaults_are_the_templates(monkeypatch):
    from multimeditron.training.plan import (
        TEMPLATE_GPUS_PER_NODE,
        TEMPLATE_NODES,
        sbatch_template_processes,
    )

    script = (ROOT / "cookbook" / "training_template.sh").read_text()
    assert f'--nodes "${{NNODES:-{TEMPLATE_NODES}}}"' in script
    assert f"GPUS_PER_NODE=${{GPUS_PER_NODE:-{TEMPLATE_GPUS_PER_NODE}}}" in script
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("GPUS_PER_NODE", "8")
    assert sbatch_template_processes() == (2, 8)
