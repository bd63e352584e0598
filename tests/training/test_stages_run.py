"""Stage 2 continues from stage 1 (stored architecture wins, contradictions refused); LoRA runs end with a merged model."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from multimeditron.config import ConfigError, parse_config
from multimeditron.training.run import run_training


def config(tmp_path, data, name, **changes):
    base = {
        "model": {"llm": "tiny-llama", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
        "data": {"train": [{"path": str(data), "split": "train"}], "max_sequence_length": 256},
        "stage": "alignment",
        "training_args": {"output_dir": str(tmp_path / name), "max_steps": 2, "per_device_train_batch_size": 2,
                          "save_strategy": "no", "disable_tqdm": True},
    }
    for key, value in changes.items():
        base[key] = value
    return parse_config(base)


@pytest.mark.slow
def test_stage2_continues_and_lora_merges(synthetic_dir, tmp_path):
    stage1 = run_training(config(tmp_path, synthetic_dir, "s1"))
    stage1_weights = load_file(stage1.final_dir / "model.safetensors")

    contradicting = config(tmp_path, synthetic_dir, "bad", stage="end2end",
                           model={"base_model": str(stage1.final_dir), "fusion": "avg"})
    with pytest.raises(ConfigError, match="model.fusion: 'avg' contradicts"):
        run_training(contradicting)

    agreeing = {"base_model": str(stage1.final_dir), "llm": "tiny-llama",
                "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]}
    stage2 = run_training(config(tmp_path, synthetic_dir, "s2", stage="end2end", model=agreeing,
                                 lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}))
    merged = load_file(stage2.final_dir / "model.safetensors")
    assert not any("lora" in key for key in merged)
    assert set(merged) == set(stage1_weights)
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], stage1_weights[key])  # the merged adapters changed the LLM
    model = AutoModelForCausalLM.from_pretrained(stage2.final_dir)
    assert model.config.fusion == "none"
