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


@pytest.mark.parametrize("command", ["eval", "generate", "check-dataset", "convert", "train"])
def test_a_user_error_is_one_line_without_traceback(command, monkeypatch, capsys):
    import importlib

    from multimeditron.cli import SUBCOMMANDS
    from multimeditron.data import DataError

    module = importlib.import_module(f"multimeditron.cli.{SUBCOMMANDS[command]}")

    def failing_run(args):
        raise DataError("dataset 'x' has no rows")

    monkeypatch.setattr(module, "run", failing_run)
    monkeypatch.setattr(module, "add_arguments", lambda parser: None)
    assert main([command]) == 2
    assert capsys.readouterr().err == "error: dataset 'x' has no rows\n"
    with pytest.raises(DataError):  # --debug: the traceback
        main([command, "--debug"])
