"""The `pretrained` router: a classifier's class probabilities mapped to experts (hand-computed, dense and top-k), its
input, the published gate's checkpoint layouts, stage trainability (frozen = eval mode), and save/load."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from multimeditron.experts.base import CLIP_MEAN, CLIP_STD
from multimeditron.model.gate_classifier import GateClassifier, GateClassifierSpec
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor
from multimeditron.model.router import Router
from multimeditron.training.stages import apply_stage
from tests.conftest import GENERALIST, prompt_batch, tiny_model

# The published gate's network at a test size: torchvision's ResNet (BasicBlock, one block per stage) has the
# parameter names of timm's `resnet18` built with layers=[1, 1, 1, 1].
TINY_RESNET = {"arch": "resnet18", "options": {"layers": [1, 1, 1, 1]}, "image_size": 16}
CLASSIFIER = {"class_to_expert": [0, 1, 2, 2], **TINY_RESNET}


class FixedLogits(nn.Module):
    """Stands in for the classifier network: records its input, returns the same logits for every image."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([math.log(p) for p in probabilities]))
        self.seen: list[torch.Tensor] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixels)
        return self.logits.expand(pixels.shape[0], -1)


def _router(top_k: int) -> Router:
    router = Router("pretrained", 3, top_k, 8, {"class_to_expert": [0, 1, 2, 2], "arch": "test_resnet",
                                                "image_size": 4})
    router.classifier.model = FixedLogits([0.1, 0.2, 0.3, 0.4])  # classes 2 and 3 both go to expert 2
    return router


@pytest.mark.parametrize("top_k,expected", [
    (3, [0.1, 0.2, 0.7]),  # dense: the class probabilities summed per expert
    (2, [0.0, 0.2 / 0.9, 0.7 / 0.9]),  # top-2 renormalised over the selected experts
    (1, [0.0, 0.0, 0.7]),  # top-1 keeps the probability (Switch), as the learned router does
])
def test_class_probabilities_map_to_expert_weights(top_k, expected):
    router = _router(top_k)
    canvas = torch.full((2, 3, 8, 8), 0.5)
    routing = router(None, 2, canvas.device, canvas)
    assert torch.allclose(routing.weights, torch.tensor([expected] * 2), atol=1e-6)
    assert torch.allclose(routing.probs, torch.tensor([[0.1, 0.2, 0.7]] * 2), atol=1e-6)
    assert routing.balance_loss() is None  # it routes by modality; no balance term is added to the loss
    # its input: the canvas resized to image_size (4 px) and normalised with the CLIP mean/std by default
    (pixels,) = router.classifier.model.seen
    assert pixels.shape == (2, 3, 4, 4)
    expected_pixels = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pixels[0, :, 0, 0], expected_pixels, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    ({"class_to_expert": [0, 1, 3]},
     r"class_to_expert: one expert index \(0\.\.2\) per class of the classifier; \[3\] outside the 3 experts"),
    ({"class_to_expert": [0, 0, 1]}, r"experts \[2\] receive no class"),
    ({"class_to_expert": [0, 1, 2], "arch_name": "x"}, r"router_classifier\.arch_name: unknown key"),
    ({"class_to_expert": [0, 1, 2], "arch": "resnet_50"}, r"router_classifier\.arch: 'resnet_50' is not a timm model"),
])
def test_bad_classifier_specs_are_refused_with_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        GateClassifierSpec.from_dict(change, 3)


def _published_gate(folder, num_classes: int = 4) -> ResNet:
    """The published `GatingNetwork` save: config.json (model_type gating_network) + model.safetensors with the
    torchvision ResNet under `resnet.`."""
    torch.manual_seed(1)
    network = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes).eval()
    with torch.no_grad():
        for module in network.modules():  # non-trivial BatchNorm statistics, so a missed buffer would show
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"resnet.{k}": v.contiguous() for k, v in network.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gating_network", "num_classes": num_classes, "top_k": 1,
        "image_processor_path": "openai/clip-vit-base-patch32", "class_names": ["CT", "MRI", "Xray", "General"]}))
    return network


