"""Checkpoint load reports: one log line per expert, and the run folder keeps them (entry, dropped keys, resampling)."""
from __future__ import annotations

import json
import logging

import yaml

from multimeditron.config import load_config
from multimeditron.training.run import run_training
from tests.experts.expert_layouts import write_mermed
from tests.training.conftest import write_run_config


def test_the_run_logs_and_keeps_each_experts_load_report(synthetic_dir, tmp_path, caplog):
    """Each expert checkpoint load is logged and kept in the run folder, so a student fallback or a resampled grid
    is seen."""
    checkpoint, _ = write_mermed(tmp_path, img_size=48, with_teacher=False)  # 3x3 patches; the tiny expert has 2x2
    path = write_run_config(tmp_path / "run.yaml", synthetic_dir, tmp_path / "out", stage="alignment", max_steps=1,
                            per_device_train_batch_size=2)
    config = yaml.safe_load(path.read_text())
    config["model"]["experts"] = [{"id": "mermed_fm", "tiny": True, "checkpoint": checkpoint}]
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.INFO, logger="multimeditron.experts.base"):
        result = run_training(load_config(path))
    [line] = [r.getMessage() for r in caplog.records if r.name == "multimeditron.experts.base"]
    assert line.startswith(f"mermed_fm: loaded {checkpoint}; entry 'student'; ")
    assert "keys dropped on purpose (" in line and "resampled from 10 to 5 positions" in line
    [(name, report)] = json.loads((result.output_dir / "load_reports.json").read_text()).items()
    assert name == "expert[0] mermed_fm" and report["entry"] == "student"
    assert "masked_embed" in report["dropped"] and "head.mlp.0.weight" in report["dropped"]
    assert report["notes"] == ["position embeddings resampled from 10 to 5 positions",
                               "no `teacher` entry (the released EMA model): the student weights were loaded"]
