"""A gate folder written by `train-gate` names its classes' experts (`class_experts`): a VLM config with
`router: pretrained` may then omit `class_to_expert` (derived from the expert names, the folder's arch and input
taken too), and a class naming an expert the model lacks, an expert no class reaches, or a contradicting
class_to_expert is refused with both sides named."""
from __future__ import annotations

from pathlib import Path

import pytest

from multimeditron.adaptation.gate import GateSection, build_gate, save_gate
from multimeditron.config import ConfigError, parse_config


@pytest.fixture(scope="module")
def gate_folder(tmp_path_factory) -> Path:
    classes = ["ct", "fundus", "xray"]
    gate = build_gate(GateSection(arch="test_resnet", image_size=32), classes)
    return save_gate(gate, classes, tmp_path_factory.mktemp("gate") / "gate",
                     {"ct": "radiology", "fundus": "eye", "xray": "radiology"})


def _config(folder: Path, expert_ids: list[str], **classifier) -> dict:
    return {"model": {"llm": "tiny-qwen3", "fusion": "avg", "router": "pretrained",
                      "experts": [{"id": i, "tiny": True} for i in expert_ids],
                      "router_classifier": {"checkpoint": str(folder), **classifier}},
            "data": {"train": [{"path": "/d"}]}, "stage": "alignment", "training_args": {"output_dir": "/o"}}


def test_class_to_expert_is_derived_from_the_names(gate_folder: Path) -> None:
    from multimeditron.config import model_config

    config = parse_config(_config(gate_folder, ["eye", "radiology"]))
    # the run config stays as written; the model config (what is built and saved) is completed from the folder
    assert config.model.router_classifier.class_to_expert is None
    classifier = model_config(config.model).router_classifier
    assert classifier["class_to_expert"] == [1, 0, 1]
    assert classifier["arch"] == "test_resnet" and classifier["image_size"] == 32
    assert parse_config(_config(gate_folder, ["eye", "radiology"], class_to_expert=[1, 0, 1]))


@pytest.mark.parametrize("experts, classifier, message", [
    (["eye", "chest"], {}, r"routes \{'ct': 'radiology', 'xray': 'radiology'\}.*experts are \['eye', 'chest'\]"),
    (["eye", "radiology", "skin"], {}, r"expert\(s\) \['skin'\] receive no class"),
    (["eye", "eye"], {}, r"share the name"),
    (["eye", "radiology"], {"class_to_expert": [0, 1, 1]}, r"class_to_expert: \[0, 1, 1\] contradicts"),
])
def test_a_mismatch_names_both_sides(gate_folder: Path, experts, classifier, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(gate_folder, experts, **classifier))


def test_without_names_class_to_expert_is_required(tmp_path: Path) -> None:
    gate = build_gate(GateSection(arch="test_resnet", image_size=32), ["a", "b"])
    folder = save_gate(gate, ["a", "b"], tmp_path / "gate")
    with pytest.raises(ConfigError, match="class_to_expert: required"):
        parse_config(_config(folder, ["eye", "radiology"]))
