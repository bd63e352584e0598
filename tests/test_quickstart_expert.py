"""The quickstart's expert half: the warm-up writes a `multimeditron finetune` YAML recipe, runs it (fine-tuning the
tiny expert on labelled drawn images) and probes the expert before and after."""
from __future__ import annotations

import json
import shlex

import pytest

from multimeditron.data.synthetic_findings import LABEL_COLUMNS
from multimeditron.quickstart import EXPERT
from multimeditron.quickstart_expert import warm_up_expert


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    out = tmp_path_factory.mktemp("warmup")
    return out, warm_up_expert(out, EXPERT, seed=3, num_images=120, epochs=2)


def test_writes_an_adapted_expert_the_stage_config_can_name(warmed) -> None:
    from multimeditron.adaptation.experts import load_expert

    out, result = warmed
    assert result.checkpoint == out / "expert_warmup" / "best"
    assert (result.checkpoint / "expert.safetensors").is_file()
    expert, spec = load_expert(str(result.checkpoint))  # the architecture comes from the folder's record
    assert spec.tiny and expert.image_size == EXPERT["image_size"]


def test_probe_table_has_every_label_before_and_after(warmed) -> None:
    _, result = warmed
    lines = result.probe_table.splitlines()
    assert lines[0] == "| label | knn random init | linear random init | knn warmed up | linear warmed up |"
    rows = {cells[0]: [float(v) for v in cells[1:]]
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == list(LABEL_COLUMNS)
    assert all(0.0 <= v <= 1.0 for values in rows.values() for v in values)
    # the modalities look nothing alike: any probe of any expert separates them
    assert min(rows["x-ray"] + rows["fundus"] + rows["histology"]) > 0.95


def test_the_printed_command_runs_the_recipe_the_warm_up_ran(warmed, capsys) -> None:
    import yaml

    from multimeditron.cli import main

    out, result = warmed
    argv = shlex.split(result.command)
    assert argv == ["multimeditron", "finetune", "--config", str(out / "expert_warmup.yaml")]
    recipe = yaml.safe_load((out / "expert_warmup.yaml").read_text())
    assert recipe["expert"]["spec"] == EXPERT and recipe["data"]["label_columns"] == list(LABEL_COLUMNS)
    assert main([*argv[1:], "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "global batch: 32 = 32 per process x 1 accumulation step(s) x 1 process(es)" in plan
    assert "learning rate 0.001 " in plan and "warm-up 1 of 2 epochs" in plan
    assert "method: finetune, layer decay 1, drop path 0, label smoothing 0," in plan and "augment False" in plan
    history = json.loads((out / "expert_warmup" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("auroc" in h and "loss" in h for h in history)
    assert history[-1]["learning_rate"] <= 1e-3
