"""A run with the learned router logs each expert's usage and the balance loss, and the gate learns (moves)."""
from __future__ import annotations

import yaml

from multimeditron.config import load_config
from multimeditron.training.run import run_training
from tests.training.conftest import write_run_config


def test_usage_and_balance_loss_reach_the_logs(synthetic_dir, tmp_path):
    path = write_run_config(tmp_path / "run.yaml", synthetic_dir, tmp_path / "out", stage="alignment", max_steps=2,
                            per_device_train_batch_size=2)
    config = yaml.safe_load(path.read_text())
    config["model"].update(experts=[{"id": "timm:vit_small_patch16_224", "tiny": True},
                                    {"id": "timm:vit_base_patch16_224", "tiny": True}],
                           fusion="avg", router="learned", router_top_k=1)
    path.write_text(yaml.safe_dump(config))
    result = run_training(load_config(path))
    logged = [entry for entry in yaml.safe_load((result.output_dir / "log_history.json").read_text())
              if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        usage = [entry["router_usage/0_timm:vit_small_patch16_224"], entry["router_usage/1_timm:vit_base_patch16_224"]]
        assert abs(sum(usage) - 1.0) < 1e-6  # top-1: every image ran exactly one expert
        assert 1.0 - 1e-4 <= entry["router_balance_loss"] <= 2.0 + 1e-4
