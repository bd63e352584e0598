"""Token reconstruction: the loss falls, only the trained copy (plus projector and mask token) changes, and the
written folder loads through the registry and as the expert of a VLM built from a stage YAML."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from multimeditron.adaptation.engine import Schedule, train_objective
from multimeditron.adaptation.images import unlabelled_images
from multimeditron.adaptation.recipes import TokenReconstructionSection
from multimeditron.adaptation.token_reconstruction import (
    CorruptedCanvases,
    TokenReconstruction,
    corrupt,
)
from multimeditron.adaptation.trunk import num_patches
from multimeditron.cli import main
from multimeditron.experts.registry import build_expert
from multimeditron.training.arguments import training_arguments


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_objective_lowers_loss_and_keeps_reference_frozen(unlabelled_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    expert = build_expert({"id": "retfound_green", "tiny": True, "output": "cls"})
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    settings = TokenReconstructionSection()
    objective = TokenReconstruction(expert, settings)
    images, folder = unlabelled_images(unlabelled_folder)
    assert len(images) == 24
    groups = [{"params": [p for p in objective.parameters() if p.requires_grad]}]
    assert not any(p.requires_grad for p in objective.reference.parameters())
    assert sum(p.numel() for p in groups[0]["params"]) > sum(p.numel() for p in expert.parameters())  # + projector
    args = training_arguments({"output_dir": str(tmp_path), "num_train_epochs": 4, "per_device_train_batch_size": 8,
                               "learning_rate": 2e-3, "logging_strategy": "epoch", "save_strategy": "no",
                               "report_to": "none", "disable_tqdm": True})
    dataset = CorruptedCanvases(images, expert.image_size, folder, settings, num_patches(objective.trunk))
    trainer = train_objective(objective, dataset, args, groups, Schedule(warmup_epochs=0.5))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert _states_equal(objective.reference.state_dict(), before)
    assert not _states_equal(objective.student.state_dict(), before)
    assert objective.reference.training is False  # train() of the objective leaves the reference in eval mode


def test_corruption_masks_the_drawn_fraction_and_adds_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    canvases = torch.rand(64, 3, 28, 28)
    drawn = [corrupt(c, TokenReconstructionSection(noise=0.2, mask_max=0.5), 4, generator) for c in canvases]
    noisy, masks = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
    assert masks.shape == (64, 4) and masks.float().mean() < 0.5 and masks.any()
    ratio = (noisy - canvases).std() / canvases.std()
    assert 0.15 < ratio < 0.25
    clean, none = corrupt(canvases[0], TokenReconstructionSection(noise=0.0, mask_max=0.0), 4, generator)
    assert torch.equal(clean, canvases[0]) and not none.any()


def test_corruption_is_drawn_per_sample_and_epoch(unlabelled_folder: Path) -> None:
    """The draws depend on (seed, epoch, image), not on the order or the process that reads the image: what makes
    several processes train as one, and a resumed run repeat the uninterrupted one."""
    images, folder = unlabelled_images(unlabelled_folder)
    dataset = CorruptedCanvases(images, 28, folder, TokenReconstructionSection(augment=True), 4, seed=5)
    first = dataset[3]
    dataset[7]
    again = dataset[3]
    assert all(torch.equal(first[k], again[k]) for k in first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3]["corrupted_values"], first["corrupted_values"])


@pytest.fixture(scope="module")
def adapted_run(unlabelled_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapt")
    code = main(["adapt", "--expert", "retfound_green", "--tiny", "--data", str(unlabelled_folder), "--out",
                 str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "0.5"])
    assert code == 0
    return out / "final"


def test_adapted_folder_loads_through_the_registry(adapted_run: Path) -> None:
    weights = load_file(str(adapted_run / "expert.safetensors"))
    # `tiny` is not repeated: the folder's record supplies the architecture.
    expert = build_expert({"id": "retfound_green", "checkpoint": str(adapted_run)})
    assert _states_equal(expert.state_dict(), weights)
    fresh = build_expert({"id": "retfound_green", "tiny": True})
    assert not _states_equal(fresh.state_dict(), weights)
    # part 1's SPEC parser takes the bare folder too (`--expert runs/adapt/final`)
    from multimeditron.probing.specs import build_probe_expert, parse_spec

    parsed = parse_spec(str(adapted_run))
    assert parsed.spec.id == "retfound_green"
    assert _states_equal(build_probe_expert(parsed).state_dict(), weights)
    with pytest.raises(ValueError, match="holds an adapted 'retfound_green' expert"):
        build_expert({"id": "timm:vit_small_patch14_reg4_dinov2", "checkpoint": str(adapted_run)})
    with pytest.raises(ValueError, match="image_size=56 contradicts"):
        build_expert({"id": "retfound_green", "checkpoint": str(adapted_run), "image_size": 56})


def test_adapted_folder_is_a_vlm_expert_from_a_stage_yaml(adapted_run: Path, tmp_path: Path) -> None:
    from multimeditron.config import load_config
    from multimeditron.training.model_setup import load_run_model

    stage = tmp_path / "stage1.yaml"
    stage.write_text(yaml.safe_dump({
        "model": {"llm": "tiny-qwen3", "experts": [{"id": "retfound_green", "checkpoint": str(adapted_run)}]},
        "data": {"train": [{"path": str(tmp_path / "unused")}]},
        "stage": "alignment",
        "training_args": {"output_dir": str(tmp_path / "run")},
    }))
    model, _, _ = load_run_model(load_config(stage))
    weights = load_file(str(adapted_run / "expert.safetensors"))
    assert _states_equal({k: v.float() for k, v in model.vision.experts[0].state_dict().items()}, weights)
    # The saved VLM rebuilds the same architecture without the folder (the config records tiny: true).
    assert model.config.experts[0]["tiny"] is True
    assert model.config.experts[0]["checkpoint"] == str(adapted_run)
