"""The learned router: top-k experts per image (others really not run), gradients reach the gate in every fusion,
the load-balancing loss, and a router that learns to send each kind of image to the one expert that sees it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from multimeditron.experts import registry
from multimeditron.experts.base import VisionExpert
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.router import Router
from multimeditron.model.vision_stack import VisionStack
from tests.conftest import GENERALIST, SPECIALIST, prompt_batch, tiny_model

EXPERTS = [GENERALIST] + [{"id": "timm:vit_small_patch16_224", "tiny": True} for _ in range(3)]


def test_top_k_skips_experts_per_image():
    model, processor = tiny_model(experts=EXPERTS, fusion="avg", projection="shared", router="learned", router_top_k=1)
    with torch.no_grad():  # make the gate choose specialist 1 for even images, 3 for odd ones
        model.vision.router.gate.weight.zero_()
        model.vision.router.gate.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 4.0]))
    batch = prompt_batch(processor, [1, 1, 1, 1])
    seen = {i: [] for i in range(4)}
    for i, expert in enumerate(model.vision.experts):
        # Real (non-blank) images only: under ZeRO-3 an idle expert still runs on one blank canvas.
        expert.register_forward_hook(
            lambda _m, args, _o, i=i: seen[i].append(int((args[0].flatten(1).abs().sum(1) > 0).sum())))
    with torch.no_grad():
        model(**batch)
    seen = {i: [n for n in counts if n] for i, counts in seen.items()}
    assert seen[0] == [4]  # the generalist feeds the gate: it sees every image
    assert seen[1] == [4]
    assert seen[2] == [] and seen[3] == []
    routing = model.vision.router(model.vision.experts[0](batch["pixel_values"]), 4, torch.device("cpu"))
    assert ((routing.weights > 0).sum(-1) == 1).all()
    # Top-1 keeps the chosen expert's softmax probability (Switch), not a constant 1.
    assert torch.allclose(routing.weights[:, 1], routing.probs[:, 1])
    assert (routing.weights[:, 1] < 1).all()
    assert routing.usage().tolist() == [0.0, 1.0, 0.0, 0.0]


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


def test_top_k_weights_renormalise_and_dense_weights_are_the_softmax():
    router = Router("learned", 4, 2, 8)
    routing = router(torch.randn(5, 3, 8), 5, torch.device("cpu"))
    assert torch.allclose(routing.weights.sum(-1), torch.ones(5))
    assert ((routing.weights > 0).sum(-1) == 2).all()
    dense = Router("learned", 4, 4, 8)
    routing = dense(torch.randn(5, 3, 8), 5, torch.device("cpu"))
    assert torch.equal(routing.weights, routing.probs)


def test_balance_loss_is_one_when_balanced_and_grows_with_collapse():
    router = Router("learned", 4, 1, 8)
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.bias.zero_()
    tokens = torch.randn(8, 3, 8)
    uniform = router(tokens, 8, torch.device("cpu"))
    # Ties go to expert 0 for every image: f = (1, 0, 0, 0), P = 1/4 each -> 4 * 1/4 = 1 (uniform probabilities).
    assert uniform.balance_loss().item() == pytest.approx(1.0)
    with torch.no_grad():
        router.gate.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
    collapsed = router(tokens, 8, torch.device("cpu")).balance_loss()
    assert collapsed.item() > 3.9  # -> E when one expert takes everything with certainty
    collapsed.backward()
    assert router.gate.bias.grad[0] > 0  # descending the loss lowers the collapsed expert's logit
    assert Router("uniform", 4, 4, 8)(None, 8, torch.device("cpu")).balance_loss() is None


@pytest.mark.parametrize("fusion", ["avg", "cat", "attn"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_gate_gradient_is_non_zero(fusion, top_k):
    model, processor = tiny_model(experts=[GENERALIST, SPECIALIST, SPECIALIST], fusion=fusion, projection="shared",
                                  router="learned", router_top_k=top_k, attn_heads=2, router_aux_loss_coef=0.0)
    if fusion == "attn":
        # Its output projection starts at zero (identity residual), so the very first step gives the gate no
        # gradient, as for any zero-initialised branch; one optimiser step on it is enough, emulated here.
        nn.init.normal_(model.vision.cross_attention.attn.out_proj.weight, std=0.2)
    model.train()
    batch = prompt_batch(processor, [1, 1, 1, 1])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = model(**batch, labels=labels)
    output.loss.backward()
    assert model.vision.router.gate.weight.grad.abs().sum() > 0
    assert output.aux_loss is not None and output.aux_loss.item() >= 1.0 - 1e-5


def test_balance_loss_enters_the_training_loss_with_its_coefficient(tmp_path):
    """The model returns the balance term beside the language-model loss; the trainer, where the loss is reduced,
    adds it with `router_aux_loss_coef`, in training only."""
    from multimeditron.training.arguments import training_arguments
    from multimeditron.training.trainer import MultiMeditronTrainer

    kwargs = {"experts": [GENERALIST, SPECIALIST], "fusion": "avg", "router": "learned", "router_top_k": 1}
    model, processor = tiny_model(**kwargs, router_aux_loss_coef=0.5)
    batch = prompt_batch(processor, [1, 1])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    output = model(**batch, labels=labels)
    model.config.router_aux_loss_coef = 0.0
    assert model(**batch, labels=labels).loss.item() == pytest.approx(output.loss.item(), rel=1e-5)
    model.config.router_aux_loss_coef = 0.5
    trainer = MultiMeditronTrainer(model=model, args=training_arguments({"output_dir": str(tmp_path),
                                                                         "report_to": "none"}))
    loss = trainer.compute_loss(model, {**batch, "labels": labels})
    assert loss.item() == pytest.approx(output.loss.item() + 0.5 * output.aux_loss.item(), rel=1e-5)
    model.eval()  # evaluation losses stay the language-model loss
    assert trainer.compute_loss(model, {**batch, "labels": labels}).item() == pytest.approx(output.loss.item(),
                                                                                              rel=1e-5)


# ---- a synthetic routing task -------------------------------------------------------------------------------------
# Images of kind k (1 or 2) carry their label as a brighter or darker colour channel k; in every channel, row k of
# each 4x4 patch is brighter (the kind's marker). Expert k reads channel k alone: it sees the label of kind-k images
# and only the marker of the other kind. Expert 0, the generalist whose pooled features feed the gate (and the query
# of `attn`), reads channel 0, which holds no label: the gate must learn to send each kind to its expert.
SIZE, PATCH, KINDS = 16, 4, (1, 2)


class ChannelExpert(VisionExpert):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.expert_id, self.channel = f"channel{channel}", channel
        self.feature_dim, self.image_size, self.patch_grid = 16, SIZE, SIZE // PATCH
        self.num_tokens, self.output = self.patch_grid ** 2, "patch"
        self._set_normalization((0.0,) * 3, (1.0,) * 3)
        self.embed = nn.Linear(PATCH * PATCH, self.feature_dim)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        plane = pixel_values[:, self.channel]  # (B, S, S)
        b = plane.shape[0]
        patches = plane.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).reshape(b, -1, PATCH * PATCH)
        return self.embed(patches)


def synthetic_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kinds = torch.randint(KINDS[0], KINDS[-1] + 1, (n,), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    rows = torch.arange(SIZE) % PATCH
    images = 0.3 + 0.4 * (rows[None, :] == kinds[:, None]).float()[:, None, :, None].expand(n, 3, SIZE, SIZE)
    images = images.clone()
    images[torch.arange(n), kinds] += 0.15 * (2 * labels - 1).float()[:, None, None]
    return images.clamp(0, 1), kinds, labels


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("fusion", ["avg", "cat", "attn"])
def test_learned_router_sends_each_kind_to_its_expert(monkeypatch, fusion, top_k):
    monkeypatch.setitem(registry._BUILDERS, "test:channel", lambda spec: ChannelExpert(spec.options["channel"]))
    torch.manual_seed(0)
    config = MultiMeditronConfig(
        experts=[{"id": "test:channel", "options": {"channel": k}} for k in range(3)], fusion=fusion,
        projection="shared", projector_type="linear", router="learned", router_top_k=top_k, attn_heads=2)
    stack = VisionStack(config, text_hidden_size=16)
    stack.experts.requires_grad_(False)  # fixed encoders: only the router, fusion and projector learn
    head = nn.Linear(stack.num_image_tokens * 16, 2)
    params = [p for p in stack.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        images, _, labels = synthetic_batch(32, generator)
        features, routing = stack(images)
        logits = head(features.flatten(1))
        # The balance term explores: a top-k router only learns about the experts it picks.
        loss = nn.functional.cross_entropy(logits, labels) + 0.1 * routing.balance_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, kinds, _ = synthetic_batch(300, generator)
    with torch.no_grad():
        _, routing = stack(images)
    selected = routing.selected  # (B, E): the experts each image ran
    for kind in KINDS:
        share = selected[kinds == kind, kind].float().mean()
        assert share >= 0.9, (fusion, top_k, kind, share, routing.usage().tolist())


STEPS = 600  # avg with top-2 of 3 needs about 500 steps here; top-1 about 250
