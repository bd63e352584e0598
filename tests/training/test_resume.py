"""A run killed after a checkpoint and resumed ends with the weights and losses of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from multimeditron.config import load_config
from multimeditron.training.run import run_training
from tests.training.conftest import write_run_config


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"killed after the checkpoint of step {state.global_step}")


def losses(output_dir):
    import json

    return [e["loss"] for e in json.loads((output_dir / "log_history.json").read_text()) if "loss" in e]


@pytest.mark.slow
def test_resume_matches_uninterrupted(synthetic_dir, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=2, dataloader_num_workers=0)
    straight = load_config(write_run_config(tmp_path / "a.yaml", synthetic_dir, tmp_path / "a", **settings))
    run_training(straight)

    killed_config = load_config(write_run_config(tmp_path / "b.yaml", synthetic_dir, tmp_path / "b", **settings))
    with pytest.raises(KeyboardInterrupt):
        run_training(killed_config, callbacks=[KillAfterCheckpoint(4)])
    assert (tmp_path / "b" / "checkpoint-4").is_dir() and not (tmp_path / "b" / "final").exists()
    run_training(killed_config, resume_from_checkpoint=True)

    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert losses(tmp_path / "b")[-2:] == pytest.approx(losses(tmp_path / "a")[-2:], rel=1e-5)
