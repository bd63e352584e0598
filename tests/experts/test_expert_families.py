"""Every family loads a checkpoint in its ORIGINAL published layout and reproduces the source model's features;
checkpoints with an unknown or a missing key are refused with the key's name."""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import pytest
import torch
from expert_layouts import (
    BIOMEDCLIP_CONFIG,
    normalise,
    open_clip_tokens,
    timm_source,
    write_biomedclip,
    write_hf_clip,
    write_mermed,
    write_meta_dinov2,
    write_meta_dinov3,
    write_open_clip,
    write_retfound_dinov2,
    write_retfound_green,
    write_retfound_mae,
)

from multimeditron.experts.checkpoints import CheckpointDownloadError
from multimeditron.experts.registry import build_expert

ATOL = 1e-5

DINOV2 = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg4": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg4": "vit_giant_patch14_reg4_dinov2",
}
DINOV3 = {
    "dinov3_vits16": "vit_small_patch16_dinov3",
    "dinov3_vitb16": "vit_base_patch16_dinov3",
    "dinov3_vitl16": "vit_large_patch16_dinov3",
    "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3",
    "dinov3_vit7b16": "vit_7b_patch16_dinov3",
}

# id -> (writer, key prefix inside the layout's weight dict, name of the final norm weight in the layout)
TIMM_CASES = {
    "retfound_mae": (write_retfound_mae, "", "norm.weight"),
    "retfound_dinov2": (write_retfound_dinov2, "backbone.", "norm.weight"),
    **{i: (partial(write_meta_dinov2, model_name=m), "", "norm.weight") for i, m in DINOV2.items()},
    **{i: (partial(write_meta_dinov3, model_name=m, qkv_bias="7b" not in m), "", "norm.weight")
       for i, m in DINOV3.items()},
    "mermed_fm": (write_mermed, "backbone.", "norm.weight"),
    "retfound_green": (write_retfound_green, "", "norm.weight"),
}


def _canvas(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _check_features(expert, reference, canvas=None) -> None:
    canvas = _canvas(expert.image_size) if canvas is None else canvas
    got = expert.eval()(canvas)
    want = reference(normalise(canvas, expert.mean, expert.std))
    assert got.shape == (2, expert.num_tokens, expert.feature_dim)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("expert_id", list(TIMM_CASES))
def test_original_layout_reproduces_source_features(expert_id, tmp_path):
    write, _, _ = TIMM_CASES[expert_id]
    path, reference = write(tmp_path)
    expert = build_expert({"id": expert_id, "tiny": True, "checkpoint": path})
    _check_features(expert, reference)
    # The loaded weights, not the random initialisation, made the match.
    fresh = build_expert({"id": expert_id, "tiny": True}).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(_canvas(fresh.image_size)), expert(_canvas(expert.image_size)), atol=1e-3)


@pytest.mark.parametrize("problem", ["extra", "missing"])
@pytest.mark.parametrize("expert_id", list(TIMM_CASES))
def test_unknown_or_missing_key_is_refused(expert_id, problem, tmp_path):
    write, prefix, norm = TIMM_CASES[expert_id]

    def mutate(sd: dict) -> None:
        if problem == "extra":
            sd[prefix + "extra_scale"] = torch.zeros(3)
        else:
            del sd[prefix + norm]

    path = write(tmp_path, mutate=mutate)[0]
    with pytest.raises(ValueError, match="extra_scale" if problem == "extra" else re.escape(norm)):
        build_expert({"id": expert_id, "tiny": True, "checkpoint": path})


def test_retfound_mae_report_names_what_was_dropped(tmp_path):
    path, _ = write_retfound_mae(tmp_path)
    expert = build_expert({"id": "retfound_mae", "tiny": True})
    report = expert.load_checkpoint(path)
    assert report.entry == "model"
    assert "mask_token" in report.dropped and "decoder_pred.weight" in report.dropped
    assert not report.missing and not report.unexpected
    assert not any(k.startswith("fc_norm") for k in expert.vit.state_dict())  # never in RETFound's checkpoint


def test_retfound_mae_finetune_pooling_allows_only_fc_norm_missing(tmp_path):
    """RETFound fine-tuning pools with fc_norm (global_pool avg): fc_norm is allow-listed, the MAE norm dropped."""
    path, _ = write_retfound_mae(tmp_path)
    expert = build_expert({"id": "retfound_mae", "tiny": True, "output": "cls",
                           "options": {"global_pool": "avg", "cls_pool": "head"}})
    report = expert.load_checkpoint(path)
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight"]
    assert "norm.weight" in report.dropped
    with torch.no_grad():
        assert expert(_canvas(32)).shape == (2, 1, 32)


