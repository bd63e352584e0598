"""The quickstart's expert half: the warm-up fine-tunes the tiny expert on labelled drawn images, probes it before and
after, and prints a `multimeditron finetune` line that the CLI parses into the same settings."""
from __future__ import annotations

import argparse
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


def test_printed_command_parses_into_the_same_settings(warmed) -> None:
    from multimeditron.cli import finetune as finetune_cli

    out, result = warmed
    argv = shlex.split(result.command)
    assert argv[:2] == ["multimeditron", "finetune"]
    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert json.loads(args.expert) == EXPERT and args.label_column == list(LABEL_COLUMNS)
    assert (args.adaptation, args.no_augment, args.layer_decay, args.drop_path, args.smoothing) == \
        ("finetune", True, 1.0, 0.0, 0.0)
    assert (args.epochs, args.batch_size, args.lr, args.warmup_epochs, args.weight_decay, args.seed) == \
        (2, 32, 1e-3, 1.0, 0.05, 3)
    assert args.select_metric == "auroc" and args.data == str(out / "finding_images")
    history = json.loads((out / "expert_warmup" / "history.json").read_text())
    assert len(history) == 2 and history[-1]["lr"] <= 1e-3
