"""Embeddings: intermediate layers of the expert interface, the on-disk cache and its invalidation, aggregation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from multimeditron.data.labelled_images import read_labelled_folder
from multimeditron.experts.registry import build_expert
from multimeditron.probing import Embeddings, ProbeSettings, aggregate, build_probe_expert, embed, embed_splits
from multimeditron.probing.specs import parse_spec


@pytest.mark.parametrize("expert_id", ["dinov2_vits14", "retfound_green", "biomedclip", "dinov3_vits16"])
def test_encode_layers_ends_with_the_tokens_encode_selects(expert_id):
    expert = build_expert({"id": expert_id, "tiny": True, "output": "all"}).eval()
    pixels = expert.preprocess(torch.rand(2, 3, expert.image_size, expert.image_size))
    layers = expert.encode_layers(pixels, 4)
    assert len(layers) == 2  # tiny models have 2 blocks: "last 4" gives what there is
    torch.testing.assert_close(layers[-1], expert.encode(pixels))
    pooled = build_expert({"id": expert_id, "tiny": True, "output": "cls"})
    pooled.load_state_dict(expert.state_dict())
    torch.testing.assert_close(expert.pool_tokens(layers[-1]), pooled.eval().encode(pixels)[:, 0])


def test_experts_without_layers_say_so():
    expert = build_expert({"id": "clip", "tiny": True, "output": "cls"})
    assert not expert.supports_layers
    with pytest.raises(NotImplementedError):
        expert.encode_layers(torch.zeros(1, 3, expert.image_size, expert.image_size), 1)


def _settings(tmp_path, **kwargs) -> ProbeSettings:
    return ProbeSettings(cache_dir=tmp_path / "cache", progress=False, batch_size=16, **kwargs)


def test_cache_equals_recomputation_and_is_invalidated(folder_data, tmp_path):
    data = read_labelled_folder(folder_data)
    parsed = parse_spec("mermed_fm", tiny=True)
    expert = build_probe_expert(parsed)
    settings = _settings(tmp_path)
    first = embed_splits(expert, data, settings)
    assert len(settings.stats["computed"]) == 3 and "cache_hits" not in settings.stats
    again = embed_splits(expert, data, settings)
    assert len(settings.stats["cache_hits"]) == 3
    fresh = embed(expert, data.splits["test"].images, progress=False)
    for name, array in fresh.arrays().items():
        np.testing.assert_allclose(again["test"].arrays()[name], array, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(again["test"].arrays()[name], first["test"].arrays()[name])

    # a checkpoint with other weights: same id, same size, different embeddings -> recomputed
    checkpoint = tmp_path / "other.pth"
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in expert.vit.state_dict().items()}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, checkpoint)
    other = build_probe_expert(dataclasses.replace(parsed, spec=dataclasses.replace(parsed.spec,
                                                                                     checkpoint=str(checkpoint))))
    stats = _settings(tmp_path)
    changed = embed_splits(other, data, stats)
    assert len(stats.stats["computed"]) == 3
    assert not np.allclose(changed["test"].pooled, first["test"].pooled)

    # another input size: recomputed, at the new resolution
    bigger = build_probe_expert(dataclasses.replace(parsed, spec=dataclasses.replace(parsed.spec, image_size=48)))
    bigger.load_state_dict({k: v for k, v in expert.state_dict().items() if "pos_embed" not in k}, strict=False)
    stats = _settings(tmp_path)
    embed_splits(bigger, data, stats)
    assert len(stats.stats["computed"]) == 3

    # a damaged cache file is not used
    for path in (tmp_path / "cache").glob("*.safetensors"):
        path.write_bytes(b"garbage")
    stats = _settings(tmp_path)
    embed_splits(expert, data, stats)
    assert len(stats.stats["computed"]) == 3


def test_changed_image_invalidates_the_cache(tmp_path):
    from .conftest import write_folder

    root = write_folder(tmp_path / "img", {"train": 3, "test": 3})
    data = read_labelled_folder(root)
    expert = build_probe_expert(parse_spec("timm:vit_small_patch16_224", tiny=True))
    settings = _settings(tmp_path)
    embed_splits(expert, data, settings)
    target = root / "test" / "lesion" / "000.png"
    from PIL import Image

    Image.new("RGB", (24, 24), (10, 200, 30)).save(target)
    stats = _settings(tmp_path)
    embed_splits(expert, read_labelled_folder(root), stats)
    assert [s for _, s, _ in stats.stats["computed"]] == ["test"]  # train and val come from the cache


def test_aggregate_per_study_hand_computed():
    pooled = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0], [2.0, 2.0]], dtype=np.float32)
    cls_layers = np.stack([pooled, pooled * 2], axis=1)
    labels = np.array([1, 1, 0, 1, 0])
    groups = np.array(["b", "b", "a", "b", "a"])
    emb, group_labels, names = aggregate(Embeddings(pooled, cls_layers, pooled), labels, groups)
    assert names.tolist() == ["b", "a"]  # order of first appearance
    np.testing.assert_allclose(emb.pooled, [[4 / 3, 2.0], [6.0, 6.0]])
    assert emb.cls_layers.shape == (2, 2, 2)
    np.testing.assert_allclose(emb.cls_layers[:, 1], [[8 / 3, 4.0], [12.0, 12.0]])
    assert group_labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="group 'a'"):
        aggregate(Embeddings(pooled), np.array([1, 1, 0, 1, 1]), groups)