def test_retfound_dinov2_loads_the_teacher_not_the_student(tmp_path):
    path, _ = write_retfound_dinov2(tmp_path)
    report = build_expert({"id": "retfound_dinov2", "tiny": True}).load_checkpoint(path)
    assert report.entry == "teacher"
    assert {"dino_head.mlp.0.weight", "ibot_head.mlp.0.weight", "mask_token"} <= set(report.dropped)


def test_retfound_dinov2_block_chunked_training_checkpoint(tmp_path):
    """DINOv2 training with block_chunks saves `blocks.<chunk>.<index>.*`; the global index is kept."""
    def chunk(sd: dict) -> None:
        # Two blocks in two chunks: block i lives in chunk i, under its global index.
        for k in [k for k in sd if k.startswith("backbone.blocks.")]:
            index = int(k.split(".")[2])
            sd[k.replace(f"backbone.blocks.{index}.", f"backbone.blocks.{index}.{index}.")] = sd.pop(k)

    path, reference = write_retfound_dinov2(tmp_path, chunk)
    _check_features(build_expert({"id": "retfound_dinov2", "tiny": True, "checkpoint": path}), reference)


def test_mermed_falls_back_to_student(tmp_path):
    path, reference = write_mermed(tmp_path, with_teacher=False)
    expert = build_expert({"id": "mermed_fm", "tiny": True})
    report = expert.load_checkpoint(path)
    assert report.entry == "student"
    assert "head.mlp.0.weight" in report.dropped and "masked_embed" in report.dropped
    _check_features(expert, reference)


def test_mermed_modality_normalization(tmp_path):
    path, reference = write_mermed(tmp_path)
    expert = build_expert({"id": "mermed_fm", "tiny": True, "checkpoint": path, "normalization": "oct"})
    assert expert.mean == (0.198,) * 3 and expert.std == (0.222,) * 3
    _check_features(expert, reference)
    assert build_expert({"id": "mermed_fm", "tiny": True, "normalization": "cxr"}).mean == (0.508,) * 3
    assert build_expert({"id": "mermed_fm", "tiny": True, "normalization": "skin"}).std == (0.240, 0.220, 0.229)
    with pytest.raises(ValueError, match="colour_fundus.*ultrasound"):
        build_expert({"id": "mermed_fm", "tiny": True, "normalization": "mri"})


def test_dinov3_cls_output_is_the_class_token(tmp_path):
    path, _ = write_meta_dinov3(tmp_path, "vit_small_patch16_dinov3")
    src = timm_source("vit_small_patch16_dinov3", 32, qkv_bias=True, global_pool="token")
    expert = build_expert({"id": "dinov3_vits16", "tiny": True, "checkpoint": path, "output": "cls"})
    _check_features(expert, lambda x: src.forward_features(x)[:, :1])


def test_dinov3_without_qkv_bias_only_drops_zero_biases(tmp_path):
    """Meta's distilled checkpoints carry all-zero q/v biases: a model without qkv bias may skip them, and only them."""
    def add_bias(value: float):
        def mutate(sd: dict) -> None:
            for k in [k for k in sd if k.endswith("attn.qkv.weight")]:
                sd[k.replace("weight", "bias")] = torch.full((sd[k].shape[0],), value)
                sd[k.replace("weight", "bias_mask")] = torch.ones(sd[k].shape[0])
        return mutate

    path, reference = write_meta_dinov3(tmp_path, "vit_small_patch16_dinov3", mutate=add_bias(0.0), qkv_bias=False)
    expert = build_expert({"id": "dinov3_vits16", "tiny": True, "options": {"qkv_bias": False}})
    report = expert.load_checkpoint(path)
    assert "blocks.0.attn.qkv.bias" in report.dropped
    _check_features(expert, reference)
    path, _ = write_meta_dinov3(tmp_path, "vit_small_patch16_dinov3", mutate=add_bias(0.5), qkv_bias=False)
    with pytest.raises(ValueError, match="qkv_bias"):
        build_expert({"id": "dinov3_vits16", "tiny": True, "options": {"qkv_bias": False}, "checkpoint": path})


