"""The quickstart runs end to end on a reduced budget (data, the expert's warm-up and probe, two stages through
YAML, evaluation, image ablation, saved model) and still learns the two easiest image-dependent question types."""
from __future__ import annotations

import json

import pytest
import yaml

from multimeditron.cli import main
from multimeditron.quickstart import EXPERT


@pytest.mark.slow
def test_quickstart_reduced_budget_learns_modality_and_presence(tmp_path, capsys):
    # 2400 rows, an expert warm-up on 1500 images x 8 epochs, 3 + 8 epochs: about 1.5 minutes on one thread.
    # Measured on seed 0 (40 test rows per type): modality 100, presence 80; with 1200 warm-up images x 6 epochs and
    # 2 + 4 epochs presence stayed at chance, so this is the smallest budget found that reads presence from the image.
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--num-train", "2400", "--num-test", "200",
                 "--stage1-epochs", "3", "--stage2-epochs", "8", "--warmup-images", "1500",
                 "--warmup-epochs", "8"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"modality", "presence", "side", "count", "multiple_choice"}
    for row in metrics["per_type"].values():
        assert 0 <= row["accuracy"] <= 100 and 0 < row["chance"] < 100
    per_type = metrics["per_type"]
    assert per_type["modality"]["accuracy"] >= 80.0, per_type      # chance 33.3
    assert per_type["presence"]["accuracy"] >= 70.0, per_type      # chance 50
    # without the image the same questions fall back to chance (blank canvas)
    assert metrics["ablation"]["blank"]["per_type"]["modality"]["accuracy"] <= 50.0, metrics["ablation"]["blank"]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert (out / "stage1_end2end.yaml").is_file() and (out / "stage2_full.yaml").is_file()
    # the expert half ran first: stage 1 names the fine-tuned expert and loaded its weights
    warmed = out / "expert_warmup" / "best"
    stage1 = yaml.safe_load((out / "stage1_end2end.yaml").read_text())
    assert stage1["model"]["experts"] == [{"id": EXPERT["id"], "checkpoint": str(warmed), "output": "cls"}]
    assert stage1["stage"] == "end2end"  # the fine-tuned expert stays frozen while the LLM learns to read it
    reports = json.loads((out / "stage1" / "load_reports.json").read_text())
    assert [r["source"] for r in reports.values()] == [str(warmed / "expert.safetensors")]
    assert f"same as: multimeditron finetune --config {out / 'expert_warmup.yaml'}" in printed
    assert "| label | knn random init | linear random init | knn warmed up | linear warmed up |" in printed
    assert "| question type | accuracy % | chance % | n |" in printed and "model answer:" in printed
    assert set(metrics["ablation"]) == {"blank", "noise", "other"}
    assert "| synthetic_vqa / side |" in printed.split("image ablation")[1]


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be at least 1"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be at least 0"),
    (["--warmup-images", "10"], "--warmup-images must be at least 30"),
])
def test_bad_arguments_stop_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing generated or trained
