"""Router usage per modality in `eval`: a tiny MoE whose `pretrained` router is a tiny gate trained on the drawn
modalities sends each modality's images to the expert its class names, and `eval` prints and saves that table; the
per-modality aggregation on its own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from multimeditron.cli import main
from multimeditron.data.synthetic import generate_synthetic_vqa
from multimeditron.data.synthetic_captions import generate_caption_images
from multimeditron.evaluation.routing import usage_by_modality, usage_table
from tests.conftest import GENERALIST, SPECIALIST, tiny_model

# Expert names are the registry ids here (no adapted folders): x-ray -> the first, fundus and histology -> the second.
XRAY, FUNDUS = GENERALIST["id"], SPECIALIST["id"]


def test_usage_by_modality_counts_each_image() -> None:
    # three rows: x-ray with one image on expert 0; fundus with two images (expert 1, then 0); a row without modality
    usage = usage_by_modality(["x-ray", "fundus", None], [[[0]], [[1], [0]], [[1]]], ["a", "b"])
    assert usage["per_modality"]["x-ray"] == {"images": 1, "usage": {"a": 1.0, "b": 0.0}}
    assert usage["per_modality"]["fundus"] == {"images": 2, "usage": {"a": 0.5, "b": 0.5}}
    assert usage["per_modality"]["(none)"]["usage"] == {"a": 0.0, "b": 1.0}
    assert usage["all"] == {"images": 4, "usage": {"a": 0.5, "b": 0.5}}
    # top-2: both experts per image, fractions sum to 2
    assert usage_by_modality(["ct"], [[[0, 1]]], ["a", "b"])["all"]["usage"] == {"a": 1.0, "b": 1.0}
    table = usage_table(usage).splitlines()
    assert table[0] == "| modality | images | a | b |" and "| fundus | 2 | 0.50 | 0.50 |" in table
    assert table[-1] == "| all | 4 | 0.50 | 0.50 |"


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory) -> Path:
    """A saved tiny MoE (two tiny ViT experts, router: pretrained, top-1) around a test_resnet gate trained on the
    drawn modalities (32 px). lr 1e-2: the router sums the class probabilities per expert, so a gate that classifies
    every image right but unsure (p(x-ray) 0.45) still sends x-rays to the fundus + histology expert; at lr 1e-3 the
    best epoch (the first at val accuracy 1.0) routed 3 of 20 drawn x-rays to their expert (measured)."""
    root = tmp_path_factory.mktemp("moe")
    generate_caption_images(root / "captions", 90, 30, 30, image_size=32)
    assert main(["train-gate", "--data", str(root / "captions"), "--image-column", "modalities", "--label-column",
                 "modality", "--arch", "test_resnet", "--image-size", "32", "--epochs", "3", "--batch-size", "16",
                 "--lr", "1e-2", "--device", "cpu", "--out", str(root / "gate"),
                 "--class-experts", f"x-ray={XRAY},fundus={FUNDUS},histology={FUNDUS}"]) == 0
    model, processor = tiny_model(experts=[GENERALIST, SPECIALIST], fusion="avg", router="pretrained",
                                  router_top_k=1, router_classifier={"checkpoint": str(root / "gate" / "gate")})
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root


def test_eval_prints_and_saves_the_router_usage_per_modality(moe_folder: Path, capsys) -> None:
    data = moe_folder / "vqa"
    generate_synthetic_vqa(data, num_train=0, num_test=30, image_size=32)
    out = moe_folder / "results.json"
    assert main(["eval", "--model", str(moe_folder / "model"), "--task", "synthetic_vqa", "--data", str(data),
                 "--max-new-tokens", "2", "--batch-size", "16", "--out", str(out)]) == 0
    usage = json.loads(out.read_text())["results"][0]["router_usage"]
    assert usage["experts"] == [XRAY, FUNDUS]
    per = usage["per_modality"]
    assert set(per) == {"x-ray", "fundus", "histology"} and usage["all"]["images"] == 30
    assert per["x-ray"]["usage"][XRAY] >= 0.9, per
    assert per["fundus"]["usage"][FUNDUS] >= 0.9 and per["histology"]["usage"][FUNDUS] >= 0.9, per
    printed = capsys.readouterr().out
    assert f"| modality | images | {XRAY} | {FUNDUS} |" in printed
    assert any(line.startswith("| x-ray | ") for line in printed.splitlines())
    sample = json.loads(out.read_text())["results"][0]["samples"][0]
    assert sample["modality"] in per and len(sample["experts"]) == 1


def test_a_uniform_model_reports_no_router_usage(checkpoint: str, tmp_path: Path) -> None:
    data = tmp_path / "vqa"
    generate_synthetic_vqa(data, num_train=0, num_test=3, image_size=32)
    assert main(["eval", "--model", checkpoint, "--task", "synthetic_vqa", "--data", str(data), "--max-new-tokens",
                 "1", "--out", str(tmp_path / "r.json")]) == 0
    assert "router_usage" not in json.loads((tmp_path / "r.json").read_text())["results"][0]