def test_dinov3_rope_runs_at_another_input_size(tmp_path):
    path, _ = write_meta_dinov3(tmp_path, "vit_base_patch16_dinov3")
    src = timm_source("vit_base_patch16_dinov3", 32, qkv_bias=True, global_pool="token")
    expert = build_expert({"id": "dinov3_vitb16", "tiny": True, "image_size": 48, "checkpoint": path})
    assert expert.num_tokens == 9
    _check_features(expert, lambda x: src.forward_features(x)[:, 5:])


# --- position-embedding resampling: a checkpoint at one grid loads into an expert at another
RESAMPLE_CASES = {
    # id: (writer, timm name, checkpoint img size, expert spec extra, prefix positions kept, extra timm kwargs)
    "dinov2_vits14_reg4": (partial(write_meta_dinov2, model_name="vit_small_patch14_reg4_dinov2"),
                           "vit_small_patch14_reg4_dinov2", 56, {}, 0),
    "dinov2_vitb14": (partial(write_meta_dinov2, model_name="vit_base_patch14_dinov2"),
                      "vit_base_patch14_dinov2", 56, {}, 1),
    "retfound_dinov2": (write_retfound_dinov2, "vit_large_patch14_dinov2", 70, {"image_size": 42}, 1),
    "retfound_mae": (write_retfound_mae, "vit_large_patch16_224", 32, {"image_size": 64}, 1),
    "mermed_fm": (write_mermed, "vit_base_patch16_224", 64, {}, 1),
    "retfound_green": (write_retfound_green, "vit_small_patch14_reg4_dinov2", 56, {}, 0),
}


@pytest.mark.parametrize("expert_id", list(RESAMPLE_CASES))
def test_position_embedding_is_resampled_to_the_expert_grid(expert_id, tmp_path):
    from timm.layers import resample_abs_pos_embed

    write, name, ckpt_size, extra, prefix = RESAMPLE_CASES[expert_id]
    path = write(tmp_path, img_size=ckpt_size)[0]
    expert = build_expert({"id": expert_id, "tiny": True, "checkpoint": path, **extra})
    assert expert.image_size != ckpt_size
    # Reference: the same source weights in a model at the expert's size, its positions resampled by timm.
    state = dict(timm_source(name, ckpt_size).state_dict())
    reference = timm_source(name, expert.image_size, seed=99)
    grid = reference.patch_embed.grid_size
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=prefix)
    reference.load_state_dict(state)
    _check_features(expert, lambda x: reference.forward_features(x)[:, reference.num_prefix_tokens:])


# --- BiomedCLIP (open_clip layout with an HF text tower)
def test_biomedclip_open_clip_folder(tmp_path):
    folder, reference, embedding = write_biomedclip(tmp_path)
    expert = build_expert({"id": "biomedclip", "tiny": True, "checkpoint": folder})
    _check_features(expert, reference)
    canvas = _canvas(32)
    with torch.no_grad():
        torch.testing.assert_close(expert.image_embedding(canvas),
                                   embedding(normalise(canvas, expert.mean, expert.std)), atol=ATOL, rtol=1e-4)
    report = expert.load_checkpoint(folder)
    assert "logit_scale" in report.dropped and "text.proj.0.weight" in report.dropped
    # The bare weight file works too (its config is found beside it).
    _check_features(build_expert({"id": "biomedclip", "tiny": True,
                                  "checkpoint": f"{folder}/open_clip_pytorch_model.bin"}), reference)


@pytest.mark.parametrize("problem", ["extra", "missing"])
def test_biomedclip_unknown_or_missing_key_is_refused(problem, tmp_path):
    def mutate(sd: dict) -> None:
        if problem == "extra":
            sd["visual.trunk.extra_scale"] = torch.zeros(3)
        else:
            del sd["visual.head.proj.weight"]

    folder = write_biomedclip(tmp_path, mutate)[0]
    with pytest.raises(ValueError, match="extra_scale" if problem == "extra" else r"head\.proj\.weight"):
        build_expert({"id": "biomedclip", "tiny": True, "checkpoint": folder})


def test_biomedclip_position_embedding_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    folder, _, _ = write_biomedclip(tmp_path)
    expert = build_expert({"id": "biomedclip", "tiny": True, "checkpoint": folder, "image_size": 64})
    state = dict(timm_source("vit_base_patch16_224", 32).state_dict())
    reference = timm_source("vit_base_patch16_224", 64, seed=5)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [4, 4], num_prefix_tokens=1)
    reference.load_state_dict(state)
    _check_features(expert, lambda x: reference.forward_features(x)[:, 1:])