def test_published_gate_checkpoint_loads_and_routes_as_the_original(tmp_path):
    original = _published_gate(tmp_path / "gate")
    classifier = GateClassifier(GateClassifierSpec.from_dict(CLASSIFIER, 3), 3).eval()
    classifier.load_checkpoint(str(tmp_path / "gate"))
    canvas = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        classes = original((canvas - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        expected = classes.softmax(-1)
        expected = torch.stack([expected[:, 0], expected[:, 1], expected[:, 2] + expected[:, 3]], dim=1)
        assert torch.allclose(classifier(canvas), expected, atol=1e-5)
    # the published legacy form: the raw torchvision state dict (`resnet_path`), read with weights_only
    torch.save(original.state_dict(), tmp_path / "legacy.pth")
    legacy = GateClassifier(GateClassifierSpec.from_dict(CLASSIFIER, 3), 3).eval()
    legacy.load_checkpoint(str(tmp_path / "legacy.pth"))
    with torch.no_grad():
        assert torch.allclose(legacy(canvas), expected, atol=1e-5)
    # a gate with another number of classes than mapped is named, with its class names
    _published_gate(tmp_path / "gate5", num_classes=5)
    with pytest.raises(ValueError, match=r"class_to_expert: the gate .* has 5 classes \['CT'"):
        classifier.load_checkpoint(str(tmp_path / "gate5"))


def _pretrained_model(tmp_path, **classifier):
    _published_gate(tmp_path / "gate")
    return tiny_model(experts=[GENERALIST] * 3, fusion="avg", router="pretrained",
                      router_classifier={**CLASSIFIER, "checkpoint": str(tmp_path / "gate"), **classifier})


def test_classifier_trains_only_in_the_stages_that_say_so(tmp_path):
    model, processor = _pretrained_model(tmp_path)
    classifier = model.vision.router.classifier
    apply_stage(model, "alignment")
    model.train()
    assert not any(p.requires_grad for p in classifier.parameters())
    assert all(p.requires_grad for p in model.vision.projectors.parameters())
    assert not classifier.training  # frozen: eval mode, BatchNorm statistics kept
    statistics = {k: v.clone() for k, v in classifier.state_dict().items()}
    batch = prompt_batch(processor, [1, 1])
    output = model(**batch, labels=batch["input_ids"])
    output.loss.backward()
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in statistics.items())
    assert output.router_probs.grad_fn is None
    apply_stage(model, "full")  # the published gate learns here
    model.train()
    assert all(p.requires_grad for p in classifier.parameters()) and classifier.training
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert classifier.model.fc.weight.grad is not None and classifier.model.fc.weight.grad.abs().sum() > 0
    other, _ = tiny_model(experts=[GENERALIST] * 3, fusion="avg", router="pretrained",
                          router_classifier={**CLASSIFIER, "trainable_stages": ["end2end"]})
    apply_stage(other, "end2end")
    assert all(p.requires_grad for p in other.vision.router.classifier.parameters())
    apply_stage(other, "full")
    assert not any(p.requires_grad for p in other.vision.router.classifier.parameters())


def test_save_and_reload_keep_the_classifier_and_the_geometry(tmp_path):
    model, processor = _pretrained_model(tmp_path, trainable_stages=["full", "end2end"])
    processor.image_processor.geometry = "center_crop"
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    reloaded = MultiMeditronForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.router_classifier == model.config.router_classifier
    assert reloaded.config.router_classifier["trainable_stages"] == ["full", "end2end"]
    for key, value in model.vision.router.classifier.state_dict().items():
        assert torch.equal(value, reloaded.vision.router.classifier.state_dict()[key]), key
    assert MultiMeditronProcessor.from_pretrained(tmp_path / "saved").image_processor.geometry == "center_crop"
    batch = prompt_batch(processor, [1, 1])
    with torch.no_grad():
        before, after = model(**batch), reloaded(**batch)
    assert torch.equal(before.expert_mask, after.expert_mask)
    assert torch.allclose(before.router_probs, after.router_probs, atol=1e-6)
    assert torch.allclose(before.logits, after.logits, atol=1e-5)


@pytest.mark.parametrize("model,message", [
    ({"router": "pretrained"}, r"model\.router_classifier: required with router: pretrained"),
    ({"router": "learned", "router_classifier": {"class_to_expert": [0, 1]}}, r"model\.router_classifier: required"),
    ({"router": "pretrained", "router_classifier": {"class_to_expert": [0, 2]}},
     r"model\.router_classifier\.class_to_expert: one expert index \(0\.\.1\) per class"),
    ({"router": "pretrained", "router_classifier": {"class_to_expert": [0, 0]}}, r"experts \[1\] receive no class"),
    ({"router": "pretrained", "router_classifier": {"class_to_expert": [0, 1], "trainable_stages": ["all"]}},
     r"model\.router_classifier\.trainable_stages\[0\]: 'all' is not one of"),
    ({"router": "pretrained", "router_classifier": {"class_to_expert": [0, 1], "layers": 2}},
     r"model\.router_classifier\.layers: unknown key"),
    ({"image_geometry": "crop"}, r"model\.image_geometry: 'crop' is not one of \['pad', 'center_crop'\]"),
])
def test_run_config_checks_the_router_classifier(model, message):
    from multimeditron.config import ConfigError, parse_config

    data = {"model": {"llm": "tiny-qwen3", "experts": [GENERALIST] * 2, "fusion": "avg", **model},
            "data": {"train": [{"path": "/d"}]}, "stage": "alignment", "training_args": {"output_dir": "/o"}}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_text_only_batch_gives_a_trainable_classifier_zero_gradients():
    """ZeRO-3 (model/vision_stack.py): every rank runs every vision parameter, also the classifier, on batches
    without images, so a trainable gate gets a zero gradient instead of none."""
    model, processor = tiny_model(experts=[GENERALIST] * 3, fusion="avg", router="pretrained", router_top_k=1,
                                  router_classifier={**CLASSIFIER, "image_size": 64})  # 64 px: BatchNorm sees 2x2
    apply_stage(model, "full")
    model.train()
    text = processor.apply_chat_template([{"role": "user", "content": "Any finding?"}], add_generation_prompt=True)
    batch = processor([text])
    size = processor.image_size
    model(input_ids=batch["input_ids"], labels=batch["input_ids"],
          pixel_values=torch.zeros(0, 3, size, size)).loss.backward()
    gradients = [p.grad for p in model.vision.router.parameters()]
    assert gradients and all(g is not None and not g.any() for g in gradients)
