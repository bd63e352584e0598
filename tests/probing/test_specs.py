"""Expert SPEC strings: the parse rule, and experts taken from a saved MultiMeditron model."""
from __future__ import annotations

import pytest
import torch

from multimeditron.probing.specs import build_probe_expert, parse_spec


@pytest.mark.parametrize("text,expert_id,checkpoint", [
    ("retfound_green", "retfound_green", None),
    ("dinov2_vitl14:/path/ckpt.pth", "dinov2_vitl14", "/path/ckpt.pth"),
    ("timm:vit_small_patch16_224", "timm:vit_small_patch16_224", None),
    ("timm:vit_small_patch16_224:/w/vit.safetensors", "timm:vit_small_patch16_224", "/w/vit.safetensors"),
    ("biomedclip:hf-hub:microsoft/BiomedCLIP", "biomedclip", "hf-hub:microsoft/BiomedCLIP"),
])
def test_parse_rule(text, expert_id, checkpoint):
    parsed = parse_spec(text)
    assert (parsed.spec.id, parsed.spec.checkpoint) == (expert_id, checkpoint)


def test_yaml_mapping_spec_and_errors():
    parsed = parse_spec("{id: mermed_fm, normalization: cxr, image_size: 48}", tiny=True)
    assert parsed.spec.normalization == "cxr" and parsed.spec.image_size == 48 and parsed.spec.tiny
    with pytest.raises(ValueError, match="unknown expert key"):
        parse_spec("{id: mermed_fm, size: 48}")
    with pytest.raises(ValueError, match="no expert id"):
        parse_spec("timm:")


def test_expert_of_a_saved_model(tmp_path):
    import multimeditron as mm

    model, _ = mm.build_model("tiny-qwen3", [{"id": "dinov2_vits14", "tiny": True},
                                             {"id": "retfound_green", "tiny": True}], fusion="avg")
    with torch.no_grad():
        for p in model.vision.experts[1].parameters():
            p.add_(0.5)  # weights that differ from a fresh build
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="pick one with DIR#i"):
        parse_spec(str(tmp_path / "model"))
    parsed = parse_spec(f"{tmp_path / 'model'}#1")
    assert parsed.spec.id == "retfound_green" and parsed.name.startswith("model#1")
    expert = build_probe_expert(parsed)
    saved = model.vision.experts[1].state_dict()
    for key, value in expert.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    with pytest.raises(ValueError, match="no #5"):
        parse_spec(f"{tmp_path / 'model'}#5")


def test_seeded_builder_gives_the_seeds_random_weights():
    from multimeditron.adaptation.experts import load_expert

    parsed = parse_spec("retfound_green", tiny=True)  # no checkpoint: random weights
    torch.manual_seed(123)  # what the global generator held before does not matter
    first = build_probe_expert(parsed, seed=7).state_dict()
    torch.rand(5)
    again = build_probe_expert(parsed, seed=7).state_dict()
    other = build_probe_expert(parsed, seed=8).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    trained, _ = load_expert("retfound_green", tiny=True, seed=7)  # the adaptation commands' entry: the same start
    assert all(torch.equal(first[k], v) for k, v in trained.state_dict().items())
