"""`multimeditron convert config`: published-schema configs (written here in that schema) are translated key by key,
refused with the key and the reason where they cannot be, dry-run, and train a tiny model; the train CLI takes the
published flags -c, --seed and --trust-remote-code."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from datasets import Dataset

from multimeditron.cli import main as cli_main
from multimeditron.config import ConfigError, load_config
from multimeditron.config_migration import convert_published

PUBLISHED_MOE = """
base_llm: meta-llama/Llama-3.1-8B-Instruct
base_model: null
resume_from_checkpoint: false
wandb_run_id: null
attachment_token: <|reserved_special_token_0|>
tokenizer_type: llama
token_size: 4096
truncation: true
max_sequence_length: 4096
loaders:
  - loader_type: raw-image
    modality_type: image
modalities:
  - model_type: moe_meditron_clip_pep
    image_processor: openai/clip-vit-base-patch32
    hidden_size: 4096
    expert_clip_names: [Org/MedExpert-CT, Org/MedExpert-MRI, Org/MedExpert-Ultrasound, Org/MedExpert-Xray, Org/clip]
    generalist_idx : -1
    gating_path: $MODEL_ROOT/gating/MultiMeditron-Gating
    fusion_method: sequence_append
    top_k_experts: 5
training_mode: END2END
datasets:
  - packed_path: $STORAGE_ROOT/BUSI
  - packed_path: ${STORAGE_ROOT}/iu_xray/
training_args:
  output_dir: $MODEL_ROOT/unfreeze/cat_pep
  learning_rate: 1.0e-5
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 8
  deepspeed: ./config/deepspeed.json
  lr_scheduler_type: cosine_with_min_lr
  lr_scheduler_kwargs: {min_lr: 1.0e-6}
