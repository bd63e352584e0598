"""MerMED's multi-crop views: shapes, draws per (seed, epoch, image), and several sources each with its own
normalisation, intensity window, sampling weight and modality label; the recipe's data rules and the dry run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multimeditron.adaptation.multicrop import (
    MultiCropCanvases,
    local_crop_size,
    resolve_sources,
)
from multimeditron.adaptation.recipes import AdaptRecipe, MermedSection
from multimeditron.config import ConfigError
from tests.adaptation.conftest import recipe

SETTINGS = MermedSection(local_crops_number=3)


def test_local_crop_is_96_of_224_in_whole_patches() -> None:
    assert local_crop_size(224, 16) == 96 and local_crop_size(224, 14) == 98
    assert local_crop_size(28, 14) == 14 and local_crop_size(32, 8, size=22) == 24


def test_crops_are_drawn_per_image_and_epoch(unlabelled_folder: Path) -> None:
    sources = resolve_sources(recipe(AdaptRecipe, **{"data.path": str(unlabelled_folder)}).data, (0.5,) * 3,
                              (0.5,) * 3)
    dataset = MultiCropCanvases(sources, 28, 14, SETTINGS, seed=3)
    first = dataset[5]
    assert first["global_crops"].shape == (2, 3, 28, 28) and first["local_crops"].shape == (3, 3, 14, 14)
    assert torch.isfinite(first["global_crops"]).all() and int(first["modality"]) == 0
    assert not torch.equal(first["global_crops"][0], first["global_crops"][1])
    dataset[2]
    assert all(torch.equal(first[k], dataset[5][k]) for k in first)  # not the order or the process
    dataset.set_epoch(1)
    assert not torch.equal(first["global_crops"], dataset[5]["global_crops"])
    assert dataset.sample_weights() is None  # one source: a plain permutation


def test_sources_have_their_own_normalisation_window_weight_and_label(tmp_path: Path) -> None:
    from tests.data.test_images import dicom_bytes

    grey = tmp_path / "cxr"
    grey.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(grey / f"{i}.png")
    ct = tmp_path / "ct"
    ct.mkdir()
    for i in range(2):  # stored 0 with intercept -1024: -1024 HU, black through the CT window
        (ct / f"{i}.dcm").write_bytes(dicom_bytes(np.zeros((16, 16)), RescaleSlope="1", RescaleIntercept="-1024"))
    data = recipe(AdaptRecipe, objective="mermed", **{"data.sources": [
        {"path": str(grey), "normalization": "chest_xray"},
        {"path": str(ct), "normalization": "ct", "intensity": "ct", "weight": 3}]}).data
    sources = resolve_sources(data, (0.5,) * 3, (0.5,) * 3)
    assert [s.name for s in sources] == ["chest_xray", "ct"] and sources[1].window.describe().startswith("range")
    plain = MermedSection(local_crops_number=0, global_crops_scale=[1.0, 1.0])
    dataset = MultiCropCanvases(sources, 16, 8, plain)
    weights = dataset.sample_weights()
    assert weights[:6].sum() * 3 == pytest.approx(weights[6:].sum())  # source shares 1 : 3 whatever their sizes
    assert dataset.labels.tolist() == [0] * 6 + [1] * 2 and dataset.modalities == ["chest_xray", "ct"]
    # a flat grey image keeps its value under rotation/crop/jitter only approximately; black stays black
    ct_crop = dataset[6]["global_crops"]
    assert torch.allclose(ct_crop.mean(), torch.tensor((0 - 0.330) / 0.325), atol=0.05)  # CT mean/std of MerMED
    cxr_centre = dataset[0]["global_crops"][:, :, 6:10, 6:10]
    assert cxr_centre.mean().item() == pytest.approx((128 / 255 - 0.508) / 0.312, abs=0.4)


def test_data_rules() -> None:
    with pytest.raises(ConfigError, match="either `path` or a list of `sources`"):
        recipe(AdaptRecipe, objective="mermed", **{"data.image_column": "image"})
    with pytest.raises(ConfigError, match="several sources are for --objective mermed"):
        recipe(AdaptRecipe, **{"data.sources": [{"path": "x"}]})
    with pytest.raises(ConfigError, match="weight must be > 0"):
        recipe(AdaptRecipe, objective="mermed", **{"data.sources": [{"path": "x", "weight": 0}]})
    with pytest.raises(ConfigError, match="partition_size"):
        recipe(AdaptRecipe, objective="mermed", **{"data.path": "x", "mermed.partition_size": 10**6})


def test_mermed_defaults_are_the_published_command_under_the_users_keys() -> None:
    values = recipe(AdaptRecipe, objective="mermed", **{"data.path": "x"})
    args = values.training_arguments(processes=8)
    assert args["per_device_train_batch_size"] == 128 and args["num_train_epochs"] == 100
    assert args["learning_rate"] == pytest.approx(5e-5 * 128 * 8 / 256)  # linear scaling rule
    assert args["weight_decay"] == 0.04 and args["max_grad_norm"] == 1.0
    assert values.schedule.warmup_epochs == 10 and values.schedule.min_lr == 1e-6
    mine = recipe(AdaptRecipe, objective="mermed", **{"data.path": "x", "schedule.warmup_epochs": 2,
                                                      "training_args.num_train_epochs": 5})
    assert mine.schedule.warmup_epochs == 2 and mine.training_arguments()["num_train_epochs"] == 5
    plain = recipe(AdaptRecipe, **{"data.path": "x"})  # token reconstruction keeps its own
    assert plain.schedule.warmup_epochs == 1 and plain.training_arguments()["per_device_train_batch_size"] == 32


def test_dry_run_names_each_source(unlabelled_folder: Path, capsys) -> None:
    from multimeditron.cli import main

    assert main(["adapt", "--objective", "mermed", "--expert", "retfound_green", "--tiny", "--dry-run",
                 "--set", f"data.sources=[{{path: {unlabelled_folder}, normalization: oct, weight: 2}}]"]) == 0
    text = capsys.readouterr().out
    assert "oct: 24 unlabelled images" in text and "weight 2" in text and "bank 131072 x 256" in text


def test_cookbook_recipe_is_the_published_command() -> None:
    from multimeditron.adaptation.recipes import load_recipe

    root = Path(__file__).resolve().parents[2]
    published = load_recipe(AdaptRecipe, str(root / "cookbook" / "experts" / "mermed" / "pretrain.yaml"))
    defaults = recipe(AdaptRecipe, objective="mermed", **{"data.path": "x"})
    assert published.mermed == defaults.mermed and published.schedule == defaults.schedule
    assert [s.normalization for s in published.data.sources] == ["colour_fundus", "chest_xray", "ct"]