def test_biomedclip_full_size_matches_open_clip_module_layout():
    """Our vision tower has exactly the keys and shapes of the one open_clip builds from BiomedCLIP's config."""
    from open_clip.model import _build_vision_tower

    with torch.device("meta"):
        theirs = _build_vision_tower(BIOMEDCLIP_CONFIG["model_cfg"]["embed_dim"],
                                     BIOMEDCLIP_CONFIG["model_cfg"]["vision_cfg"])
        ours = build_expert({"id": "biomedclip"})
    assert {k: tuple(v.shape) for k, v in ours.visual.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert (ours.num_tokens, ours.feature_dim, ours.patch_grid) == (196, 768, 14)


def test_biomedclip_hub_id_fails_offline_naming_the_id(hub_offline):
    with pytest.raises(CheckpointDownloadError, match="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"):
        build_expert({"id": "biomedclip", "tiny": True,
                      "checkpoint": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"})


# --- CLIP: OpenCLIP state dict (with text tower) and transformers save_pretrained folders
@pytest.mark.parametrize("layer", [-1, -2])
def test_clip_open_clip_checkpoint(layer, tmp_path):
    path, src = write_open_clip(tmp_path)
    expert = build_expert({"id": "clip", "tiny": True, "checkpoint": path, "options": {"layer": layer}})
    _check_features(expert, lambda x: open_clip_tokens(src, x, layer)[:, 1:])
    if layer == -1:
        # The class token after ln_post, projected, is OpenCLIP's image embedding.
        cls = build_expert({"id": "clip", "tiny": True, "checkpoint": path, "output": "cls"}).eval()
        canvas = _canvas(28)
        with torch.no_grad():
            torch.testing.assert_close(cls(canvas)[:, 0] @ src.visual.proj,
                                       src.encode_image(normalise(canvas, cls.mean, cls.std)), atol=ATOL, rtol=1e-4)


def test_clip_open_clip_folder_with_its_config(tmp_path):
    """A downloaded OpenCLIP folder describes its own architecture; no `tiny`, no model name needed."""
    import json

    path, src = write_open_clip(tmp_path)
    folder = tmp_path / "open-clip-folder"
    folder.mkdir()
    Path(path).rename(folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "vision_cfg": dict(image_size=28, patch_size=14, width=32, layers=2, head_width=16),
        "text_cfg": dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)}}))
    _check_features(build_expert({"id": "clip", "checkpoint": str(folder)}),
                    lambda x: open_clip_tokens(src, x)[:, 1:])


@pytest.mark.parametrize("checkpoint, options", [
    ("openai/clip-vit-large-patch14", {"backend": "hf"}),
    ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {}),
])
def test_clip_hub_ids_fail_offline_naming_the_id(hub_offline, checkpoint, options):
    repo = checkpoint.removeprefix("hf-hub:")
    with pytest.raises(CheckpointDownloadError, match=repo):
        build_expert({"id": "clip", "checkpoint": checkpoint, "options": options})


@pytest.mark.parametrize("problem", ["extra", "missing"])
def test_clip_open_clip_unknown_or_missing_key_is_refused(problem, tmp_path):
    def mutate(sd: dict) -> None:
        if problem == "extra":
            sd["visual.extra_scale"] = torch.zeros(3)
        else:
            del sd["visual.ln_post.weight"]

    path = write_open_clip(tmp_path, mutate)[0]
    with pytest.raises(ValueError, match="extra_scale" if problem == "extra" else r"ln_post\.weight"):
        build_expert({"id": "clip", "tiny": True, "checkpoint": path})


def test_clip_open_clip_position_embedding_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    path, src = write_open_clip(tmp_path, image_size=56)
    expert = build_expert({"id": "clip", "tiny": True, "checkpoint": path})
    assert expert.image_size == 28
    from expert_layouts import open_clip_source

    reference = open_clip_source(seed=3, image_size=28)
    state = dict(src.state_dict())
    state["visual.positional_embedding"] = resample_abs_pos_embed(
        state["visual.positional_embedding"][None], [2, 2], num_prefix_tokens=1)[0]
    reference.load_state_dict(state)
    _check_features(expert, lambda x: open_clip_tokens(reference, x)[:, 1:])


def _hf_reference(src, layer: int):
    def run(x: torch.Tensor) -> torch.Tensor:
        out = src.vision_model(pixel_values=x, output_hidden_states=True)
        hidden = src.vision_model.post_layernorm(out.last_hidden_state) if layer == -1 else out.hidden_states[layer]
        return hidden[:, 1:]

    return run