"""


def test_published_moe_config_maps_every_key(tmp_path):
    data = yaml.safe_load(PUBLISHED_MOE)
    conversion = convert_published(data, base_dir=tmp_path)
    config = conversion.config
    assert config["model"] == {
        "llm": "meta-llama/Llama-3.1-8B-Instruct",
        "experts": [{"id": "clip", "checkpoint": name, "options": {"backend": "hf", "post_norm": False}}
                    for name in ("Org/MedExpert-CT", "Org/MedExpert-MRI", "Org/MedExpert-Ultrasound",
                                 "Org/MedExpert-Xray", "Org/clip")],
        "fusion": "cat", "projection": "per_expert", "projector_type": "mlp3x_gelu", "router": "pretrained",
        "router_top_k": 5,
        # the published gate: class i weighs expert i, frozen outside `full`
        "router_classifier": {"checkpoint": "$MODEL_ROOT/gating/MultiMeditron-Gating", "arch": "resnet50",
                              "class_to_expert": [0, 1, 2, 3, 4], "trainable_stages": ["full"]},
        "generalist_index": 4, "image_geometry": "center_crop"}
    assert any("gating_path $MODEL_ROOT/gating/MultiMeditron-Gating -> router: pretrained" in note
               for note in conversion.notes)
    learned = convert_published(data, gate="learned", base_dir=tmp_path).config["model"]
    assert learned["router"] == "learned" and "router_classifier" not in learned and learned["router_top_k"] == 5
    assert config["data"] == {"attachment_token": "<|reserved_special_token_0|>", "max_sequence_length": 4096,
                              "train": [{"path": "$STORAGE_ROOT/BUSI"}, {"path": "${STORAGE_ROOT}/iu_xray"}],
                              "caption_format": "published", "on_bad_sample": "skip"}
    assert config["stage"] == "end2end" and config["deepspeed"] == str(tmp_path / "config" / "deepspeed.json")
    assert config["training_args"] == {"output_dir": "$MODEL_ROOT/unfreeze/cat_pep", "learning_rate": 1e-5,
                                       "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
                                       "lr_scheduler_type": "cosine_with_min_lr",
                                       "lr_scheduler_kwargs": {"min_lr": 1e-6}}
    assert any(note.startswith("tokenizer_type: dropped") for note in conversion.notes)
    text = conversion.to_yaml("moe.yaml")
    assert "$STORAGE_ROOT/BUSI" in text and yaml.safe_load(text) == config  # variables kept, notes as comments


@pytest.mark.parametrize("change,message", [
    ({"truncation": False}, "truncation: False cannot be mapped"),
    ({"wandb_run_id": "abc"}, "wandb_run_id: 'abc' cannot be mapped: set WANDB_RUN_ID=abc"),
    ({"packing_strategy": "x"}, "packing_strategy: not a key of the published schema"),
    ({"training_mode": "PRETRAIN"}, "training_mode: 'PRETRAIN' is not one of"),
    ({"datasets": [{"packed_path": "/d", "weight": 2}]}, r"datasets\[0\]\.weight: not a key"),
    ({"loaders": [{"loader_type": "video"}]}, r"loaders\[0\]\.loader_type: 'video'"),
])
def test_what_cannot_be_mapped_is_refused_with_key_and_reason(change, message):
    data = {**yaml.safe_load(PUBLISHED_MOE), **change}
    with pytest.raises(ConfigError, match=message):
        convert_published(data, gate="learned")


@pytest.mark.parametrize("change,message", [
    ({"fusion_method": "gated"}, r"modalities\[0\]\.fusion_method: 'gated'"),
    ({"generalist_idx": 5}, r"modalities\[0\]\.generalist_idx: 5 is outside the 5 experts"),
    ({"projection_type": "pixel_shuffle"}, r"modalities\[0\]\.projection_type: 'pixel_shuffle'"),
    ({"num_heads": 8}, r"modalities\[0\]\.num_heads: not a key"),
])
def test_modality_keys_that_cannot_be_mapped_are_refused(change, message):
    data = yaml.safe_load(PUBLISHED_MOE)
    data["modalities"][0].update(change)
    with pytest.raises(ConfigError, match=message):
        convert_published(data, gate="learned")


def test_stage2_config_continues_from_base_model_and_drops_its_modalities():
    data = {**yaml.safe_load(PUBLISHED_MOE), "base_model": "$MODEL_ROOT/freeze/cat_pep/checkpoint-666"}
    conversion = convert_published(data)  # no --gate needed: the gate lives in the checkpoint
    assert conversion.config["model"] == {"llm": "meta-llama/Llama-3.1-8B-Instruct",
                                          "base_model": "$MODEL_ROOT/freeze/cat_pep/final"}  # our stage 1's output
    assert any(note.startswith("modalities: dropped (base_model is set") for note in conversion.notes)
    with pytest.raises(ConfigError, match="base_llm: required"):
        convert_published({k: v for k, v in yaml.safe_load(PUBLISHED_MOE).items() if k != "base_llm"})


def test_nested_modality_config_and_single_clip_extras_are_read():
    data = yaml.safe_load(PUBLISHED_MOE)
    data["modalities"] = [{"model_type": "meditron_clip", "config": {"clip_name": "openai/clip-vit-large-patch14"},
                           "image_processor": "openai/clip-vit-base-patch32", "fusion_method": "sequence_append"}]
    conversion = convert_published(data)
    assert conversion.config["model"]["experts"] == [
        {"id": "clip", "checkpoint": "openai/clip-vit-large-patch14", "options": {"backend": "hf", "post_norm": False}}]
    assert any("fusion_method sequence_append: dropped (one expert" in note for note in conversion.notes)


def _tiny_hf_clip(folder):
    """A transformers CLIPModel folder (random weights, 32 px, patch 16): what a published `clip_name` points at."""
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config={**small, "vocab_size": 99, "max_position_embeddings": 16},
                        vision_config={**small, "image_size": 32, "patch_size": 16}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return str(folder)


def _published_data(folder, n_rows=8):
    """MultiMediset rows written as the published data writes them: `<|reserved_special_token_0|>` placeholders."""
    from tests.data.conftest import vqa_row

    rows = [vqa_row(f"Is there a lesion {i}?", "Yes." if i % 2 else "No.", seed=i,
                    token="<|reserved_special_token_0|>") for i in range(n_rows)]
    Dataset.from_list(rows).save_to_disk(str(folder))


def test_published_single_clip_config_converts_dry_runs_and_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "models"))
    _published_data(tmp_path / "storage" / "llava_pretrain_cleaned")
    published = tmp_path / "stage1_alignment.yaml"
    published.write_text(yaml.safe_dump({
        "base_llm": "tiny-qwen3", "base_model": None, "attachment_token": "<|reserved_special_token_0|>",
        "tokenizer_type": "qwen3", "token_size": 64,
        "loaders": [{"loader_type": "raw-image", "modality_type": "image"}],
        "modalities": [{"model_type": "meditron_clip", "clip_name": _tiny_hf_clip(tmp_path / "clip"),
                        "hidden_size": 64}],
        "training_mode": "ALIGNMENT",
        "datasets": [{"packed_path": "$STORAGE_ROOT/llava_pretrain_cleaned"}],
        "training_args": {"output_dir": "$MODEL_ROOT/stage1", "max_steps": 2, "per_device_train_batch_size": 2,
                          "learning_rate": 1.0e-4, "lr_scheduler_type": "cosine_with_min_lr",
                          "lr_scheduler_kwargs": {"min_lr": 3.0e-5}, "remove_unused_columns": False,
                          "save_strategy": "no", "report_to": "none", "disable_tqdm": True},
    }))
    ours = tmp_path / "ours.yaml"
    assert cli_main(["convert", "config", str(published), "--out", str(ours)]) == 0
    assert "$STORAGE_ROOT/llava_pretrain_cleaned" in ours.read_text()
    assert cli_main(["convert", "config", str(published), "--out", str(ours)]) == 2  # no silent overwrite
    assert cli_main(["train", "-c", str(ours), "--dry-run", "--seed", "5"]) == 0
    plan = capsys.readouterr().out
    assert "stage: alignment" in plan and "mlp3x_gelu" in plan and "= 2" in plan
    assert cli_main(["train", "-c", str(ours), "--seed", "5"]) == 0
    final = tmp_path / "models" / "stage1" / "final"
    saved = json.loads((final / "config.json").read_text())
    assert saved["projector_type"] == "mlp3x_gelu" and saved["experts"][0]["options"]["post_norm"] is False
    # Every image row trained: none refused for its placeholder.
    assert not (tmp_path / "models" / "stage1" / "bad_samples.json").exists() or \
        json.loads((tmp_path / "models" / "stage1" / "bad_samples.json").read_text()) == {}


def test_train_refuses_a_published_config_with_the_command_that_converts_it(tmp_path, capsys):
    published = tmp_path / "p.yaml"
    published.write_text(PUBLISHED_MOE)
    assert cli_main(["train", "--config", str(published), "--dry-run"]) == 2
    assert f"convert it first: multimeditron convert config {published}" in capsys.readouterr().err


def test_train_flags_seed_and_trust_remote_code_override_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_load(path, overrides):
        seen["overrides"] = overrides
        return load_config(path, overrides)

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
        "data": {"train": [{"path": str(tmp_path / "d")}]}, "stage": "alignment",
        "training_args": {"output_dir": str(tmp_path / "o")}}))
    monkeypatch.setattr("multimeditron.config.load_config", fake_load)
    assert cli_main(["train", "-c", str(config), "--seed", "3", "--trust-remote-code", "--dry-run"]) == 0
    assert seen["overrides"] == ["seed=3", "model.trust_remote_code=true"]
    parsed = load_config(config, seen["overrides"])
    assert parsed.seed == 3 and parsed.model.trust_remote_code is True


def test_negative_generalist_index_in_our_schema_counts_from_the_end():
    from multimeditron.config import parse_config

    experts = [{"id": "timm:vit_small_patch16_224", "tiny": True}] * 2
    config = parse_config({"model": {"llm": "tiny-qwen3", "experts": experts, "fusion": "avg",
                                     "generalist_index": -1},
                           "data": {"train": [{"path": "/d"}]}, "stage": "alignment",
                           "training_args": {"output_dir": "/o"}})
    assert config.model.generalist_index == 1


def test_published_moe_config_with_its_gate_converts_and_trains(tmp_path, monkeypatch, capsys):
    """The published gate (`gating_path`, GatingNetwork layout) becomes the pretrained router: converted, dry-run,
    trained one step in alignment (the gate stays frozen) and saved with the model."""
    from safetensors.torch import load_file

    from tests.model.test_router_pretrained import TINY_RESNET, _published_gate

    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "models"))
    _published_data(tmp_path / "storage" / "llava_pretrain_cleaned", n_rows=4)
    clip = _tiny_hf_clip(tmp_path / "clip")
    gate = _published_gate(tmp_path / "models" / "gating")  # 4 classes
    published = tmp_path / "moe.yaml"
    published.write_text(yaml.safe_dump({
        "base_llm": "tiny-qwen3", "attachment_token": "<|reserved_special_token_0|>",
        "modalities": [{"model_type": "moe_meditron_clip", "image_processor": "openai/clip-vit-base-patch32",
                        "expert_clip_names": [clip] * 4, "generalist_idx": -1,
                        "gating_path": "$MODEL_ROOT/gating", "fusion_method": "weighted_average",
                        "top_k_experts": 4}],
        "training_mode": "ALIGNMENT",
        "datasets": [{"packed_path": "$STORAGE_ROOT/llava_pretrain_cleaned"}],
        "training_args": {"output_dir": "$MODEL_ROOT/stage1", "max_steps": 1, "per_device_train_batch_size": 2,
                          "save_strategy": "no", "report_to": "none", "disable_tqdm": True},
    }))
    ours = tmp_path / "ours.yaml"
    assert cli_main(["convert", "config", str(published), "--out", str(ours)]) == 0
    assert "checkpoint: $MODEL_ROOT/gating" in ours.read_text()
    # the published gate is a ResNet-50; this one has its layout at a test size
    tiny = [f"--set=model.router_classifier.{key}={json.dumps(value)}" for key, value in TINY_RESNET.items()]
    assert cli_main(["train", "-c", str(ours), "--dry-run", *tiny]) == 0
    assert "router pretrained top-4" in capsys.readouterr().out
    assert cli_main(["train", "-c", str(ours), *tiny]) == 0
    final = tmp_path / "models" / "stage1" / "final"
    saved = json.loads((final / "config.json").read_text())
    assert saved["router"] == "pretrained" and saved["image_geometry"] == "center_crop"
    assert saved["router_classifier"]["class_to_expert"] == [0, 1, 2, 3]
    weights = load_file(str(final / "model.safetensors"))
    # frozen through alignment: the saved classifier is the published gate, BatchNorm statistics included
    for key, value in gate.state_dict().items():
        assert torch.equal(weights[f"vision.router.classifier.model.{key}"], value), key


def test_published_cross_attention_maps_to_the_published_attn_layer(tmp_path):
    data = yaml.safe_load(PUBLISHED_MOE.replace("fusion_method: sequence_append",
                                                "fusion_method: cross_attn\n    cross_attn_heads: 4"))
    model = convert_published(data, base_dir=tmp_path).config["model"]
    assert (model["fusion"], model["attn_variant"], model["attn_heads"]) == ("attn", "published", 4)


def test_conversion_sets_what_the_published_run_did_implicitly_one_line_each(tmp_path, capsys):
    data = yaml.safe_load(PUBLISHED_MOE)
    data.pop("max_sequence_length")
    data["base_model"] = "$MODEL_ROOT/sft/moe/attn/pep/stage1/checkpoint-666"
    conversion = convert_published(data, base_dir=tmp_path)
    config = conversion.config
    assert (config["data"]["caption_format"], config["data"]["on_bad_sample"], config["data"]["max_sequence_length"],
            config["seed"], config["loss_averaging"]) == ("published", "skip", 4096, 0, "micro_batch")
    assert config["model"]["base_model"] == "$MODEL_ROOT/sft/moe/attn/pep/stage1/final"
    assert len(conversion.changes) == 6 and all("\n" not in change for change in conversion.changes)
    assert any(c.startswith("model.base_model: $MODEL_ROOT/sft/moe/attn/pep/stage1/checkpoint-666 -> ")
               for c in conversion.changes)
    published = tmp_path / "p.yaml"
    published.write_text(yaml.safe_dump(data))
    assert cli_main(["convert", "config", str(published), "--out", str(tmp_path / "ours.yaml")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("changed: ")]
    assert printed == [f"changed: {change}" for change in conversion.changes]
    # a stage 1 that sets its length keeps it, and says nothing about it
    kept = convert_published(yaml.safe_load(PUBLISHED_MOE), base_dir=tmp_path)
    assert kept.config["data"]["max_sequence_length"] == 4096 and len(kept.changes) == 4


def test_a_relative_deepspeed_path_is_found_beside_the_yaml(tmp_path, monkeypatch):
    """Before: resolved against the working directory only, so a config beside its DeepSpeed file converted from
    elsewhere pointed at nothing."""
    from multimeditron.config import ConfigError

    folder = tmp_path / "configs"
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "deepspeed.json").write_text("{}")
    published = folder / "published.yaml"
    published.write_text(PUBLISHED_MOE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ours = tmp_path / "ours.yaml"
    assert cli_main(["convert", "config", str(published), "--out", str(ours)]) == 0
    assert yaml.safe_load(ours.read_text())["deepspeed"] == str(folder / "config" / "deepspeed.json")
    (elsewhere / "config").mkdir()
    (elsewhere / "config" / "deepspeed.json").write_text("{}")  # the same name in the working directory too
    with pytest.raises(ConfigError, match="names two files"):
        convert_published(yaml.safe_load(PUBLISHED_MOE), base_dir=elsewhere, yaml_dir=folder)
