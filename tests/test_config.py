"""The run configuration: key-naming errors, environment substitution, overrides."""
from __future__ import annotations

import pytest

from multimeditron.config import ConfigError, load_config, parse_config, substitute_env

BASE = """
model:
  llm: tiny-qwen3
  experts:
    - {id: "timm:vit_small_patch16_224", tiny: true}
data:
  train:
    - path: ${DATA_DIR}/train
stage: alignment
training_args:
  output_dir: $OUT_DIR/run
"""


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_env_substitution_and_overrides(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(path, ["training_args.learning_rate=2e-5", "data.packing=true"],
                         environ={"DATA_DIR": "/d", "OUT_DIR": "/o"})
    assert config.data.train[0].path == "/d/train"
    assert config.training_args == {"output_dir": "/o/run", "learning_rate": 2e-5}
    assert config.data.packing is True


def test_unset_variable_is_an_error_naming_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train\[0\].path: environment variable \$DATA_DIR is not set"):
        load_config(write(tmp_path, BASE), environ={"OUT_DIR": "/o"})


def test_dollar_escape():
    assert substitute_env("cost $$5", environ={}) == "cost $5"


@pytest.mark.parametrize("change,message", [
    (("model", "fusoin", "avg"), r"model.fusoin: unknown key"),
    (("model", "fusion", "sum"), r"model.fusion: 'sum' is not one of"),
    (("data", "max_sequence_length", "long"), r"data.max_sequence_length: expected int"),
    (("training_args", "learning_rat", 1.0), r"training_args.learning_rat: not a transformers TrainingArguments"),
    ((None, "stage", "align"), r"stage: 'align' is not one of"),
    ((None, "epochs", 3), r"epochs: unknown key"),
])
def test_errors_name_the_key(change, message):
    data = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224"}]},
            "data": {"train": [{"path": "x"}]}, "stage": "alignment", "training_args": {"output_dir": "o"}}
    section, key, value = change
    (data[section] if section else data)[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_expert_keys_are_checked():
    data = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "x", "chekpoint": "p"}]},
            "data": {"train": [{"path": "x"}]}, "stage": "alignment", "training_args": {"output_dir": "o"}}
    with pytest.raises(ConfigError, match=r"model.experts\[0\].chekpoint: unknown key"):
        parse_config(data)


def test_set_reaches_list_items(tmp_path):
    text = BASE.replace("    - path: ${DATA_DIR}/train", "    - path: ${DATA_DIR}/train\n    - path: /other")
    config = load_config(write(tmp_path, text), ["data.train[1].max_samples=8", "model.experts[0].checkpoint=/ckpt",
                                                  "model.experts[0].options.depth=2"],
                         environ={"DATA_DIR": "/d", "OUT_DIR": "/o"})
    assert config.data.train[1].max_samples == 8 and config.data.train[0].max_samples is None
    assert config.model.experts[0].checkpoint == "/ckpt"
    assert config.model.experts[0].options == {"depth": 2}


@pytest.mark.parametrize("assignment,message", [
    ("data.train[3].weight=2", r"data.train has 1 item\(s\), no \[3\]"),
    ("data.eval[0].weight=2", r"data.eval is not a list"),
    ("model.llm[0]=x", r"model.llm has no item \[0\]"),
    ("model.llm.kind=x", r"model.llm is not a section"),
    ("data.train[x].weight=2", r"'train\[x\]' is not a key"),
])
def test_set_errors_name_the_key(tmp_path, assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [assignment], environ={"DATA_DIR": "/d", "OUT_DIR": "/o"})
