"""A saved MultiMeditron folder is self-contained: it reloads offline after the expert checkpoints are deleted.

Experts whose builders resolve the architecture from files beside the checkpoint (a transformers `config.json`,
an `open_clip_config.json`) record it in the model config (`spec.options`), so the reload reads neither those
files nor the hub; `spec.checkpoint` stays in the config as the record of where the weights came from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import multimeditron  # noqa: F401  (registers the Auto classes)
from multimeditron import MultiMeditronProcessor, build_model
from multimeditron.experts import checkpoints, timm_vit
from multimeditron.experts.families import biomedclip, clip
from multimeditron.experts.registry import build_expert
from tests.conftest import prompt_batch
from tests.experts.expert_layouts import randomize_, write_biomedclip, write_meta_dinov3, write_open_clip


def _hf_clip_vision_folder(tmp: Path) -> Path:
    """A tiny `CLIPVisionModel.save_pretrained` folder (config.json + model.safetensors)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14)
    folder = tmp / "hf-clip-vision"
    randomize_(CLIPVisionModel(config), seed=5).save_pretrained(folder)
    return folder


def _open_clip_folder(tmp: Path) -> Path:
    """A downloaded-style OpenCLIP folder: weights + open_clip_config.json that describes a non-default model."""
    path, _ = write_open_clip(tmp)
    folder = tmp / "open-clip-folder"
    folder.mkdir()
    Path(path).rename(folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "vision_cfg": dict(image_size=28, patch_size=14, width=32, layers=2, head_width=16),
        "text_cfg": dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)}}))
    return folder


def _biomedclip_folder(tmp: Path) -> Path:
    folder = Path(write_biomedclip(tmp)[0])
    # A normalisation that differs from the CLIP default: it must come back from the model config, not the file.
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def _dinov3_file(tmp: Path) -> Path:
    return Path(write_meta_dinov3(tmp, "vit_small_patch16_dinov3")[0])


# id, extra spec keys, checkpoint writer, the option that must be recorded (None: nothing is read from files)
CASES = {
    "hf_clip": ("clip", {}, _hf_clip_vision_folder, clip.HF_VISION_CONFIG),
    "open_clip": ("clip", {}, _open_clip_folder, biomedclip.OPEN_CLIP_MODEL_CFG),
    "biomedclip": ("biomedclip", {"tiny": True}, _biomedclip_folder, biomedclip.OPEN_CLIP_MODEL_CFG),
    "dinov3": ("dinov3_vits16", {"tiny": True}, _dinov3_file, None),
}


