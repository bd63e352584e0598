"""The one hub-id rule, and that every loader and check that decides "local path or hub?" follows it."""
from __future__ import annotations

import pytest

from multimeditron.hub_ids import looks_like_hub_id, parse_hub_id


@pytest.mark.parametrize("value", ["Qwen/Qwen3-4B", "Qwen/Qwen2.5-0.5B", "hf-hub:timm/vit_small_patch16_224.augreg",
                                   "OpenMeditron/Meditron3-8B", "runs/stage2"])
def test_owner_name_is_a_hub_id(value):
    assert looks_like_hub_id(value)
    assert looks_like_hub_id(value, with_file=True)


@pytest.mark.parametrize("value", ["/data/train", "./data/x", "../data/x", "~/data/x", "data", "data/train.parquet",
                                   "ckpt/model.pth", "out/config.json", "data/*.parquet", "a\\b", "-x/y", "a//b",
                                   "hf-hub:", "hf-hub:/abs/path", ""])
def test_paths_are_not_hub_ids(value):
    assert not looks_like_hub_id(value)
    assert not looks_like_hub_id(value, with_file=True)


def test_a_file_inside_a_repository_only_where_files_are_asked_for():
    assert looks_like_hub_id("YukunZhou/RETFound_mae_natureCFP/RETFound_mae_natureCFP.pth", with_file=True)
    assert not looks_like_hub_id("data/train/part-0")  # a model folder or dataset is owner/name only
    assert parse_hub_id("hf-hub:owner/name/sub/w.pth") == ("owner/name", "sub/w.pth")
    assert parse_hub_id("owner/name") == ("owner/name", None)
    with pytest.raises(ValueError, match="not a hub id"):
        parse_hub_id("/abs/w.pth")


def test_the_run_check_and_the_dry_run_agree_with_the_rule(tmp_path):
    """Preflight and the dry run follow the hub-id rule of the readers: an `owner/name/file.pth` expert checkpoint
    and an `a/b/c` dataset are hub ids, not missing paths."""
    from multimeditron.config import DatasetEntry, parse_config
    from multimeditron.training.plan import _dataset_line
    from multimeditron.training.preflight import path_problems

    config = parse_config({
        "model": {"llm": "tiny-qwen3", "experts": [
            {"id": "timm:vit_small_patch16_224", "tiny": True, "checkpoint": "owner/repo/weights.pth"},
            {"id": "timm:vit_small_patch16_224", "tiny": True, "checkpoint": str(tmp_path / "missing.pth")}],
            "fusion": "avg"},
        "data": {"train": [{"path": "owner/dataset"}, {"path": "data/missing.parquet"}]},
        "stage": "alignment", "training_args": {"output_dir": str(tmp_path / "out")}})
    problems = path_problems(config)
    assert problems == [f"model.experts[1].checkpoint: {tmp_path / 'missing.pth'} does not exist",
                        "data.train[1].path: data/missing.parquet does not exist"]
    assert "hub id or missing" in _dataset_line(DatasetEntry("owner/dataset"))
    assert "MISSING locally" in _dataset_line(DatasetEntry("data/missing.parquet"))
