"""`train-gate`, `train-expert --objective clip` and `adapt --objective mermed` take broken inputs as the other expert
commands do: an unreadable file is one `error:` line naming it (or, with `--skip-bad-images`, left out and listed in
the results), `--threads` is taken, and a second run into the same `--out` is refused unless `--overwrite`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from multimeditron.cli import main
from tests.cli.test_expert_errors import one_error_line
from tests.probing.conftest import write_folder

GATE = ["--arch", "test_resnet", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--threads", "1"]
CLIP = ["--objective", "clip", "--expert", "clip", "--tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--threads", "1", "--set", "contrastive.eval_before=false"]
MERMED = ["--objective", "mermed", "--expert", "retfound_green", "--tiny", "--batch-size", "8", "--epochs", "1",
          "--warmup-epochs", "0", "--local-crops", "0", "--out-dim", "64", "--partition-size", "16", "--threads", "1",
          "--set", "mermed.hidden_dim=32", "--set", "mermed.bottleneck_dim=16",
          "--set", "mermed.warmup_teacher_temp_epochs=0"]


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    """A labelled folder (also read as unlabelled images) with a text file named .png among good images."""
    root = write_folder(tmp_path_factory.mktemp("mixture") / "images", {"train": 8, "val": 4, "test": 4})
    (root / "train" / "normal" / "notes.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    """MultiMediset caption rows whose first train image holds bytes that are no image."""
    from multimeditron.data.synthetic_captions import generate_caption_images

    data = generate_caption_images(None, 24, 8, 8, image_size=32)
    rows = data["train"].to_list()
    rows[0]["modalities"][0]["value"] = {"bytes": b"not an image", "path": None}
    data["train"] = type(data["train"]).from_list(rows, features=data["train"].features)
    root = tmp_path_factory.mktemp("captions") / "captions"
    data.save_to_disk(str(root))
    return root


def _refused(out: Path, command: str) -> list[dict]:
    if command == "adapt":
        return json.loads((out / "final" / "expert.json").read_text())["provenance"]["refused"]
    return json.loads((out / "results.json").read_text())["refused"]


@pytest.mark.parametrize("command", ["train-gate", "train-expert", "adapt"])
def test_unreadable_images_are_one_line_or_left_out_and_a_used_out_is_refused(command, corrupt, captions, tmp_path,
                                                                                capsys):
    data, flags, named = {"train-gate": (corrupt, GATE, "notes.png"), "train-expert": (captions, CLIP, "row 0"),
                          "adapt": (corrupt, MERMED, "notes.png")}[command]
    out = tmp_path / "out"
    args = [command, *flags, "--data", str(data), "--out", str(out)]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "1 file(s) cannot be read as images" in line and named in line and "--skip-bad-images" in line
    assert not out.exists()
    assert main([*args, "--skip-bad-images"]) == 0
    assert "left out 1 unreadable file(s)" in capsys.readouterr().out
    assert [r["reason"] for r in _refused(out, command)] == ["corrupt_image"]
    assert main([*args, "--skip-bad-images"]) == 2
    assert "holds an earlier run" in one_error_line(capsys)
