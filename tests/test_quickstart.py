"""The quickstart runs end to end on a small budget: data, two stages through YAML, evaluation, saved model."""
from __future__ import annotations

import json

import pytest

from multimeditron.cli import main


@pytest.mark.slow
def test_quickstart_small_budget(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--num-train", "120", "--num-test", "20", "--stage1-epochs", "1", "--stage2-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"modality", "presence", "side", "count", "multiple_choice"}
    for row in metrics["per_type"].values():
        assert 0 <= row["accuracy"] <= 100 and 0 < row["chance"] < 100
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert (out / "stage1_alignment.yaml").is_file() and (out / "stage2_full.yaml").is_file()
    assert "| question type | accuracy % | chance % | n |" in printed and "model answer:" in printed
    assert set(metrics["ablation"]) == {"blank", "noise", "other"}
    assert "| synthetic_vqa / side |" in printed.split("image ablation")[1]
