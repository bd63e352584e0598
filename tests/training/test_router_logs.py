"""A run with the learned router logs each expert's usage and the balance loss, and the gate learns (moves)."""
from __future__ import annotations

import pytest
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


def test_text_only_batches_count_no_usage_and_the_window_is_summed_over_processes(tmp_path, monkeypatch):
    """A batch without images (its expert mask has no expert set) adds neither images nor a balance value; the
    window is summed over processes before the fractions and the mean are taken."""
    import torch

    from multimeditron.training.arguments import training_arguments
    from multimeditron.training.trainer import MultiMeditronTrainer
    from tests.conftest import GENERALIST, SPECIALIST, tiny_model

    model, _ = tiny_model(experts=[GENERALIST, SPECIALIST], fusion="avg", router="learned", router_top_k=1)
    trainer = MultiMeditronTrainer(model=model, args=training_arguments({"output_dir": str(tmp_path),
                                                                         "report_to": "none"}))
    trainer._record_routing(torch.tensor([[True, False], [False, True], [True, False]]), torch.tensor(1.2))
    trainer._record_routing(torch.zeros(1, 2, dtype=torch.bool), torch.tensor(0.0))  # text only
    # Another process: one image, routed to expert 1, balance 2.0 (per expert, images, balance sum, batches).
    other = torch.tensor([0.0, 1.0, 1.0, 2.0, 1.0])
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    monkeypatch.setattr(trainer.accelerator, "reduce", lambda tensor, reduction: tensor + other)
    logs = trainer._routing_logs()
    assert logs == pytest.approx({"router_usage/0_timm:vit_small_patch16_224": 0.5,
                                  "router_usage/1_timm:vit_base_patch16_224": 0.5, "router_balance_loss": 1.6})
    assert trainer._routing_logs() == {}  # the window starts again
