"""Checkpoint reading and strict loading: files, folders, shards, hub ids offline, safe unpickling, key surgery."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from multimeditron.experts.checkpoints import (
    CheckpointDownloadError,
    drop_keys,
    flatten_block_chunks,
    load_state_dict_checked,
    read_checkpoint,
    resample_pos_embed,
    resolve_checkpoint,
    strip_prefix,
    unwrap_state_dict,
)

EXECUTED: list[str] = []


def _record_execution() -> None:
    EXECUTED.append("ran")


class Payload:
    """An object whose unpickling would run code (here: harmless, but a real attack would not be)."""

    def __reduce__(self):
        return (_record_execution, ())


def _weights() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}


def test_reads_safetensors_and_pth_files(tmp_path):
    weights = _weights()
    save_file(weights, tmp_path / "w.safetensors")
    torch.save(weights, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        got = read_checkpoint(str(tmp_path / name))
        assert got.keys() == weights.keys() and torch.equal(got["a.weight"], weights["a.weight"])


def test_pickled_object_is_refused_without_running_it(tmp_path):
    torch.save({"a.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        read_checkpoint(str(tmp_path / "evil.pth"))
    assert EXECUTED == []


def test_training_args_namespace_is_allowed(tmp_path):
    torch.save({"model": _weights(), "args": argparse.Namespace(lr=1e-3, arch="vit"), "epoch": 3},
               tmp_path / "train.pth")
    state, entry = unwrap_state_dict(read_checkpoint(str(tmp_path / "train.pth")))
    assert entry == "model" and set(state) == {"a.weight", "a.bias"}


def test_folder_finds_its_weight_file(tmp_path):
    torch.save(_weights(), tmp_path / "checkpoint-best.pth")
    (tmp_path / "notes.txt").write_text("not weights")
    assert resolve_checkpoint(str(tmp_path)) == [tmp_path / "checkpoint-best.pth"]
    save_file(_weights(), tmp_path / "model.safetensors")  # a preferred name wins over the others
    assert resolve_checkpoint(str(tmp_path)) == [tmp_path / "model.safetensors"]


def test_folder_with_ambiguous_weight_files_asks_for_one(tmp_path):
    torch.save(_weights(), tmp_path / "a.pth")
    torch.save(_weights(), tmp_path / "b.pth")
    with pytest.raises(ValueError, match="several weight files"):
        resolve_checkpoint(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no weight file"):
        resolve_checkpoint(str(empty))


def test_sharded_folder_is_merged(tmp_path):
    save_file({"a.weight": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.zeros(2)}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
    assert set(read_checkpoint(str(tmp_path))) == {"a.weight", "b.weight"}


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError):
        read_checkpoint("weights/model.pth")


@pytest.mark.parametrize("hub_id", ["YukunZhou/RETFound_mae_natureCFP", "hf-hub:timm/vit_small_patch16_224.augreg_in21k",
                                    "facebook/dinov2-small/model.safetensors"])
def test_hub_id_offline_fails_naming_the_id(hub_offline, hub_id):
    repo = "/".join(hub_id.removeprefix("hf-hub:").split("/")[:2])
    with pytest.raises(CheckpointDownloadError, match=repo):
        read_checkpoint(hub_id)


def test_unwrap_prefers_the_named_entry_and_rejects_non_tensors():
    teacher, student = _weights(), _weights()
    state, entry = unwrap_state_dict({"student": student, "teacher": teacher, "epoch": 1}, entries=("teacher",))
    assert entry == "teacher" and state["a.weight"] is teacher["a.weight"]
    state, entry = unwrap_state_dict({"model": {"state_dict": teacher}})
    assert entry == "model.state_dict"
    with pytest.raises(ValueError, match="non-tensor entries"):
        unwrap_state_dict({"a.weight": torch.zeros(1), "step": 3})
    with pytest.raises(ValueError, match="no state dict found"):
        unwrap_state_dict({"epoch": 1, "config": {"lr": 1}})


def test_key_surgery_helpers():
    sd = {"backbone.blocks.0.x": torch.zeros(1), "dino_head.w": torch.zeros(1), "backbone.mask_token": torch.zeros(1)}
    sd = strip_prefix(sd, "backbone.")
    kept, dropped = drop_keys(sd, prefixes=("dino_head.",), names=("mask_token",))
    assert set(kept) == {"blocks.0.x"} and sorted(dropped) == ["dino_head.w", "mask_token"]
    chunked = {"blocks.0.0.norm.weight": 0, "blocks.1.7.norm.weight": 1, "norm.weight": 2}
    assert set(flatten_block_chunks(chunked)) == {"blocks.0.norm.weight", "blocks.7.norm.weight", "norm.weight"}


def test_resample_keeps_prefix_tokens_and_accepts_unbatched():
    pos = torch.randn(1, 2 + 16, 8)  # 2 prefix tokens + a 4x4 grid
    out = resample_pos_embed(pos, (2, 2), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 4, 8) and torch.equal(out[:, :2], pos[:, :2])
    flat = torch.randn(1 + 9, 8)  # OpenCLIP / HF CLIP layout (N, D)
    assert resample_pos_embed(flat, (4, 4), num_prefix_tokens=1).shape == (17, 8)
    with pytest.raises(ValueError, match="not a square grid"):
        resample_pos_embed(torch.randn(1, 1 + 10, 8), (2, 2), num_prefix_tokens=1)


def test_strict_load_names_missing_unexpected_and_misshaped_keys():
    module = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    good = {k: v.clone() for k, v in module.state_dict().items()}
    report = load_state_dict_checked(module, good, "good.pth", dropped=["head.w"])
    assert report.dropped == ["head.w"] and not report.missing and not report.unexpected

    with pytest.raises(ValueError, match=r"missing keys \['1.bias'\].*unexpected keys \['2.weight'\]"):
        load_state_dict_checked(module, {**{k: v for k, v in good.items() if k != "1.bias"},
                                         "2.weight": torch.zeros(3)}, "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*0\.weight"):
        load_state_dict_checked(module, {**good, "0.weight": torch.zeros(4, 2)}, "bad.pth")
    # An allow-listed key may be missing; nothing else.
    report = load_state_dict_checked(module, {k: v for k, v in good.items() if not k.startswith("1.")},
                                     "partial.pth", allowed_missing=("1.",))
    assert sorted(report.missing) == ["1.bias", "1.weight"]
