"""Registry, spec validation and output shapes of every family (tiny builds; full sizes on the meta device)."""
from __future__ import annotations

import pytest
import torch

from multimeditron.experts.base import ExpertSpec
from multimeditron.experts.registry import available_experts, build_expert

FAMILY_IDS = [e for e in available_experts() if not e.endswith("<name>")] + ["timm:vit_small_patch16_224"]

# id -> (image size, patch tokens, feature dim) at full size
FULL_SIZE = {
    "retfound_mae": (224, 196, 1024),
    "retfound_dinov2": (224, 256, 1024),
    "dinov2_vits14": (224, 256, 384),
    "dinov2_vitb14": (224, 256, 768),
    "dinov2_vitl14": (224, 256, 1024),
    "dinov2_vitg14": (224, 256, 1536),
    "dinov2_vits14_reg4": (224, 256, 384),
    "dinov2_vitb14_reg4": (224, 256, 768),
    "dinov2_vitl14_reg4": (224, 256, 1024),
    "dinov2_vitg14_reg4": (224, 256, 1536),
    "dinov3_vits16": (224, 196, 384),
    "dinov3_vitb16": (224, 196, 768),
    "dinov3_vitl16": (224, 196, 1024),
    "dinov3_vith16plus": (224, 196, 1280),
    "dinov3_vit7b16": (224, 196, 4096),
    "mermed_fm": (224, 196, 768),
    "retfound_green": (392, 784, 384),
    "biomedclip": (224, 196, 768),
    "clip": (224, 256, 1024),
}


def test_every_family_is_registered():
    assert set(FULL_SIZE) | {"timm:<name>"} == set(available_experts())


def test_unknown_id_lists_valid_ids():
    with pytest.raises(KeyError, match="unknown expert id 'retfound'.*biomedclip.*dinov2_vitb14.*timm:<name>"):
        build_expert({"id": "retfound"})


def test_unknown_spec_key_and_bad_output_raise():
    with pytest.raises(ValueError, match=r"unknown expert key\(s\) \['checkpoint_path'\]"):
        build_expert({"id": "retfound_mae", "checkpoint_path": "x.pth"})
    with pytest.raises(ValueError, match="output"):
        ExpertSpec.from_dict({"id": "retfound_mae", "output": "mean"})
    with pytest.raises(ValueError, match="cls_pool"):
        build_expert({"id": "retfound_mae", "tiny": True, "options": {"cls_pool": "max"}})
    with pytest.raises(ValueError, match="unknown option"):
        build_expert({"id": "clip", "tiny": True, "options": {"layers": -2}})
    with pytest.raises(ValueError, match="layer must be a negative"):
        build_expert({"id": "clip", "tiny": True, "options": {"layer": 1}})


@pytest.mark.parametrize("expert_id", FAMILY_IDS)
def test_output_shapes_for_patch_cls_all(expert_id):
    canvas = torch.rand(2, 3, 40, 40)  # any canvas size: each expert resizes to its own input
    shapes = {}
    for output in ("patch", "cls", "all"):
        expert = build_expert({"id": expert_id, "tiny": True, "output": output}).eval()
        with torch.no_grad():
            features = expert(canvas)
        assert features.shape == (2, expert.num_tokens, expert.feature_dim)
        shapes[output] = (expert.num_tokens, expert.patch_grid)
    patches, grid = shapes["patch"]
    assert grid is not None and grid * grid == patches
    assert shapes["cls"] == (1, None)
    assert shapes["all"][0] > patches and shapes["all"][1] is None


@pytest.mark.parametrize("expert_id", list(FULL_SIZE))
def test_full_size_dimensions(expert_id):
    # The meta device builds the real architectures without allocating their weights.
    with torch.device("meta"):
        expert = build_expert({"id": expert_id})
    size, patches, dim = FULL_SIZE[expert_id]
    assert (expert.image_size, expert.num_tokens, expert.feature_dim) == (size, patches, dim)
    assert expert.patch_grid ** 2 == patches


def test_normalisations():
    assert build_expert({"id": "retfound_green", "tiny": True}).mean == (0.5, 0.5, 0.5)
    assert build_expert({"id": "biomedclip", "tiny": True}).std == (0.26862954, 0.26130258, 0.27577711)
    assert build_expert({"id": "clip", "tiny": True}).mean == (0.48145466, 0.4578275, 0.40821073)
    assert build_expert({"id": "dinov3_vits16", "tiny": True}).mean == (0.485, 0.456, 0.406)
    custom = build_expert({"id": "timm:vit_small_patch16_224", "tiny": True,
                           "options": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    assert custom.std == (0.25, 0.25, 0.25)


def test_retfound_green_cls_is_mean_of_all_tokens():
    expert = build_expert({"id": "retfound_green", "tiny": True, "output": "cls"}).eval()
    x = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        tokens = expert.vit.forward_features(expert.preprocess(x))
        torch.testing.assert_close(expert(x)[:, 0], tokens.mean(dim=1))
