"""The mixture's parts on the quickstart's drawn images: `train-gate` learns the modalities (held-out accuracy near
100%) and writes a folder the `pretrained` router loads, with class_to_expert derived from its class names;
`train-expert --objective clip` takes recall@1 from chance to well above it and writes an expert folder the registry
loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multimeditron.cli import main
from multimeditron.data.synthetic_captions import generate_caption_images


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """MultiMediset caption rows of drawn x-ray / fundus / histology images (32 px): 90 train, 30 val, 30 test."""
    root = tmp_path_factory.mktemp("drawn") / "captions"
    generate_caption_images(root, 90, 30, 30, image_size=32)
    return root


def test_train_gate_learns_the_modalities_and_the_router_loads_it(drawn: Path, tmp_path: Path) -> None:
    out = tmp_path / "gate"
    assert main(["train-gate", "--data", str(drawn), "--image-column", "modalities", "--label-column", "modality",
                 "--arch", "test_resnet", "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--lr",
                 "1e-3", "--device", "cpu", "--out", str(out),
                 "--class-experts", "x-ray=xray_clip,fundus=fundus_clip,histology=fundus_clip"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["test"]["accuracy"] >= 0.95, result["test"]
    config = json.loads((out / "gate" / "config.json").read_text())
    assert config["model_type"] == "gating_network" and config["class_names"] == ["fundus", "histology", "x-ray"]

    from multimeditron.model.gate_classifier import complete_router_classifier
    from multimeditron.model.router import Router

    experts = [{"id": "clip"}, {"id": "biomedclip"}]
    with pytest.raises(ValueError, match=r"xray_clip.*fundus_clip.*experts are \['clip', 'biomedclip'\]"):
        complete_router_classifier({"checkpoint": str(out / "gate")}, experts)
    # name the experts as the gate does (an adapted folder's recorded name; here the registry id)
    classifier = complete_router_classifier({"checkpoint": str(out / "gate")},
                                            [{"id": "fundus_clip"}, {"id": "xray_clip"}])
    assert classifier["class_to_expert"] == [0, 0, 1] and classifier["arch"] == "test_resnet"
    router = Router("pretrained", 2, 1, 8, classifier)
    router.classifier.load_checkpoint(classifier["checkpoint"])
    router.eval()
    from multimeditron.adaptation.gate import GateRecipe, evaluate_gate, load_gate_data
    from multimeditron.adaptation.recipes import load_recipe

    recipe = load_recipe(GateRecipe, None, [("data.path", str(drawn), "--data"),
                                            ("data.image_column", "modalities", ""),
                                            ("data.label_columns", ["modality"], "")])
    data = load_gate_data(recipe)
    assert evaluate_gate(router.classifier, data, "test")["accuracy"] >= 0.95


def test_gate_epochs_that_classify_alike_are_ranked_by_confidence() -> None:
    # the router sums class probabilities per expert: of two epochs with the same val accuracy the more confident one
    # routes better, and one more image right always outranks any confidence
    from types import SimpleNamespace

    from multimeditron.adaptation.gate import _accuracy

    labels = [0, 1, 2, 0]
    unsure = SimpleNamespace(predictions=torch.eye(3)[labels].numpy() * 0.2, label_ids=labels)
    sure = SimpleNamespace(predictions=torch.eye(3)[labels].numpy() * 8.0, label_ids=labels)
    one_wrong = SimpleNamespace(predictions=torch.eye(3)[[0, 1, 2, 1]].numpy() * 8.0, label_ids=labels)
    scores = {name: _accuracy(p) for name, p in (("unsure", unsure), ("sure", sure), ("one_wrong", one_wrong))}
    assert scores["unsure"]["accuracy"] == scores["sure"]["accuracy"] == 1.0
    assert scores["sure"]["score"] > scores["unsure"]["score"] > scores["one_wrong"]["score"]
    assert scores["unsure"]["cross_entropy"] > scores["sure"]["cross_entropy"]


def test_clip_expert_recall_rises_from_chance(drawn: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip"
    assert main(["train-expert", "--objective", "clip", "--expert", "clip", "--tiny", "--data", str(drawn),
                 "--name", "drawn", "--epochs", "10", "--batch-size",
                 "16", "--lr", "1e-3", "--weight-decay", "0", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    before, after = result["before"]["test"], result["after"]["test"]
    chance = after["chance_r1"]
    assert before["i2t_r1"] <= 2 * chance and before["t2i_r1"] <= 2 * chance, before
    assert after["mean_r1"] >= 2.5 * chance, after
    assert after["zero_shot_classes"] == ["fundus", "histology", "x-ray"]
    assert after["zero_shot_accuracy"] >= 1.5 * after["zero_shot_chance"] > before["zero_shot_accuracy"]

    from multimeditron.experts.adapted import read_adapted_record
    from multimeditron.experts.registry import build_expert
    from multimeditron.model.gate_classifier import expert_name

    folder = out / "best"
    assert read_adapted_record(folder)["provenance"]["name"] == "drawn"
    assert expert_name({"id": "clip", "checkpoint": str(folder)}) == "drawn"
    expert = build_expert({"id": "clip", "checkpoint": str(folder)})
    assert expert(torch.rand(1, 3, 32, 32)).shape == (1, expert.num_tokens, expert.feature_dim)


def test_caption_pairs_per_modality_and_from_conversations(drawn: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    from multimeditron.adaptation.contrastive.data import load_caption_pairs
    from multimeditron.adaptation.contrastive.recipe import CaptionDataSection

    splits = load_caption_pairs(CaptionDataSection(paths=[str(drawn)], modalities=["fundus"]))
    assert set(splits["train"].modalities) == {"fundus"} and len(splits["train"]) == 30
    # conversation rows: the first assistant turn is the caption, the placeholder removed
    table = load_from_disk(str(drawn))["val"].select(range(4)).remove_columns("text")
    table = table.add_column("conversations", [[{"role": "user", "content": "<|image|>\nDescribe."},
                                                {"role": "assistant", "content": f"<|image|>finding {i}"}]
                                               for i in range(4)])
    table.save_to_disk(str(tmp_path / "chat"))
    pairs = load_caption_pairs(CaptionDataSection(paths=[str(tmp_path / "chat")], val_fraction=0.5))
    assert sorted(pairs["train"].captions + pairs["val"].captions) == [f"finding {i}" for i in range(4)]


@pytest.mark.parametrize("name", ["gate/resnet50.yaml", "gate/resnet18.yaml", "clip/biomedclip.yaml",
                                  "clip/ct.yaml", "clip/mri.yaml", "clip/ultrasound.yaml", "clip/xray.yaml"])
def test_cookbook_expert_recipes_validate(name: str, monkeypatch, tmp_path: Path) -> None:
    from multimeditron.adaptation.contrastive.recipe import ContrastiveRecipe
    from multimeditron.adaptation.gate import GateRecipe
    from multimeditron.adaptation.recipes import load_recipe

    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "models"))
    path = Path(__file__).resolve().parents[2] / "cookbook" / "experts" / name
    recipe = load_recipe(GateRecipe if name.startswith("gate/") else ContrastiveRecipe, str(path))
    assert str(tmp_path / "models") in recipe.training_arguments()["output_dir"]


def _clip_recipe(path: Path, data: Path, out: Path, modality: str, name: str) -> Path:
    path.write_text(f"expert: {{spec: clip, tiny: true}}\ndata: {{paths: [{data}], modalities: [{modality}]}}\n"
                    f"contrastive: {{name: {name}, eval_before: false}}\n"
                    f"training_args: {{output_dir: {out}, num_train_epochs: 1, use_cpu: true}}\n")
    return path


def test_train_expert_runs_several_recipes_each_to_its_own_folder(drawn: Path, tmp_path: Path, capsys) -> None:
    first = _clip_recipe(tmp_path / "a.yaml", drawn, tmp_path / "xray", "x-ray", "xray_clip")
    second = _clip_recipe(tmp_path / "b.yaml", drawn, tmp_path / "fundus", "fundus", "fundus_clip")
    assert main(["train-expert", "--config", str(first), "--config", str(second), "--set",
                 "data.max_samples=12"]) == 0
    from multimeditron.experts.adapted import read_adapted_record

    assert read_adapted_record(tmp_path / "xray" / "best")["provenance"]["name"] == "xray_clip"
    assert read_adapted_record(tmp_path / "fundus" / "best")["provenance"]["name"] == "fundus_clip"
    assert "recipe 2 of 2: " + str(second) in capsys.readouterr().out


@pytest.mark.parametrize("problem, message", [
    ("same_out", r"b\.yaml: training_args\.output_dir \(--out\): .*also the output of .*a\.yaml"),
    ("bad_key", r"b\.yaml: .*contrastive\.nmae"),
    ("no_data", r"data\.paths: .*missing"),
    ("used_out", r"--out .*b holds an earlier run"),
])
def test_train_expert_refuses_every_recipe_before_training_any(problem: str, message: str, drawn: Path,
                                                              tmp_path: Path, capsys) -> None:
    first = _clip_recipe(tmp_path / "a.yaml", drawn, tmp_path / "a", "x-ray", "a")
    second = _clip_recipe(tmp_path / "b.yaml", tmp_path / "missing" if problem == "no_data" else drawn,
                          tmp_path / ("a" if problem == "same_out" else "b"), "fundus", "b")
    if problem == "bad_key":
        second.write_text(second.read_text().replace("{name: b,", "{nmae: b,"))
    if problem == "used_out":  # the second recipe's folder holds another run
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "results.json").write_text("{}")
    assert main(["train-expert", "--config", str(first), "--config", str(second)]) == 2
    import re

    assert re.search(message, capsys.readouterr().err), problem
    assert not (tmp_path / "a").exists()  # the first recipe did not start


def test_train_gate_refuses_an_unknown_arch_before_reading_data(tmp_path: Path, capsys) -> None:
    # the router's own arch check runs when the recipe is read: one error line naming the key and its flag
    assert main(["train-gate", "--data", str(tmp_path / "no_such_data"), "--arch", "resnet999",
                 "--out", str(tmp_path / "gate")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: gate.arch (--arch): 'resnet999' is not a timm model name (the published gate: resnet50)"]
    assert not (tmp_path / "gate").exists()
