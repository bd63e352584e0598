"""Adapted-expert folders (written by `finetune` / `adapt`): every family reloads its own weights from one, the
record supplies the architecture, and a spec that contradicts the record is refused with the field named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multimeditron.experts.adapted import RECORD_FILE, adapted_spec, save_adapted_expert
from multimeditron.experts.registry import build_expert, resolved_spec, spec_agrees


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("expert_id", ["biomedclip", "clip", "dinov3_vits16", "mermed_fm", "retfound_mae",
                                       "retfound_dinov2", "timm:vit_small_patch16_224"])
def test_every_family_reloads_an_adapted_folder(expert_id: str, tmp_path: Path) -> None:
    spec = {"id": expert_id, "tiny": True}
    expert = build_expert(spec)
    with torch.no_grad():
        for param in expert.parameters():
            param.add_(0.01)  # weights no fresh build has
    save_adapted_expert(expert, resolved_spec(spec, expert), tmp_path, {"objective": "test"})
    loaded = build_expert({"id": expert_id, "checkpoint": str(tmp_path)})  # `tiny` comes from the record
    assert _equal(loaded, expert)
    # The VLM builder's path: build without weights, then `load_checkpoint(folder)`.
    bare = build_expert({"id": expert_id, "checkpoint": str(tmp_path)}, load_checkpoint=False)
    assert not _equal(bare, expert)
    bare.load_checkpoint(str(tmp_path))
    assert _equal(bare, expert)


def test_record_fills_the_spec_and_refuses_contradictions(tmp_path: Path) -> None:
    spec = {"id": "timm:vit_small_patch16_224", "tiny": True, "image_size": 48, "options": {"cls_pool": "avg"}}
    expert = build_expert(spec)
    save_adapted_expert(expert, resolved_spec(spec, expert), tmp_path)
    record = json.loads((tmp_path / RECORD_FILE).read_text())
    assert record["spec"]["checkpoint"] is None and record["spec"]["output"] is None
    filled = adapted_spec({"id": spec["id"], "checkpoint": str(tmp_path), "output": "cls"})
    assert (filled.tiny, filled.image_size, filled.options, filled.output) == (True, 48, {"cls_pool": "avg"}, "cls")
    with pytest.raises(ValueError, match=r"options \['cls_pool'\] contradict"):
        adapted_spec({"id": spec["id"], "checkpoint": str(tmp_path), "options": {"cls_pool": "token"}})
    with pytest.raises(ValueError, match="tiny=.*contradicts|image_size=32 contradicts"):
        adapted_spec({"id": spec["id"], "checkpoint": str(tmp_path), "image_size": 32})
    # A stage-2 config repeating the short spec agrees with what the saved model stored.
    stored = resolved_spec({"id": spec["id"], "checkpoint": str(tmp_path)}, expert).to_dict()
    assert spec_agrees({"id": spec["id"], "checkpoint": str(tmp_path)}, stored)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"spec": {"id": "x"}}))
    with pytest.raises(ValueError, match="not an adapted-expert record"):
        build_expert({"id": spec["id"], "checkpoint": str(tmp_path)})
