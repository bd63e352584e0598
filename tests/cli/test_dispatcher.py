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


@pytest.mark.parametrize("command", [["eval", "--task", "mmd_slake"], ["generate", "--prompt", "hi"]])
def test_a_missing_model_folder_is_one_error_line(command, tmp_path, capsys):
    """A missing model folder is one `error:` line, not an OSError traceback from `inference.load_pretrained`."""
    missing = tmp_path / "no-such-model"
    assert main([*command, "--model", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: model folder {missing} does not exist\n"
    (tmp_path / "empty").mkdir()
    assert main([*command, "--model", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"error: model folder {tmp_path / 'empty'} holds no saved model (no config.json)\n"
    assert main([*command, "--model", "runs/missing"]) == 2  # owner/name shaped: the hub is tried (offline here)
    err = capsys.readouterr().err
    assert err.startswith("error: model folder runs/missing does not exist, and as a hub id it could not be loaded")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--task", "no_such_task"], "error: unknown task 'no_such_task'"),
    (["eval"], "error: --model and --task are required (or --list-tasks)"),
    (["eval", "--task", "synthetic_vqa,multimediset", "--data", "x"], "error: --data names one task's data"),
    (["generate", "--prompt", "hi", "--image", "no-such.png"], "error: --image: missing_image: image file"),
])
def test_eval_and_generate_option_errors_are_user_errors(argv, message, tmp_path, capsys):
    """A usage error is a `UsageError` (the dispatcher's `error:` line, and --debug), not a `SystemExit`."""
    from multimeditron.errors import UsageError

    argv = [*argv[:1], "--model", str(tmp_path), *argv[1:]] if argv != ["eval"] else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    with pytest.raises(UsageError):
        main([*argv, "--debug"])
