"""The options the papers' recipes need, each against a hand-computed case: smoothing only inside mixup, the
head / backbone rate ratio, LoRA's bias mode, the cooldown, token reconstruction's Bernoulli mask, clean last
sample and frozen zero token, the timm transforms, DINOv2-on-radiology's decoders and Dice-only loss, and the
torchmetrics-style segmentation numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from multimeditron.adaptation.engine import ExpertTrainer, Schedule
from multimeditron.adaptation.experts import load_expert
from multimeditron.adaptation.finetune import ClassificationObjective, build_classifier, classifier_groups
from multimeditron.adaptation.images import TimmDataset
from multimeditron.adaptation.recipes import (
    FinetuneSection,
    LoraSection,
    TimmTransformSection,
    TokenReconstructionSection,
)
from multimeditron.adaptation.segmentation.decoders import Dinov2LinearDecoder, Dinov2UNetDecoder
from multimeditron.adaptation.segmentation.metrics import (
    confusion_matrix,
    monai_dice_loss,
    torchmetrics_style_metrics,
)
from multimeditron.adaptation.token_reconstruction import TokenReconstruction, corrupt
from multimeditron.training.arguments import training_arguments
from tests.adaptation.conftest import TEXTURE_EXPERT


def test_smoothing_reaches_the_loss_only_when_asked() -> None:
    expert, _ = load_expert(TEXTURE_EXPERT)
    logits = torch.tensor([[2.0, 0.0]])
    for applies, expected in (("always", 0.1), ("mixing", 0.0)):
        settings = FinetuneSection(label_smoothing=0.1, smoothing_applies=applies)
        objective = ClassificationObjective(build_classifier(expert, 2, settings), settings, 2)
        objective.classifier.forward = lambda _x: logits  # the loss of known logits
        loss = objective(torch.zeros(1, 3, 32, 32), torch.tensor([0]))["loss"]
        log_p = torch.log_softmax(logits, -1)[0]
        # smoothed cross-entropy: (1 - e) x -log p_y + e x mean over classes of -log p
        by_hand = -(1 - expected) * log_p[0] - expected * log_p.mean()
        assert float(loss) == pytest.approx(float(by_hand), abs=1e-6)


def test_backbone_lr_scales_every_expert_group(tmp_path) -> None:
    expert, _ = load_expert(TEXTURE_EXPERT)
    settings = FinetuneSection(adaptation="lora", backbone_lr=2e-4, lora=LoraSection(r=2, bias="lora_only"))
    classifier = build_classifier(expert, 2, settings)
    groups = classifier_groups(classifier, settings, weight_decay=0.0, learning_rate=5e-3)
    args = training_arguments({"output_dir": str(tmp_path), "learning_rate": 5e-3, "report_to": "none",
                               "optim": "sgd", "optim_args": "momentum=0.9"})
    trainer = ExpertTrainer(model=classifier, args=args, groups=groups, schedule=Schedule(warmup_epochs=0))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    vit = classifier.expert.vit
    assert rate[id(classifier.head.weight)] == pytest.approx(5e-3)
    assert rate[id(vit.blocks[0].attn.qkv.lora_A.default.weight)] == pytest.approx(2e-4)
    # bias="lora_only": the adapted layers' biases train, other biases do not
    assert rate[id(vit.blocks[0].attn.qkv.base_layer.bias)] == pytest.approx(2e-4)
    assert not vit.blocks[0].attn.proj.bias.requires_grad


def test_cooldown_holds_the_floor(tmp_path) -> None:
    layer = torch.nn.Linear(1, 1)
    args = training_arguments({"output_dir": str(tmp_path), "learning_rate": 1.0, "num_train_epochs": 10,
                               "report_to": "none"})
    trainer = ExpertTrainer(model=layer, args=args, groups=[{"params": list(layer.parameters())}],
                            schedule=Schedule(warmup_epochs=2, min_lr=0.0, cooldown_epochs=3))
    optimizer = trainer.create_optimizer()
    scheduler = trainer.create_scheduler(100, optimizer)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 10 steps per epoch: warm-up to step 20, cosine over steps 20..70, then the floor for the last 30 steps
    assert rates[10] == pytest.approx(0.5) and rates[20] == pytest.approx(1.0)
    assert rates[45] == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 50)))
    assert all(r == pytest.approx(0.0, abs=1e-12) for r in rates[70:])


def test_bernoulli_mask_draws_each_patch_with_the_images_fraction() -> None:
    settings = TokenReconstructionSection(noise=0.0, mask_max=1 / 3, mask_sampling="bernoulli")
    generator = torch.Generator().manual_seed(0)
    canvas = torch.rand(3, 8, 8)
    _, mask = corrupt(canvas, settings, 10_000, generator)
    replay = torch.Generator().manual_seed(0)
    fraction = float(torch.rand((), generator=replay)) / 3
    expected = torch.rand(10_000, generator=replay) < fraction  # the same draws, by hand
    assert torch.equal(mask, expected)
    assert abs(float(mask.float().mean()) - fraction) < 0.02


def test_clean_last_sample_and_zero_token_outside_the_optimiser() -> None:
    expert, _ = load_expert(TEXTURE_EXPERT)
    settings = TokenReconstructionSection(clean_last=True, mask_token="zero")
    objective = TokenReconstruction(expert, settings).train()
    assert "mask_token" not in dict(objective.named_parameters())
    assert torch.equal(objective.mask_token, torch.zeros_like(objective.mask_token))
    clean = torch.rand(2, 3, 32, 32)
    noisy = clean + 0.5
    mask = torch.ones(2, 16, dtype=torch.bool)
    seen = {}
    original = objective.trunk.forward_features

    def spy(pixels):
        seen["pixels"] = pixels
        return original(pixels)

    objective.trunk.forward_features = spy
    objective(clean, noisy, mask)
    # sample 0 corrupted, sample 1 (the last) exactly the clean image
    assert torch.allclose(seen["pixels"][1], expert.preprocess(clean)[1])
    assert not torch.allclose(seen["pixels"][0], expert.preprocess(clean)[0])


def test_timm_eval_transform_is_resize_and_centre_crop(tmp_path) -> None:
    # A 40 x 20 image, black but for white columns 15..24: RETFound's evaluation transform at 16 px resizes the
    # short side to int(16 / 0.875) = 18 (36 x 18, white columns 13.5..22.5), then crops the centre 16 x 16
    # (columns 10..25 of 36): crop column 8 is white, columns 0 and 15 black. A letterbox canvas would keep all 40.
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, 15:25] = 255
    Image.fromarray(array).save(tmp_path / "a.png")
    dataset = TimmDataset([str(tmp_path / "a.png")], 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), TimmTransformSection(),
                          train=False)
    pixels = dataset[0]["pixel_values"]
    assert pixels.shape == (3, 16, 16)
    assert float(pixels[:, :, 8].mean()) == pytest.approx(1.0, abs=0.05)
    assert float(pixels[:, :, 0].mean()) < 0.05 and float(pixels[:, :, 15].mean()) < 0.05
    # the training transform: RandAugment, erasing and a random crop, in [0, 1] space, repeated by its seed
    train = TimmDataset([str(tmp_path / "a.png")] * 2, 16, (0.5,) * 3, (0.5,) * 3, TimmTransformSection(),
                        train=True, seed=3)
    assert torch.equal(train[1]["pixel_values"], train[1]["pixel_values"])
    assert "RandAugment" in str(train.transform) and "RandomErasing(p=0.25, mode=pixel" in str(train.transform)


def test_dinov2_decoders_read_tokens_only() -> None:
    linear = Dinov2LinearDecoder(16, 3)
    assert [type(m).__name__ for m in linear.modules()] == ["Dinov2LinearDecoder", "Conv2d"]  # no BatchNorm
    unet = Dinov2UNetDecoder(16, 3)
    assert [u.up.out_channels for u in unet.ups] == [8, 4, 2, 3]  # D/2, D/4, D/8, classes
    grids = [torch.randn(2, 16, 4, 4) for _ in range(5)]
    out = unet(grids, torch.zeros(2, 3, 48, 48))
    assert out.shape == (2, 3, 48, 48)
    # no pixel path: the image's values do not change the output
    unet.eval()
    assert torch.equal(unet(grids, torch.zeros(2, 3, 48, 48)), unet(grids, torch.ones(2, 3, 48, 48)))


def test_monai_dice_loss_by_hand() -> None:
    # one image, 2 classes, 2 pixels: softmax probabilities (0.5, 0.5) everywhere (zero logits), truth [0, 1]
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # per class: |P G| = 0.5, |P| = 1, |G| = 1 -> Dice (1 + 1e-5) / (2 + 1e-5); background included, mean of both
    dice = (2 * 0.5 + 1e-5) / (1 + 1 + 1e-5)
    assert float(monai_dice_loss(logits, target)) == pytest.approx(1 - dice, abs=1e-7)


def test_torchmetrics_style_metrics_ignore_background_pixels() -> None:
    # truth: 4 background, 4 foreground pixels; prediction: foreground on 2 background pixels and on 3 of the
    # foreground ones. Ours counts the 2 false positives; the torchmetrics ignore_index=0 set drops those pixels.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pred = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0])
    metrics = torchmetrics_style_metrics(confusion_matrix(pred, target, 2), ["background", "lesion"])
    assert metrics["dice"] == pytest.approx(2 * 3 / (4 + 3))  # TP 3, FN 1, FP 0 once background truth is dropped
    assert metrics["jaccard"] == pytest.approx(3 / 4)
    from multimeditron.adaptation.segmentation.metrics import confusion_counts, segmentation_metrics

    ours = segmentation_metrics(confusion_counts(pred, target, 2), ["background", "lesion"])
    assert ours["dice"] == pytest.approx(2 * 3 / (4 + 5))  # every pixel counts: |P| = 5
