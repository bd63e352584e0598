"""`adapt --objective mermed`: a short run learns without collapse (the teacher's entropy stays far from 0 and from
its maximum, the loss falls, the schedules move as the published loop's), the EMA rule, resume, the written folder
as an expert, and two CPU processes train as one with the same global batch (the bank gathered in rank order)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multimeditron.cli import main

# A tiny bank and head; drop path off so the draws of a run depend on (seed, epoch, image, step) only.
TINY = ["--objective", "mermed", "--expert", "retfound_green", "--tiny", "--batch-size", "8", "--lr", "1e-3",
        "--local-crops", "2", "--out-dim", "64", "--partition-size", "16", "--momentum-teacher", "0.9",
        "--warmup-epochs", "1", "--set", "mermed.hidden_dim=32", "--set", "mermed.bottleneck_dim=16",
        "--set", "mermed.drop_path=0", "--set", "mermed.warmup_teacher_temp_epochs=2"]


@pytest.fixture(scope="module")
def pretrained(unlabelled_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mermed")
    assert main(["adapt", *TINY, "--data", str(unlabelled_folder), "--out", str(out), "--epochs", "6",
                 "--set", "training_args.save_total_limit=6"]) == 0
    return out


def test_short_run_learns_without_collapse(pretrained: Path) -> None:
    history = json.loads((pretrained / "history.json").read_text())
    assert len(history) == 6
    most = math.log(16)  # the teacher's softmax runs inside partitions of 16 entries
    for epoch in history:
        assert 0.1 * most < epoch["teacher_entropy"] < 0.9 * most, history
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(v) for v in losses) and min(losses[-2:]) < losses[0], losses
    temps = [h["teacher_temp"] for h in history]
    assert temps[0] < 0.07 and temps[-1] == pytest.approx(0.07)  # 0.04 -> 0.07 over 2 epochs, then constant
    momenta, decays = [h["momentum"] for h in history], [h["weight_decay"] for h in history]
    assert momenta == sorted(momenta) and 0.9 < momenta[0] and momenta[-1] > 0.99  # cosine to 1
    assert decays == sorted(decays) and 0.04 < decays[0] < 0.1 and decays[-1] > 0.35  # 0.04 -> 0.4 (logged at each epoch end)


def test_folder_is_the_teacher_and_loads_as_the_expert(pretrained: Path) -> None:
    from multimeditron.experts.registry import build_expert
    from multimeditron.probing.specs import build_probe_expert, parse_spec

    record = json.loads((pretrained / "final" / "expert.json").read_text())
    assert record["provenance"]["exported"] == "teacher" and record["provenance"]["objective"] == "mermed"
    weights = load_file(str(pretrained / "final" / "expert.safetensors"))
    expert = build_expert({"id": "retfound_green", "checkpoint": str(pretrained / "final")})
    assert all(torch.equal(v, weights[k]) for k, v in expert.state_dict().items())
    torch.manual_seed(0)
    start = build_expert({"id": "retfound_green", "tiny": True}).state_dict()
    assert any(not torch.equal(start[k], weights[k]) for k in start)
    assert parse_spec(str(pretrained / "final")).spec.id == "retfound_green"  # probe / finetune take the folder
    build_probe_expert(parse_spec(str(pretrained / "final")))


def test_resume_continues_as_the_uninterrupted_run(pretrained: Path, unlabelled_folder: Path, tmp_path: Path) -> None:
    # 24 images, 8 a step: epoch 3 ends at step 9; the bank, the teacher and the step counter come back with it
    shutil.copytree(pretrained / "checkpoint-9", tmp_path / "checkpoint-9")
    assert main(["adapt", *TINY, "--data", str(unlabelled_folder), "--out", str(tmp_path), "--epochs", "6",
                 "--resume"]) == 0
    resumed = load_file(str(tmp_path / "final" / "expert.safetensors"))
    straight = load_file(str(pretrained / "final" / "expert.safetensors"))
    assert max(float((resumed[k] - straight[k]).abs().max()) for k in straight) < 1e-5


def test_ema_moves_the_teacher_towards_the_student_after_each_step() -> None:
    from types import SimpleNamespace

    from multimeditron.adaptation.recipes import MermedSection
    from multimeditron.adaptation.self_distillation import (
        EmaTeacher,
        MemorySelfDistillation,
    )
    from multimeditron.experts.registry import build_expert

    settings = MermedSection(out_dim=8, partition_size=4, hidden_dim=8, bottleneck_dim=4, momentum_teacher=0.9)
    objective = MemorySelfDistillation(build_expert({"id": "retfound_green", "tiny": True}), settings)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in objective.teacher.parameters()]
    callback = EmaTeacher(objective, weight_decay=0.04)
    callback.on_train_begin(SimpleNamespace(num_train_epochs=1), SimpleNamespace(max_steps=10), None)
    callback.on_step_end(None, SimpleNamespace(global_step=1), None)  # step 0 of 10: momentum = 0.9
    for old, new, student in zip(before, objective.teacher.parameters(), objective.student.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * student, atol=1e-6)
    assert objective.scalars["momentum"] == pytest.approx(0.9)


def test_two_processes_pretrain_like_one_with_the_same_global_batch(unlabelled_folder: Path, tmp_path: Path) -> None:
    from tests.adaptation.test_distributed import assert_close_weights, launch

    common = ["adapt", *TINY, "--data", str(unlabelled_folder), "--epochs", "2", "--set", "mermed.use_bn_in_head=false",
              "--seed", "2"]
    launch(1, [*common, "--batch-size", "8", "--out", "one"], tmp_path)
    launch(2, [*common, "--batch-size", "4", "--out", "two"], tmp_path)
    assert_close_weights(tmp_path / "one" / "final" / "expert.safetensors",
                         tmp_path / "two" / "final" / "expert.safetensors")
    one, two = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("one", "two"))
    assert [h["loss"] for h in two] == pytest.approx([h["loss"] for h in one], rel=1e-4)
    # the bank each process holds is the all-gathered one: the same as one process's, entry for entry
    banks = [load_file(str(next((tmp_path / run).glob("checkpoint-*")) / "model.safetensors")) for run in ("one", "two")]
    assert torch.allclose(banks[0]["bank.queue"], banks[1]["bank.queue"], atol=1e-5)
    assert torch.equal(banks[0]["bank.labels"], banks[1]["bank.labels"])


def test_mermed_engine_defaults_apply_without_rewriting_what_the_user_wrote() -> None:
    # MerMED-FM's engine values are defaults of the run, not keys the user wrote: `training_args` keeps the user's
    # keys only, and the run's TrainingArguments get MerMED's values wherever the user wrote none.
    from multimeditron.adaptation.recipes import MERMED_TRAINING_DEFAULTS, AdaptRecipe
    from multimeditron.config import parse_section

    recipe = parse_section(AdaptRecipe, {"data": {"path": "x"}, "expert": {"spec": "retfound_green"},
                                         "objective": "mermed", "training_args": {"num_train_epochs": 3}})
    recipe.fill_defaults()
    assert recipe.training_args == {"num_train_epochs": 3}
    values = recipe.training_arguments()
    assert values["num_train_epochs"] == 3
    for key in ("per_device_train_batch_size", "weight_decay", "max_grad_norm"):
        assert values[key] == MERMED_TRAINING_DEFAULTS[key], key
    assert recipe.global_batch(2) == 2 * MERMED_TRAINING_DEFAULTS["per_device_train_batch_size"]
    token = parse_section(AdaptRecipe, {"data": {"path": "x"}, "expert": {"spec": "retfound_green"}})
    token.fill_defaults()
    assert token.training_arguments()["per_device_train_batch_size"] == AdaptRecipe.TRAINING_DEFAULTS[
        "per_device_train_batch_size"]
