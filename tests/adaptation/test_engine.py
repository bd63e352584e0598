"""What the engine gives every expert command: `report_to` (a TensorBoard event file when asked), one `error:` line
for a bad flag, a bad YAML key or a bad value in every command, and the dry run's plan."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multimeditron.cli import main
from tests.adaptation.conftest import TEXTURE_EXPERT


def test_report_to_tensorboard_writes_an_event_file(texture_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["finetune", "--expert", TEXTURE_EXPERT, "--data", str(texture_folder), "--epochs", "1",
                 "--batch-size", "16", "--warmup-epochs", "0", "--out", str(out),
                 "--set", "training_args.report_to=tensorboard"]) == 0
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def _data_for(command: str, texture_folder: Path, unlabelled_folder: Path, square_masks: Path) -> Path:
    return {"finetune": texture_folder, "probe": texture_folder, "adapt": unlabelled_folder,
            "segment": square_masks}[command]


@pytest.mark.parametrize("command,bad_key", [("finetune", "finetune.layer_decy"), ("adapt", "token_reconstruction.nois"),
                                             ("segment", "segment.decodr"), ("probe", "probe.kk")])
def test_bad_yaml_keys_and_values_give_one_error_line(command, bad_key, texture_folder, unlabelled_folder, square_masks,
                                                      tmp_path, capsys) -> None:
    data = _data_for(command, texture_folder, unlabelled_folder, square_masks)
    section, key = bad_key.split(".")
    recipe = {"data": {"path": str(data)}, section: {key: 1}}
    recipe.update({"experts": ["retfound_green"]} if command == "probe" else {"expert": {"spec": "retfound_green"}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    assert main([command, "--config", str(tmp_path / "bad.yaml"), "--tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'bad.yaml'}: {bad_key}: unknown key"), err
    # a value of the wrong type, through --set, names the key and the flag that sets it
    assert main([command, "--data", str(data), "--expert", "retfound_green", "--tiny",
                 "--set", "training_args.num_train_epochs=many" if command != "probe" else "probe.draws=many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("num_train_epochs" in err[0] or "probe.draws" in err[0])
    # a TrainingArguments key that does not exist
    if command != "probe":
        assert main([command, "--data", str(data), "--expert", "retfound_green", "--tiny",
                     "--set", "training_args.learning_rat=1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: training_args.learning_rat: not a transformers TrainingArguments field"]


@pytest.mark.parametrize("command", ["finetune", "adapt", "segment", "probe"])
def test_a_bad_flag_value_is_one_argparse_error_line(command, capsys) -> None:
    flag = {"finetune": "--epochs", "adapt": "--epochs", "segment": "--epochs", "probe": "--bootstrap"}[command]
    with pytest.raises(SystemExit) as stopped:  # argparse's exit, as `python -m multimeditron` ends with it
        main([command, flag, "abc"])
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0] and "Traceback" not in stderr


def test_help_shows_the_schema_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["finetune", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[training_args.num_train_epochs] (default: 50)" in text
    assert "[finetune.layer_decay] (default: 0.65)" in text and "[schedule.warmup_epochs] (default: 10.0)" in text
    assert "{finetune,lp,lora,bitfit}" in text  # choices read from the schema's Literal


def test_missing_expert_names_the_flag(texture_folder: Path, capsys) -> None:
    assert main(["finetune", "--data", str(texture_folder)]) == 2
    assert capsys.readouterr().err.strip() == "error: expert.spec (--expert): required to train (a SPEC)"


def test_a_missing_checkpoint_and_a_corrupt_image_are_one_error_line(texture_folder: Path, tmp_path: Path,
                                                                     capsys) -> None:
    import shutil

    assert main(["finetune", "--expert", "retfound_green:/no/such.pth", "--data", str(texture_folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: checkpoint '/no/such.pth' is neither an existing file or folder nor a hub id"]
    data = tmp_path / "data"
    shutil.copytree(texture_folder, data)
    (data / "train" / "vertical" / "broken.png").write_text("not an image")
    assert main(["probe", "--expert", "retfound_green", "--tiny", "--data", str(data), "--protocol", "knn",
                 "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 file(s) cannot be read as images" in err[0] and "broken.png (corrupt_image)" in err[0]


def test_min_lr_none_keeps_the_peak_rate_after_warm_up(tmp_path: Path) -> None:
    """`schedule.min_lr: null`: no decay (the published gate and CLIP scripts), whatever learning_rate is."""
    import torch

    from multimeditron.adaptation.engine import ExpertTrainer, Schedule
    from multimeditron.training.arguments import training_arguments

    layer = torch.nn.Linear(2, 2)
    args = training_arguments({"output_dir": str(tmp_path), "learning_rate": 3e-3, "num_train_epochs": 4,
                               "report_to": "none"})
    trainer = ExpertTrainer(model=layer, args=args, groups=[{"params": list(layer.parameters())}],
                            schedule=Schedule(warmup_epochs=1, min_lr=None))
    optimizer = trainer.create_optimizer()
    scheduler = trainer.create_scheduler(40, optimizer)
    rates = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[5] < 3e-3 and all(abs(r - 3e-3) < 1e-12 for r in rates[10:])
