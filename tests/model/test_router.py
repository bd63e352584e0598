"""The learned router: top-k experts per image, and experts outside an image's top-k are really not run."""
from __future__ import annotations

import torch

from tests.conftest import GENERALIST, prompt_batch, tiny_model

EXPERTS = [GENERALIST] + [{"id": "timm:vit_small_patch16_224", "tiny": True} for _ in range(3)]


def test_top_k_skips_experts_per_image():
    model, processor = tiny_model(experts=EXPERTS, fusion="avg", projection="shared", router="learned", router_top_k=1)
    with torch.no_grad():  # make the gate choose specialist 1 for even images, 3 for odd ones
        model.vision.router.gate.weight.zero_()
        model.vision.router.gate.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 4.0]))
    batch = prompt_batch(processor, [1, 1, 1, 1])
    seen = {i: [] for i in range(4)}
    for i, expert in enumerate(model.vision.experts):
        expert.register_forward_hook(lambda _m, args, _o, i=i: seen[i].append(args[0].shape[0]))
    with torch.no_grad():
        model(**batch)
    assert seen[0] == [4]  # the generalist feeds the gate: it sees every image
    assert seen[1] == [4]
    assert seen[2] == [] and seen[3] == []
    weights = model.vision.router(model.vision.experts[0](batch["pixel_values"]), 4, torch.device("cpu"))
    assert ((weights > 0).sum(-1) == 1).all()


def test_top_k_selects_different_experts_per_image():
    model, processor = tiny_model(experts=EXPERTS, fusion="cat", projection="per_expert", router="learned", router_top_k=2)
    batch = prompt_batch(processor, [1, 1, 1])
    seen = {i: [] for i in range(4)}
    for i, expert in enumerate(model.vision.experts):
        expert.register_forward_hook(lambda _m, args, _o, i=i: seen[i].append(args[0].shape[0]))
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"])
    assert features.shape[1] == model.num_image_tokens == 2 * 4
    specialist_images = sum(sum(v) for k, v in seen.items() if k != 0)
    assert specialist_images <= 3 * 2  # at most top_k experts per image, never all four