@pytest.mark.parametrize("layer", [-1, -2])
def test_clip_transformers_folder(layer, tmp_path):
    folder, src = write_hf_clip(tmp_path)
    expert = build_expert({"id": "clip", "tiny": True, "checkpoint": folder, "options": {"layer": layer}})
    assert type(expert).__name__ == "HFCLIPVisionExpert"
    report = expert.load_checkpoint(folder)
    assert "logit_scale" in report.dropped and "visual_projection.weight" in report.dropped
    _check_features(expert, _hf_reference(src, layer))


def test_clip_transformers_vision_only_folder(tmp_path):
    from transformers import CLIPVisionModel

    _, src = write_hf_clip(tmp_path)
    vision_only = CLIPVisionModel(src.config.vision_config)
    vision_only.load_state_dict({k.removeprefix("vision_model."): v for k, v in src.state_dict().items()
                                 if k.startswith("vision_model.")})
    vision_only.save_pretrained(tmp_path / "vision-only")
    expert = build_expert({"id": "clip", "checkpoint": str(tmp_path / "vision-only")})
    _check_features(expert, _hf_reference(src, -1))


@pytest.mark.parametrize("problem", ["extra", "missing"])
def test_clip_transformers_unknown_or_missing_key_is_refused(problem, tmp_path):
    def mutate(sd: dict) -> None:
        if problem == "extra":
            sd["vision_model.extra_scale"] = torch.zeros(3)
        else:
            del sd["vision_model.post_layernorm.weight"]

    folder = write_hf_clip(tmp_path, mutate)[0]
    with pytest.raises(ValueError, match="extra_scale" if problem == "extra" else r"post_layernorm\.weight"):
        build_expert({"id": "clip", "checkpoint": folder})


def test_clip_transformers_position_embedding_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    folder, src = write_hf_clip(tmp_path, image_size=56)
    expert = build_expert({"id": "clip", "checkpoint": folder, "image_size": 28})
    assert expert.image_size == 28 and expert.num_tokens == 4
    from expert_layouts import hf_clip_source

    reference = hf_clip_source(seed=4, image_size=28)
    state = dict(src.state_dict())
    key = "vision_model.embeddings.position_embedding.weight"
    state[key] = resample_abs_pos_embed(state[key][None], [2, 2], num_prefix_tokens=1)[0]
    reference.load_state_dict(state, strict=False)
    _check_features(expert, _hf_reference(reference, -1))


# --- timm:<name> keeps working, with timm's own conversion of foreign layouts
def test_timm_generic_plain_and_meta_layouts(tmp_path):
    src = timm_source("vit_small_patch16_224", 32)
    state = dict(src.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(10, 32), torch.randn(10)  # a classifier checkpoint
    torch.save({"state_dict": state}, tmp_path / "vit.pth")
    expert = build_expert({"id": "timm:vit_small_patch16_224", "tiny": True})
    report = expert.load_checkpoint(str(tmp_path / "vit.pth"))
    assert report.dropped == ["head.weight", "head.bias"]
    _check_features(expert, lambda x: src.forward_features(x)[:, 1:])

    path, reference = write_meta_dinov2(tmp_path, "vit_small_patch14_reg4_dinov2")
    _check_features(build_expert({"id": "timm:vit_small_patch14_reg4_dinov2", "tiny": True, "checkpoint": path}),
                    reference)


# --- Position embedding initialisation of a freshly built (not loaded) timm expert
def test_sincos_pos_embed_init_gives_every_patch_its_row_and_column():
    from timm.layers import build_sincos2d_pos_embed

    spec = {"id": "timm:vit_small_patch16_224", "tiny": True, "image_size": 64,
            "options": {"patch_size": 8, "embed_dim": 64, "num_heads": 4, "pos_embed_init": "sincos"}}
    expert = build_expert(spec)
    table = build_sincos2d_pos_embed([8, 8], dim=64)
    torch.testing.assert_close(expert.vit.pos_embed[0, expert.num_prefix_tokens:].detach(), table)


def test_unknown_pos_embed_init_is_refused():
    with pytest.raises(ValueError, match="pos_embed_init 'fourier' is not one of"):
        build_expert({"id": "timm:vit_small_patch16_224", "tiny": True, "options": {"pos_embed_init": "fourier"}})
