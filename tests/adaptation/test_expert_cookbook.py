"""The papers' recipes in `cookbook/experts/`: every one dry-runs with the paper's values in its plan, and a tiny
run of several (tiny experts, drawn images, one epoch) completes and writes the paper's metric set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multimeditron.cli import main
from tests.adaptation.conftest import SEGMENT_EXPERT, _segmentation_folder
from tests.probing.conftest import write_folder

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "experts"
TINY_VIT = '{id: "timm:vit_small_patch16_224", tiny: true, image_size: 32, options: {patch_size: 8}}'

# recipe -> (command, the expert override, what its dry run must print)
RECIPES = {
    "retfound_finetune_cfp": ("finetune", ["--set", "expert.spec=retfound_mae"],
                              ["label smoothing 0.1 (inside mixup/cutmix only)", "mixup 0, cutmix 0",
                               "RandAugment rand-m9-mstd0.5-inc1", "random erasing 0.25", "scale 0.08-1", "bicubic",
                               "eval resize 36 + centre crop 32", "24 per process", "warm-up 10 of 50 epochs",
                               "layer decay 0.65", "drop path 0.2", "retfound metric set"]),
    "retfound_finetune_oct": ("finetune", ["--set", "expert.spec=retfound_mae"],
                              ["RandAugment rand-m9-mstd0.5-inc1", "24 per process"]),
    "retfound_linear_probe": ("finetune", ["--set", "expert.spec=retfound_mae"],
                              ["method: lp", "24 per process", "warm-up 10 of 50 epochs"]),
    "dinov2_radiology_finetune": ("finetune", ["--set", "expert.spec=dinov2_vitl14"],
                                  ["optimiser sgd (momentum=0.9)", "head lr 0.005, expert lr 1e-05",
                                   "scale 0.75-1", "32 per process", "layer decay 1", "weight decay 0",
                                   "warm-up 0 of 10 epochs, cosine to 0"]),
    "dinov2_radiology_lora": ("finetune", ["--set", "expert.spec=dinov2_vitl14"],
                              ["LoRA r 48, alpha 16, dropout 0.1, bias lora_only", "head lr 0.005, expert lr 0.0002",
                               "optimiser sgd"]),
    "dinov2_radiology_bitfit": ("finetune", ["--set", "expert.spec=dinov2_vitl14"],
                                ["method: bitfit", "optimiser sgd"]),
    "dinov2_radiology_knn": ("probe", ["--set", "experts=[dinov2_vitl14]"],
                             ["k grid [100, 200, 400, 800, 1000]", "knn softmax over the top max k",
                              "ML-kNN counts each training row itself"]),
    "dinov2_radiology_linear": ("probe", ["--set", "experts=[dinov2_vitl14]"],
                                ["lrs [0.1, 0.01, 0.001, 0.0001, 1e-05], batch 128, 10 epochs", "features raw",
                                 "one logit + BCE", "retrained on train + val"]),
    "dinov2_radiology_fewshot": ("probe", ["--set", "experts=[dinov2_vitl14]"],
                                 ["fewshot systematic sampling, linear head"]),
    "retfound_green_logreg": ("probe", ["--set", "experts=[retfound_green]"],
                              ["logreg C [1.0], max_iter 20000", "trained on train only",
                               "paper metric sets ['retfound_green']"]),
    "dinov2_radiology_segment_linear": ("segment", ["--set", f"expert.spec={SEGMENT_EXPERT}"],
                                        ["dinov2_linear decoder", "Dice only", "torchmetrics-style",
                                         "16 per process", "weight decay 0"]),
    "dinov2_radiology_segment_unet": ("segment", ["--set", f"expert.spec={SEGMENT_EXPERT}"],
                                      ["dinov2_unet decoder", "Dice only"]),
    "retfound_green_token_reconstruction": ("adapt", ["--set", "expert.spec=retfound_green"],
                                            ["noise 0.2", "mask U(0, 0.333) of the patches (bernoulli)",
                                             "mask token zero", "last sample of each batch clean",
                                             "augment True (retfound_green)", "cooldown 20 epochs",
                                             "gradient clip 0.1", "AdamW betas (0.9, 0.99)", "128 per process",
                                             "learning rate 5e-05", "warm-up 10 of 120 epochs",
                                             "weight decay 0.0001", "precision bf16"]),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("cookbook_images"), {"train": 10, "val": 5, "test": 6})


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> Path:
    def draw(rng, mask):
        top, left = rng.integers(0, 20, size=2)
        mask[top:top + 12, left:left + 12] = 1

    return _segmentation_folder(tmp_path_factory.mktemp("cookbook_masks"), np.random.default_rng(4), draw)


def _args(name: str, data: Path, out: Path) -> list[str]:
    command, expert, _ = RECIPES[name]
    tiny = ["--set", "tiny=true"] if command == "probe" else ["--set", "expert.tiny=true"]
    where = ["--set", f"out={out}"] if command == "probe" else ["--set", f"training_args.output_dir={out}"]
    return [command, "--config", str(COOKBOOK / f"{name}.yaml"), *expert, *tiny, "--set", f"data.path={data}", *where]


def test_every_recipe_is_tested() -> None:
    assert sorted(p.stem for p in COOKBOOK.glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_dry_run_prints_the_papers_values(name: str, images: Path, masks: Path, tmp_path: Path,
                                                 capsys) -> None:
    data = masks if RECIPES[name][0] == "segment" else images
    assert main(_args(name, data, tmp_path / "out") + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    for text in RECIPES[name][2]:
        assert text in printed, (text, printed)
    assert not (tmp_path / "out").exists()


SHORT = ["--set", "training_args.num_train_epochs=1", "--set", "schedule.warmup_epochs=0"]


def test_retfound_recipe_runs_and_reports_retfounds_metric_set(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    assert main(_args("retfound_finetune_cfp", images, out) + SHORT + ["--set", "training_args.per_device_train_batch_size=8"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    test = run["paper_metrics"]["test"][0]
    assert test["set"] == "retfound" and "engine_finetune.py" in test["definition"]
    assert set(test["metrics"]) >= {"accuracy", "f1", "precision", "recall", "hamming", "jaccard", "auroc", "aupr",
                                    "kappa", "score"}
    assert "retfound:hamming" in (out / "results.csv").read_text()


def test_dinov2_radiology_lora_recipe_runs(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    assert main(_args("dinov2_radiology_lora", images, out) + SHORT + ["--set", "finetune.lora.r=2"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["paper_metrics"]["test"][0]["set"] == "dinov2_radiology"
    assert set(run["paper_metrics"]["test"][0]["metrics"]["auroc_per_class"]) == {"normal"}  # binary: positive class


def test_dinov2_radiology_probe_recipes_run(images: Path, tmp_path: Path) -> None:
    for name, protocol in (("dinov2_radiology_knn", "knn"), ("dinov2_radiology_linear", "linear")):
        out = tmp_path / name
        assert main(_args(name, images, out) + ["--set", "probe.k=[2,5]", "--no-cache"]) == 0
        run = json.loads((out / "results.json").read_text())["runs"][0]
        assert run["protocol"] == protocol
        assert run["paper_metrics"]["test"][0]["set"] == "dinov2_radiology"
    linear = json.loads((tmp_path / "dinov2_radiology_linear" / "results.json").read_text())["runs"][0]
    assert linear["chosen"]["head"] == "one logit + BCE"
    assert any("train + val" in note for note in linear["notes"])


def test_retfound_green_logreg_recipe_compares_experts_by_wilcoxon(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "green"
    args = _args("retfound_green_logreg", images, out)
    args[args.index("experts=[retfound_green]")] = f"experts=[retfound_green, '{TINY_VIT}']"
    assert main(args + ["--no-cache"]) == 0
    result = json.loads((out / "results.json").read_text())
    green = result["runs"][0]["paper_metrics"]["test"][0]["metrics"]
    assert green["median_bootstrap_auroc_per_class"]["normal"]["n_resamples"] == 100
    assert result["wilcoxon"][0]["per_class"]["normal"]["p_value"] <= 1.0
    assert "Wilcoxon p" in (out / "results.md").read_text()


def test_segmentation_and_adapt_recipes_run(images: Path, masks: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert main(_args("dinov2_radiology_segment_unet", masks, out) + SHORT + ["--set", "training_args.learning_rate=0.05"]) == 0
    result = json.loads((out / "segmentation.json").read_text())
    assert "ignore_index=0" in result["paper_metrics"]["test"]["definition"]
    out = tmp_path / "adapt"
    assert main(_args("retfound_green_token_reconstruction", images, out)
                + ["--set", "training_args.num_train_epochs=2", "--set", "schedule.warmup_epochs=1",
                   "--set", "schedule.cooldown_epochs=1", "--set", "training_args.per_device_train_batch_size=8",
                   "--set", "training_args.bf16=false"]) == 0
    assert (out / "final" / "expert.json").is_file()
