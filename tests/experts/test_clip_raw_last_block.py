"""CLIP `options.post_norm: false`: the raw last block, as the published MultiMeditron read CLIP features
(`vision_model(x).last_hidden_state[:, 1:]`, no post-LayerNorm), for transformers and OpenCLIP towers."""
from __future__ import annotations

import pytest
import torch
from expert_layouts import normalise, write_hf_clip, write_open_clip

from multimeditron.experts.registry import build_expert


def _canvas(size: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_hf_clip_raw_last_block_is_the_published_last_hidden_state(tmp_path):
    folder, src = write_hf_clip(tmp_path)
    raw = build_expert({"id": "clip", "checkpoint": folder, "options": {"post_norm": False}}).eval()
    normed = build_expert({"id": "clip", "checkpoint": folder}).eval()
    canvas = _canvas(raw.image_size)
    x = normalise(canvas, raw.mean, raw.std)
    published = src.vision_model(pixel_values=x).last_hidden_state[:, 1:]  # what the published modality used
    torch.testing.assert_close(raw(canvas), published, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(normed(canvas), src.vision_model.post_layernorm(published), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(raw(canvas), normed(canvas), atol=1e-3)


@torch.no_grad()
def test_open_clip_raw_last_block_skips_ln_post(tmp_path):
    path, src = write_open_clip(tmp_path)
    raw = build_expert({"id": "clip", "tiny": True, "checkpoint": path, "options": {"post_norm": False}}).eval()
    canvas = _canvas(raw.image_size)
    visual = src.visual
    hidden = visual._embeds(normalise(canvas, raw.mean, raw.std))
    for block in visual.transformer.resblocks:  # every block, then no ln_post
        hidden = block(hidden) if visual.transformer.batch_first else block(hidden.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(raw(canvas), hidden[:, 1:], atol=1e-5, rtol=1e-4)


def test_post_norm_must_be_a_boolean():
    with pytest.raises(ValueError, match="post_norm must be true or false"):
        build_expert({"id": "clip", "tiny": True, "options": {"post_norm": "no"}})
