"""What ZeRO-3 needs from a forward (tests/training/test_zero3.py runs it): a text-only batch and an expert no image
routes to still run, on a blank canvas weighted zero, so the results are unchanged and every parameter gets a
(zero) gradient instead of none."""
from __future__ import annotations

import torch

from tests.conftest import GENERALIST, SPECIALIST, tiny_model


def test_text_only_batch_and_unrouted_expert_change_nothing_but_get_zero_gradients():
    model, processor = tiny_model("tiny-qwen3", [GENERALIST, SPECIALIST], fusion="avg", router="learned",
                                  router_top_k=1)
    text = processor.apply_chat_template([{"role": "user", "content": "Any finding?"}], add_generation_prompt=True)
    batch = processor([text])
    size = processor.image_size
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"]).logits
        empty = model(input_ids=batch["input_ids"], pixel_values=torch.zeros(0, 3, size, size)).logits
    assert torch.equal(plain, empty)
    model.train()
    output = model(input_ids=batch["input_ids"], labels=batch["input_ids"], pixel_values=torch.zeros(0, 3, size, size))
    output.loss.backward()
    vision = dict(model.vision.named_parameters())
    assert all(p.grad is not None and not p.grad.any() for p in vision.values())  # every expert ran, weighted 0
    assert output.expert_mask is not None and not output.expert_mask.any()

    # an image routed to expert 0 only: expert 1 runs on a blank canvas, its weight 0 changes nothing
    model.zero_grad()
    with torch.no_grad():
        model.vision.router.gate.weight.zero_()
        model.vision.router.gate.bias.copy_(torch.tensor([5.0, -5.0]))
    canvas = torch.rand(1, 3, size, size)
    features, routing = model.vision(canvas)
    assert routing.selected.tolist() == [[True, False]]
    expected = model.vision.projectors[0](model.vision.experts[0](canvas) * routing.weights[0, 0])
    assert torch.allclose(features, expected, atol=1e-6)
    features.sum().backward()
    specialist = [p.grad for p in model.vision.experts[1].parameters()]
    assert all(g is not None and not g.any() for g in specialist)
