"""Per-part learning rates: the optimizer's groups carry each part's rate, and the config refuses what would be
silently ignored."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import TrainingArguments

from multimeditron.config import ConfigError, load_config
from multimeditron.training.stages import apply_stage
from multimeditron.training.trainer import MultiMeditronTrainer
from tests.conftest import tiny_model


def part_of_parameter(name: str) -> str:
    """The expected part, from the parameter's name (independent of the package's own module grouping)."""
    if name.startswith("vision.experts."):
        return "experts"
    return "vision_glue" if name.startswith("vision.") else "llm"


def test_optimizer_groups_carry_each_parts_rate(tmp_path):
    model, _ = tiny_model()
    apply_stage(model, "full")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, weight_decay=0.1, report_to=[])
    trainer = MultiMeditronTrainer(model=model, args=args, part_learning_rates={"experts": 1e-3, "llm": 5e-5})
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    expected = {"experts": 1e-3, "llm": 5e-5, "vision_glue": 3e-4}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {part_of_parameter(n) for n, _ in trainable} == set(expected)
    for name, param in trainable:
        assert rate[id(param)] == expected[part_of_parameter(name)], name
    # HF's weight-decay split survives the re-cut: biases and norms are not decayed, matrices are.
    projector = dict(model.vision.projectors.named_parameters())
    biases = [p for n, p in projector.items() if n.endswith("bias")]
    matrices = [p for n, p in projector.items() if n.endswith("weight")]
    assert biases and all(decay[id(p)] == 0.0 for p in biases)
    assert matrices and all(decay[id(p)] == 0.1 for p in matrices)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(p.numel() for _, p in trainable)


def _config(tmp_path, stage: str, rates: dict, deepspeed: dict | None = None):
    config = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
              "data": {"train": [{"path": "somewhere"}]}, "stage": stage, "part_learning_rates": rates,
              "training_args": {"output_dir": str(tmp_path / "out")}}
    if deepspeed is not None:
        (tmp_path / "ds.json").write_text(json.dumps(deepspeed))
        config["deepspeed"] = str(tmp_path / "ds.json")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_reads_part_learning_rates(tmp_path):
    config = load_config(_config(tmp_path, "full", {"experts": 1e-3, "llm": 1e-4}))
    assert config.part_learning_rates.as_dict() == {"experts": 1e-3, "llm": 1e-4}


@pytest.mark.parametrize(("stage", "rates", "deepspeed", "message"), [
    ("end2end", {"experts": 1e-3}, None, "part_learning_rates.experts: stage 'end2end' does not train this part"),
    ("full", {"llm": -1.0}, None, "part_learning_rates.llm: must be positive"),
    ("full", {"projector": 1e-3}, None, "part_learning_rates.projector: unknown key"),
    ("full", {"llm": 1e-4}, {"optimizer": {"type": "AdamW"}}, "defines its own `optimizer`"),
])
def test_config_refuses_rates_that_would_be_ignored(tmp_path, stage, rates, deepspeed, message):
    from multimeditron.training.preflight import check_run

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_run(load_config(_config(tmp_path, stage, rates, deepspeed)), paths=False)


def test_the_vision_glue_rate_reaches_the_new_token_rows(tmp_path):
    """In alignment the new special-token rows of the embeddings are vision glue (they learn with the projector);
    before, they were grouped with the LLM and kept the default rate."""
    model, _ = tiny_model()
    apply_stage(model, "alignment")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, weight_decay=0.1, report_to=[])
    trainer = MultiMeditronTrainer(model=model, args=args, part_learning_rates={"vision_glue": 1e-3})
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    embeddings = model.get_input_embeddings().weight
    assert rate[id(embeddings)] == 1e-3 and decay[id(embeddings)] == 0.0  # never decayed, found by identity
    assert set(rate.values()) == {1e-3}


def test_an_unclaimed_trainable_parameter_is_named_by_the_optimizer(tmp_path):
    """A parameter outside every part is an error naming it, not a bare `KeyError` from `create_optimizer`."""
    model, _ = tiny_model()
    apply_stage(model, "full")
    model.stray = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, report_to=[])
    trainer = MultiMeditronTrainer(model=model, args=args, part_learning_rates={"llm": 1e-4})
    with pytest.raises(ValueError, match="stray.weight"):
        trainer.create_optimizer()
