"""`multimeditron convert checkpoint`: a tiny folder in the published layout (config `model_type: multimodal`, the
published module names, two safetensors shards, tokenizer, gate folder), built here, converts into a model whose
logits equal a reference forward of the published model written here; weights it cannot place are refused."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

from multimeditron.cli import main as cli_main
from multimeditron.experts.base import CLIP_MEAN, CLIP_STD
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.presets import build_tiny_llm, build_tiny_tokenizer
from tests.conftest import prompt_batch

P = "modalities_with_projection.0."
HEADS = 2


def _linear_weights(prefix: str, sizes: list[tuple[int, int]], generator: torch.Generator) -> dict:
    out = {}
    for index, (n_in, n_out) in zip((0, 2, 4), sizes):
        out[f"{prefix}{index}.weight"] = torch.randn(n_out, n_in, generator=generator) * 0.2
        out[f"{prefix}{index}.bias"] = torch.randn(n_out, generator=generator) * 0.1
    return out


def build_published_folder(root, fusion_method: str = "cross_attn", pep: bool = True):
    """The published layout: LLM under `model.`, the MoE modality under `modalities_with_projection.0.`."""
    generator = torch.Generator().manual_seed(5)
    llm_dir, gate_dir, src = root / "llm", root / "gate", root / "published"
    tokenizer = build_tiny_tokenizer("tiny-llama")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image_start|>", "<|image_end|>"]})
    llm = build_tiny_llm("tiny-llama", "eager")
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for p in llm.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    llm.save_pretrained(llm_dir)
    hidden = llm.config.hidden_size
    experts, names = [], []
    for i in range(2):
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=224, patch_size=32)
        clip = CLIPVisionModel(config)
        with torch.no_grad():
            for p in clip.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
        clip.save_pretrained(root / f"clip{i}")
        experts.append(getattr(clip, "vision_model", clip))
        names.append(str(root / f"clip{i}"))
    gate = timm.create_model("resnet50", pretrained=False, num_classes=2)
    gate_dir.mkdir()
    # The gate's classes in the other order than the experts: the per-expert variant sends class c to its expert.
    (gate_dir / "config.json").write_text(json.dumps({"model_type": "gating_network", "num_classes": 2,
                                                      "class_names": [names[1], names[0]]}))
    vision = {f"{P}gating_network.resnet.{k}": v for k, v in gate.state_dict().items()}
    for i, expert in enumerate(experts):
        vision.update({f"{P}experts.{i}.{k}": v for k, v in expert.state_dict().items()})
    if pep:
        for i in range(2):
            vision.update(_linear_weights(f"{P}projectors.{i}.projection.", [(32, 32), (32, hidden), (hidden, hidden)],
                                          generator))
    else:
        vision.update(_linear_weights(f"{P}projector.projection.", [(32, 32), (32, hidden), (hidden, hidden)],
                                      generator))
    if fusion_method == "cross_attn":
        width = hidden if pep else 32
        for name in ("q_proj", "k_proj", "v_proj", "proj"):
            vision[f"{P}cross_attn.{name}.weight"] = torch.randn(width, width, generator=generator) * 0.2
            vision[f"{P}cross_attn.{name}.bias"] = torch.randn(width, generator=generator) * 0.1
    src.mkdir()
    shards = {"model-00001-of-00002.safetensors": {f"model.{k}": v.contiguous() for k, v in llm.state_dict().items()},
              "model-00002-of-00002.safetensors": {k: v.contiguous() for k, v in vision.items()}}
    for name, tensors in shards.items():
        save_file(tensors, str(src / name))
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, tensors in shards.items() for k in tensors}}))
    modality = {"model_type": "moe_meditron_clip_pep" if pep else "moe_meditron_clip", "modality_type": "image",
                "hidden_size": hidden, "expert_clip_names": names, "gating_path": str(gate_dir),
                "top_k_experts": 2, "projection_type": "mlp", "generalist_idx": -1, "fusion_method": fusion_method,
                "cross_attn_heads": HEADS, "use_bias_proj": True, "image_processor": names[0]}
    (src / "config.json").write_text(json.dumps({
        "model_type": "multimodal", "vocab_size": len(tokenizer), "modalities": [modality], "pad_token_idx": 0,
        "eos_token_idx": 2, "padding_side": "left", "initializer_range": 0.02, "llm_path": str(llm_dir),
        "truncation": False, "max_sequence_length": None, "dtype": "float32"}))
    tokenizer.save_pretrained(src)
    return src, shards


def reference_forward(src, shards, batch, image_token_id: int, fusion_method: str, pep: bool) -> torch.Tensor:
    """The published forward on `batch`, from the published weights: CLIP experts' last_hidden_state without CLS, the
    gate's softmax scattered to the experts by class name, per-expert (or shared) 3-layer GELU projector, the fusion,
    the features written at the image positions of the LLM's input embeddings."""
    state = {k: v for shard in shards.values() for k, v in shard.items()}
    config = json.loads((src / "config.json").read_text())
    modality, vocab = config["modalities"][0], config["vocab_size"]

    def sub(prefix):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    pixels = (batch["pixel_values"] - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    gate = timm.create_model("resnet50", pretrained=False, num_classes=2).eval()
    gate.load_state_dict(sub(f"{P}gating_network.resnet."))
    probs = gate(pixels).softmax(-1)
    weights = torch.zeros_like(probs)
    weights[:, [1, 0]] = probs  # class c names expert 1 - c
    outputs = []
    for i, name in enumerate(modality["expert_clip_names"]):
        clip = CLIPVisionModel(CLIPVisionConfig.from_pretrained(name))
        tower = getattr(clip, "vision_model", clip)
        tower.load_state_dict(sub(f"{P}experts.{i}."))
        outputs.append(tower(pixel_values=pixels).last_hidden_state[:, 1:])

    def mlp(prefix, x):
        w = sub(prefix)
        x = torch.nn.functional.gelu(x @ w["0.weight"].T + w["0.bias"])
        x = torch.nn.functional.gelu(x @ w["2.weight"].T + w["2.bias"])
        return x @ w["4.weight"].T + w["4.bias"]

    if pep:
        outputs = [mlp(f"{P}projectors.{i}.projection.", x) for i, x in enumerate(outputs)]
    stacked = torch.stack(outputs, dim=1)
    if fusion_method == "weighted_average":
        fused = (stacked * weights[:, :, None, None]).sum(1)
    else:
        attn = sub(f"{P}cross_attn.")
        scale = weights.softmax(-1)
        context = torch.cat([stacked[:, e] * scale[:, e, None, None] for e in range(stacked.shape[1])], dim=1)
        b, n, d = stacked[:, -1].shape

        def heads(x, name):
            x = x @ attn[f"{name}.weight"].T + attn[f"{name}.bias"]
            return x.view(b, -1, HEADS, d // HEADS).transpose(1, 2)

        q, k, v = heads(stacked[:, -1], "q_proj"), heads(context, "k_proj"), heads(context, "v_proj")
        out = ((q @ k.transpose(-1, -2)) / (d // HEADS) ** 0.5).softmax(-1) @ v
        fused = out.transpose(1, 2).reshape(b, n, d) @ attn["proj.weight"].T + attn["proj.bias"]
    if not pep:
        fused = mlp(f"{P}projector.projection.", fused)
    llm = AutoModelForCausalLM.from_pretrained(config["llm_path"], attn_implementation="eager")
    llm.resize_token_embeddings(vocab, mean_resizing=False)
    llm.load_state_dict(sub("model."))
    llm.eval()
    ids = batch["input_ids"]
    image = ids == image_token_id
    embeds = llm.get_input_embeddings()(ids.masked_fill(image, 0))
    embeds[image] = fused.reshape(-1, fused.shape[-1])
    return llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("fusion_method,pep", [("cross_attn", True), ("weighted_average", False)])
def test_converted_published_checkpoint_gives_the_published_logits(tmp_path, fusion_method, pep):
    src, shards = build_published_folder(tmp_path, fusion_method, pep)
    out = tmp_path / "converted"
    assert cli_main(["convert", "checkpoint", str(src), "--out", str(out)]) == 0
    model = MultiMeditronForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    from multimeditron.model.processing import MultiMeditronProcessor

    processor = MultiMeditronProcessor.from_pretrained(out)
    assert processor.attachment_token == "<|reserved_special_token_0|>"
    assert model.config.image_geometry == "center_crop" and model.config.router == "pretrained"
    if fusion_method == "cross_attn":
        assert (model.config.fusion, model.config.attn_variant, model.config.attn_heads) == ("attn", "published", 2)
    batch = prompt_batch(processor, [1, 1])
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    with torch.no_grad():
        ours = model(**batch).logits[..., :vocab]
        expected = reference_forward(src, shards, batch, model.config.image_token_id, fusion_method, pep)
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    # ... and it trains further: a backward step reaches the projectors
    model.train()
    loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.projectors.parameters())


def test_unknown_published_weights_are_refused_with_their_names(tmp_path, capsys):
    src, shards = build_published_folder(tmp_path, "weighted_average", pep=False)
    extra = dict(shards["model-00002-of-00002.safetensors"])
    extra[f"{P}temperature_head.weight"] = torch.zeros(3)
    save_file(extra, str(src / "model-00002-of-00002.safetensors"))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][f"{P}temperature_head.weight"] = "model-00002-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert cli_main(["convert", "checkpoint", str(src), "--out", str(tmp_path / "out")]) != 0
    assert f"{P}temperature_head.weight" in capsys.readouterr().err
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    assert cli_main(["convert", "checkpoint", str(src), "--out", str(tmp_path / "out2")]) != 0
    assert "model_type 'llava', expected 'multimodal'" in capsys.readouterr().err
