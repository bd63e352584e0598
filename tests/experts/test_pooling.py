"""`cls_pool` (what `finetune --pool` sets): every family pools its global output from the same token sequence its
`all` output gives, as the class token, the mean of the patch tokens or the mean of all tokens. Before, `biomedclip`
passed the option to timm (a TypeError) and `clip` refused it."""
from __future__ import annotations

import pytest
import torch

from multimeditron.experts.registry import build_expert

FAMILIES = ["biomedclip", "clip", "retfound_green", "retfound_mae", "retfound_dinov2", "mermed_fm", "dinov2_vits14",
            "dinov3_vits16", "timm:vit_small_patch16_224"]


@pytest.mark.parametrize("expert_id", FAMILIES)
def test_every_family_pools_its_global_output(expert_id):
    torch.manual_seed(0)
    tokens_expert = build_expert({"id": expert_id, "tiny": True, "output": "all"}).eval()
    pixels = torch.rand(2, 3, tokens_expert.image_size, tokens_expert.image_size)
    with torch.no_grad():
        tokens = tokens_expert(pixels)
        prefix = int(getattr(tokens_expert, "num_prefix_tokens", 1))
        expected = {"token": tokens[:, 0], "avg": tokens[:, prefix:].mean(1), "avg_all": tokens.mean(1)}
        for pool, want in expected.items():
            expert = build_expert({"id": expert_id, "tiny": True, "output": "cls", "options": {"cls_pool": pool}})
            expert.load_state_dict(tokens_expert.state_dict())
            got = expert.eval()(pixels)
            assert got.shape == (2, 1, tokens.shape[-1])
            assert torch.allclose(got[:, 0], want, atol=1e-5), (expert_id, pool)
    with pytest.raises(ValueError, match="cls_pool 'max' is not one of"):
        build_expert({"id": expert_id, "tiny": True, "options": {"cls_pool": "max"}})


@pytest.mark.parametrize("expert_id", ["biomedclip", "clip"])
def test_finetune_pool_works_for_the_clip_families(expert_id, tmp_path, capsys):
    from multimeditron.cli import main
    from tests.probing.conftest import write_folder

    data = write_folder(tmp_path / "images", {"train": 6, "val": 2, "test": 3})
    out = tmp_path / "run"
    assert main(["finetune", "--expert", expert_id, "--tiny", "--data", str(data), "--pool", "avg", "--adaptation",
                 "lp", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--bootstrap", "0", "--out",
                 str(out)]) == 0
    from multimeditron.experts.adapted import read_adapted_record

    assert read_adapted_record(out / "best")["spec"].options["cls_pool"] == "avg"