def _forbid_checkpoint_access(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way an expert builder could read beside its checkpoint (or the hub) fail loudly."""
    calls: list[str] = []

    def refuse(name):
        def fail(*args, **kwargs):
            calls.append(f"{name}{args}")
            raise AssertionError(f"the reload called {name}{args}: the saved model is not self-contained")
        return fail

    for module, names in ((checkpoints, ("resolve_companion_file", "read_checkpoint", "hub_download",
                                         "resolve_checkpoint")),
                          (clip, ("resolve_companion_file", "read_checkpoint")),
                          (biomedclip, ("resolve_companion_file", "read_checkpoint")),
                          (timm_vit, ("read_checkpoint",))):
        for name in names:
            monkeypatch.setattr(module, name, refuse(name))
    return calls


def _save(model, processor, directory: Path) -> None:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.mark.parametrize("case", list(CASES))
def test_saved_model_reloads_without_the_expert_checkpoint(case, tmp_path, monkeypatch):
    expert_id, extra, write, recorded_key = CASES[case]
    (tmp_path / "source").mkdir()
    checkpoint = write(tmp_path / "source")
    spec = {"id": expert_id, "checkpoint": str(checkpoint), **extra}
    torch.manual_seed(0)
    model, processor = build_model("tiny-qwen3", [spec])
    model.eval()

    stored = model.config.experts[0]
    assert stored["checkpoint"] == str(checkpoint)  # kept as the record of where the weights came from
    if recorded_key is not None:
        assert recorded_key in stored["options"]

    saved = tmp_path / "saved"
    _save(model, processor, saved)
    on_disk = json.loads((saved / "config.json").read_text())["experts"][0]
    assert on_disk == stored

    # Nothing of the expert checkpoint is left, and nothing beside it may be read.
    shutil.rmtree(tmp_path / "source")
    assert not checkpoint.exists()
    calls = _forbid_checkpoint_access(monkeypatch)

    reloaded_processor = MultiMeditronProcessor.from_pretrained(saved)
    batch = prompt_batch(reloaded_processor, [1, 2])
    reference = prompt_batch(processor, [1, 2])
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])

    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert calls == []
    assert reloaded.config.experts == model.config.experts
    expert, again = model.vision.experts[0], reloaded.vision.experts[0]
    assert (again.mean, again.std, again.image_size, again.num_tokens) == (
        expert.mean, expert.std, expert.image_size, expert.num_tokens)
    # Non-persistent buffers (DINOv3 RoPE periods, CLIP position ids) are recomputed, not left uninitialised.
    own_buffers = dict(expert.named_buffers())
    for name, value in again.named_buffers():
        assert not value.is_meta, name
        torch.testing.assert_close(value, own_buffers[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_biomedclip_normalisation_from_the_checkpoint_is_recorded(tmp_path):
    folder = _biomedclip_folder(tmp_path)
    model, _ = build_model("tiny-qwen3", [{"id": "biomedclip", "tiny": True, "checkpoint": str(folder)}])
    options = model.config.experts[0]["options"]
    assert (options["mean"], options["std"]) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert model.vision.experts[0].mean == (0.5, 0.4, 0.3)


@pytest.mark.parametrize("case", ["hf_clip", "open_clip", "biomedclip"])
def test_recorded_spec_rebuilds_the_same_architecture_from_a_hub_id(case, tmp_path, monkeypatch):
    """A recorded spec whose checkpoint names a hub repository rebuilds offline without touching the hub."""
    expert_id, extra, write, _ = CASES[case]
    (tmp_path / "source").mkdir()
    spec = {"id": expert_id, "checkpoint": str(write(tmp_path / "source")), **extra}
    model, _ = build_model("tiny-qwen3", [spec])
    recorded = dict(model.config.experts[0], checkpoint="some-org/some-clip-repo")
    _forbid_checkpoint_access(monkeypatch)
    twin = build_expert(recorded, load_checkpoint=False)
    own = model.vision.experts[0].state_dict()
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert (twin.mean, twin.std, twin.image_size, twin.num_tokens, twin.feature_dim) == (
        model.vision.experts[0].mean, model.vision.experts[0].std, model.vision.experts[0].image_size,
        model.vision.experts[0].num_tokens, model.vision.experts[0].feature_dim)


def test_recording_is_idempotent_and_keeps_user_options(tmp_path):
    folder = _hf_clip_vision_folder(tmp_path)
    model, _ = build_model("tiny-qwen3", [{"id": "clip", "checkpoint": str(folder), "options": {"layer": -2}}])
    first = model.config.experts
    assert first[0]["options"]["layer"] == -2 and first[0]["options"]["backend"] == "hf"
    rebuilt = type(model)(model.config)
    assert rebuilt.config.experts == first


def test_recorded_architecture_contradicting_the_backend_is_refused():
    with pytest.raises(ValueError, match="contradicts"):
        build_expert({"id": "clip", "options": {"backend": "open_clip", clip.HF_VISION_CONFIG: {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 28, "patch_size": 14}}})
    with pytest.raises(ValueError, match="open_clip_model_cfg"):
        build_expert({"id": "biomedclip", "tiny": True, "options": {biomedclip.OPEN_CLIP_MODEL_CFG: {"x": 1}}})
