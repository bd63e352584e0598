"""The `multimeditron` dispatcher: subcommands, and the launcher arguments that arrive before them."""
from __future__ import annotations

import pytest
import yaml

from multimeditron.cli import main

CONFIG = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
          "data": {"train": [{"path": "data/somewhere"}]}, "stage": "alignment",
          "training_args": {"output_dir": "out"}}


@pytest.mark.parametrize("launcher_args", [["--local_rank=1"], ["--local_rank", "1"], ["--local-rank=0"]])
def test_deepspeed_launcher_rank_before_the_subcommand_is_accepted(launcher_args, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main([*launcher_args, "train", "--config", str(path), "--dry-run"]) == 0
    assert "stage: alignment" in capsys.readouterr().out


def test_unknown_subcommand_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["trian"])
    assert "invalid choice: 'trian'" in capsys.readouterr().err
