"""Segmentation on a frozen expert: the linear decoder learns a synthetic mask, the U-Net decoder beats it on
structures smaller than a patch, the encoder does not change, and the CLI writes metrics and overlays."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from multimeditron.adaptation.experts import load_expert
from multimeditron.adaptation.recipes import SegmentRecipe
from multimeditron.adaptation.segmentation.metrics import (
    confusion_counts,
    segmentation_metrics,
)
from multimeditron.adaptation.segmentation.train import segment
from multimeditron.cli import main
from multimeditron.data.segmentation_pairs import load_segmentation_pairs
from tests.adaptation.conftest import SEGMENT_EXPERT, recipe


def fast_recipe(data: Path, out: Path, decoder: str, epochs: int = 15) -> SegmentRecipe:
    return recipe(SegmentRecipe, **{"data.path": str(data), "segment.decoder": decoder, "schedule.warmup_epochs": 0.5,
                                    "training_args.output_dir": str(out), "training_args.num_train_epochs": epochs,
                                    "training_args.per_device_train_batch_size": 8,
                                    "training_args.learning_rate": 1e-2})


def test_metrics_count_dice_and_jaccard_per_class() -> None:
    target = torch.tensor([[0, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 0, 2]])
    metrics = segmentation_metrics(confusion_counts(pred, target, 3), ["background", "a", "b"])
    assert metrics["per_class"]["a"]["dice"] == 2 * 1 / (1 + 2)
    assert metrics["per_class"]["a"]["jaccard"] == 1 / 2
    assert metrics["per_class"]["b"]["dice"] == 1.0
    assert metrics["dice"] == (2 / 3 + 1) / 2 and metrics["score"] == (metrics["dice"] + metrics["jaccard"]) / 2


def test_linear_decoder_learns_a_square(square_masks: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    expert, spec = load_expert(SEGMENT_EXPERT)
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    result = segment(expert, load_segmentation_pairs(square_masks), fast_recipe(square_masks, tmp_path, "linear"),
                     spec.to_dict())
    assert result["test"]["per_class"]["class_1"]["dice"] > 0.8, result["test"]
    assert all(torch.equal(v, before[k]) for k, v in expert.state_dict().items())  # the encoder stays frozen


def test_unet_beats_linear_on_structures_smaller_than_a_patch(dot_masks: Path, tmp_path: Path) -> None:
    data = load_segmentation_pairs(dot_masks)
    dice = {}
    for decoder in ("linear", "unet"):
        torch.manual_seed(0)
        expert, spec = load_expert(SEGMENT_EXPERT)
        result = segment(expert, data, fast_recipe(dot_masks, tmp_path / decoder, decoder), spec.to_dict())
        dice[decoder] = result["test"]["dice"]
    assert dice["unet"] > dice["linear"] + 0.1, dice


def test_segment_cli_writes_metrics_and_overlays(square_masks: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["segment", "--expert", SEGMENT_EXPERT, "--data", str(square_masks), "--decoder", "unet",
                 "--out", str(out), "--epochs", "2", "--batch-size", "8", "--overlays", "2"]) == 0
    result = json.loads((out / "segmentation.json").read_text())
    assert set(result["test"]["per_class"]) == {"background", "class_1"}
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["test_000.png", "test_001.png"]
    assert (out / "decoder.safetensors").is_file()
    # --resume continues a stopped run (here: one stopped after its last checkpoint, its record not marked finished)
    # and says where; a finished run is not resumed
    args = ["segment", "--expert", SEGMENT_EXPERT, "--data", str(square_masks), "--decoder", "unet", "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--overlays", "2", "--resume"]
    assert main(args) == 2
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "finished"}))
    capsys.readouterr()
    assert main(args) == 0
    assert f"resuming from {out / 'checkpoint-'}" in capsys.readouterr().out
    assert json.loads((out / "segmentation.json").read_text())["test"]["per_class"]


def test_dice_is_scored_at_each_masks_own_resolution(tmp_path: Path) -> None:
    """Two experts of different input sizes on the same non-square pairs are scored against the same pixels: the
    masks' own, not their canvases (where the padding used to count as background)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((24, 40), dtype=np.uint8)  # height 24, width 40: padded on the square canvas
            mask[6:14, 10:22] = 1
            mask[0, :3] = 255  # ignored pixels count nowhere
            image = rng.normal(0.3, 0.05, (24, 40))
            image[mask == 1] += 0.5
            rgb = (np.clip(np.repeat(image[..., None], 3, axis=2), 0, 1) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    data = load_segmentation_pairs(root)
    pixels = {}
    for size in (32, 64):
        torch.manual_seed(0)
        expert, spec = load_expert(f'{{id: "timm:vit_small_patch16_224", tiny: true, image_size: {size}, '
                                   f'options: {{patch_size: 8}}}}')
        result = segment(expert, data, fast_recipe(root, tmp_path / str(size), "linear", epochs=2), spec.to_dict())
        pixels[size] = {name: m["pixels"] for name, m in result["test"]["per_class"].items()}
    assert pixels[32] == pixels[64] == {"background": 3 * (24 * 40 - 8 * 12 - 3), "class_1": 3 * 8 * 12}
