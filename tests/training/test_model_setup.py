"""The model section -> model config: `MultiMeditronConfig` owns the keys and their defaults, and the config checks,
the preflight, the dry run and the run all build it through `multimeditron.config.model_config`."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from multimeditron.cli import main
from multimeditron.config import ModelSection, model_config, parse_config
from multimeditron.model.configuration import ARCHITECTURE_DEFAULTS, SECTION_KEYS, MultiMeditronConfig
from tests.conftest import GENERALIST, SPECIALIST
from tests.training.conftest import write_run_config

# What the builder fills in itself; every other argument of the model config is a key of the model section.
BUILT_FROM_THE_LLM = {"text_config", "image_token_id", "image_start_token_id", "image_end_token_id", "base_llm"}


def test_the_model_section_takes_the_model_configs_keys_and_defaults():
    parameters = set(inspect.signature(MultiMeditronConfig.__init__).parameters) - {"self", "kwargs"}
    assert parameters == set(SECTION_KEYS) | BUILT_FROM_THE_LLM
    fields = {f.name: f for f in dataclasses.fields(ModelSection)}
    for key in SECTION_KEYS:
        if key == "experts":  # a list in the section, None (no expert) in the config
            assert fields[key].default_factory() == [] and ARCHITECTURE_DEFAULTS[key] is None
        else:
            assert fields[key].default == ARCHITECTURE_DEFAULTS[key], key


# key: (section keys that give it a value other than the default, the value the model config holds)
CLASSIFIER = {"class_to_expert": [0, 1], "arch": "resnet18"}
NON_DEFAULT = {
    "experts": ({"experts": [GENERALIST, SPECIALIST, GENERALIST]}, None),
    "fusion": ({"fusion": "cat"}, "cat"),
    "projection": ({"projection": "per_expert"}, "per_expert"),
    "projector_type": ({"projector_type": "linear"}, "linear"),
    "router": ({"router": "learned"}, "learned"),
    "router_top_k": ({"router": "learned", "router_top_k": 1}, 1),
    "router_classifier": ({"router": "pretrained", "router_classifier": CLASSIFIER}, None),
    "image_geometry": ({"image_geometry": "center_crop"}, "center_crop"),
    "generalist_index": ({"generalist_index": -1}, 1),
    "attn_heads": ({"fusion": "attn", "attn_heads": 2}, 2),
    "attn_variant": ({"fusion": "attn", "attn_variant": "published"}, "published"),
    "attachment_token": ({"attachment_token": "<image>"}, "<image>"),
    "router_aux_loss_coef": ({"router_aux_loss_coef": 0.25}, 0.25),
}


@pytest.mark.parametrize("key", SECTION_KEYS)
def test_every_section_key_reaches_the_model_config(key, tmp_path):
    assert set(NON_DEFAULT) == set(SECTION_KEYS)
    changes, expected = NON_DEFAULT[key]
    model = {"llm": "tiny-qwen3", "experts": [GENERALIST, SPECIALIST], "fusion": "avg", **changes}
    config = parse_config({"model": model, "data": {"train": [{"path": "x"}]}, "stage": "alignment",
                           "training_args": {"output_dir": str(tmp_path)}})
    built = model_config(config.model)
    if key == "experts":
        assert [e["id"] for e in built.experts] == [e["id"] for e in changes["experts"]]
    elif key == "router_classifier":
        assert built.router_classifier["class_to_expert"] == [0, 1] and built.router_classifier["arch"] == "resnet18"
    else:
        assert getattr(built, key) == expected != ARCHITECTURE_DEFAULTS[key]


def test_dry_run_and_train_build_the_same_model_config(synthetic_dir, tmp_path, monkeypatch, capsys):
    """A training setting (router_aux_loss_coef) and a non-default placeholder reach every model config that the
    checks, the dry run and the run build: each goes through `model_config`, none leaves a key out."""
    path = write_run_config(tmp_path / "run.yaml", synthetic_dir, tmp_path / "out", stage="alignment", max_steps=1,
                            per_device_train_batch_size=2)
    config = yaml.safe_load(path.read_text())
    config["model"].update(experts=[GENERALIST, SPECIALIST], fusion="avg", router="learned",
                           router_aux_loss_coef=0.3, attachment_token="<image>")
    path.write_text(yaml.safe_dump(config))
    built = []
    original = MultiMeditronConfig.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.experts:  # not the default instance transformers builds to diff a config against
            built.append((self.router_aux_loss_coef, self.attachment_token))

    monkeypatch.setattr(MultiMeditronConfig, "__init__", recording)
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "router balance loss x 0.3" in plan and "image placeholder <image>" in plan
    assert built and set(built) == {(0.3, "<image>")}
    built.clear()
    assert main(["train", "--config", str(path)]) == 0
    assert built and set(built) == {(0.3, "<image>")}
    saved = MultiMeditronConfig.from_pretrained(tmp_path / "out" / "final")
    assert (saved.router_aux_loss_coef, saved.attachment_token) == (0.3, "<image>")
