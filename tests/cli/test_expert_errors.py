"""The expert commands tried as a new user would (issue 24): every mistake below is one `error: ...` line (exit 2)
before anything heavy runs, never a traceback; unreadable files can be left out and are then listed in the results;
a run never mixes its files with an earlier run's, and `--resume` continues only the run it started as."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multimeditron.cli import main
from tests.probing.conftest import write_folder

TINY = ["--expert", "retfound_green", "--tiny"]
FAST = ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--bootstrap", "20"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("expert_errors") / "images", {"train": 8, "val": 3, "test": 4})


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    """A labelled folder with a text file named .png and a truncated PNG among good images."""
    root = write_folder(tmp_path_factory.mktemp("corrupt") / "images", {"train": 8, "val": 3, "test": 4})
    (root / "train" / "normal" / "notes.png").write_text("not an image")
    (root / "train" / "lesion" / "cut.png").write_bytes((root / "train" / "lesion" / "000.png").read_bytes()[:60])
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    from tests.cli.test_relative_paths import _segmentation

    return _segmentation(tmp_path_factory.mktemp("pairs") / "pairs")


@pytest.mark.parametrize("command", ["probe", "finetune", "segment"])
def test_a_missing_checkpoint_is_one_line(command, images, pairs, tmp_path, capsys):
    data = pairs if command == "segment" else images
    assert main([command, "--expert", "retfound_green:/no/such/weights.pth", "--tiny", "--data", str(data),
                 "--out", str(tmp_path / "out")]) == 2
    assert "checkpoint '/no/such/weights.pth' is neither an existing file" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec,message", [
    ("{id: retfound_green, tny: true}", "unknown expert key(s) ['tny']"),
    ("{id: retfound_green, tiny: true", "not a valid YAML mapping"),
    ("{id: retfound_green, options: {cls_pol: avg}}", "retfound_green"),
])
def test_a_broken_yaml_spec_is_one_line(spec, message, images, capsys):
    for command in (["probe"], ["finetune", *FAST]):
        assert main([*command, "--expert", spec, "--data", str(images), "--dry-run"]) == 2
        assert message in one_error_line(capsys)


@pytest.mark.parametrize("command", ["probe", "finetune", "adapt"])
def test_unreadable_images_are_named_or_left_out_and_listed(command, corrupt, tmp_path, capsys):
    extra = {"probe": ["--protocol", "knn", "--bootstrap", "20"], "finetune": FAST,
             "adapt": ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8"]}[command]
    out = tmp_path / "out"
    assert main([command, *TINY, "--data", str(corrupt), *extra, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "2 file(s) cannot be read as images" in line and "notes.png" in line and "cut.png" in line
    assert "--skip-bad-images" in line and not out.exists()
    assert main([command, *TINY, "--data", str(corrupt), *extra, "--out", str(out), "--skip-bad-images"]) == 0
    assert "left out 2 unreadable file(s)" in capsys.readouterr().out
    if command == "adapt":
        refused = json.loads((out / "final" / "expert.json").read_text())["provenance"]["refused"]
    else:
        refused = json.loads((out / "results.json").read_text())["refused"]
        assert "notes.png" in (out / "results.md").read_text()
    assert sorted(Path(r["file"]).name for r in refused) == ["cut.png", "notes.png"]
    assert {r["reason"] for r in refused} == {"corrupt_image"}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_file_that_passes_the_check_but_does_not_decode_is_one_line(workers, images, tmp_path, capsys):
    import shutil

    from tests.data.test_bad_samples import damaged_pixels_png

    root = tmp_path / "images"
    shutil.copytree(images, root)
    (root / "test" / "lesion" / "damaged.png").write_bytes(damaged_pixels_png())
    # with workers the error comes back wrapped in the worker's traceback text: still one line
    assert main(["probe", *TINY, "--data", str(root), "--protocol", "knn", "--no-cache", "--workers", workers]) == 2
    assert "damaged.png: corrupt_image" in one_error_line(capsys)
    if workers == "0":  # --skip-bad-images decodes every file up front: this one is left out like the others
        out = tmp_path / "out"
        assert main(["probe", *TINY, "--data", str(root), "--protocol", "knn", "--bootstrap", "0", "--no-cache",
                     "--skip-bad-images", "--out", str(out)]) == 0
        refused = json.loads((out / "results.json").read_text())["refused"]
        assert [Path(r["file"]).name for r in refused] == ["damaged.png"]


@pytest.mark.parametrize("flags,message", [
    (["--intensity", "foo"], "intensity window 'foo'"),
    (["--k", "0"], "k must be a non-empty list of numbers >= 1"),
])
def test_probe_settings_are_refused_before_embedding(flags, message, images, tmp_path, capsys):
    assert main(["probe", *TINY, "--data", str(images), *flags, "--out", str(tmp_path / "out")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_warm_up_longer_than_the_run_is_refused(images, capsys):
    assert main(["finetune", *TINY, "--data", str(images), "--epochs", "8", "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert "schedule.warmup_epochs (--warmup-epochs): 10 warm-up epochs are longer than the run (8" in line
    assert main(["finetune", *TINY, "--data", str(images), "--epochs", "8", "--warmup-epochs", "1",
                 "--dry-run"]) == 0


def test_expert_names_are_unique_and_the_same_expert_twice_is_refused(images, tmp_path, capsys):
    for run in ("a", "b"):
        assert main(["finetune", *TINY, "--data", str(images), *FAST, "--out", str(tmp_path / run)]) == 0
    out = tmp_path / "probe"
    assert main(["probe", "--expert", str(tmp_path / "a" / "best"), "--expert", str(tmp_path / "b" / "best"),
                 "--data", str(images), "--protocol", "knn", "--bootstrap", "0", "--out", str(out)]) == 0
    names = [run["expert"] for run in json.loads((out / "results.json").read_text())["runs"]]
    assert names == ["retfound_green:a/best", "retfound_green:b/best"]
    assert len(list((out / "plots").glob("*_roc.png"))) == 2  # one plot each, none overwritten
    capsys.readouterr()
    assert main(["probe", "--expert", str(tmp_path / "a" / "best"), "--expert", str(tmp_path / "a" / "best"),
                 "--data", str(images)]) == 2
    assert "is given twice" in one_error_line(capsys)


def test_a_fresh_out_per_run_or_overwrite(images, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", *TINY, "--data", str(images), *FAST, "--out", str(out)]
    assert main(args) == 0
    (out / "plots" / "stale_from_an_old_run.png").write_bytes(b"")
    capsys.readouterr()
    assert main(args) == 2
    assert "holds an earlier run" in one_error_line(capsys) and (out / "results.json").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "plots" / "stale_from_an_old_run.png").exists()  # nothing of the old run is left
    # --eval writes where --out says, never into the checkpoint folder; without --out it prints only
    before = sorted(p.name for p in out.iterdir())
    assert main(["finetune", "--eval", "--checkpoint", str(out), "--data", str(images), "--bootstrap", "20"]) == 0
    assert "| expert | protocol |" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == before
    capsys.readouterr()
    # a folder that is not a run folder is never emptied
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    assert main([*args[:-1], str(other), "--overwrite"]) == 2
    assert "not a run folder" in one_error_line(capsys) and (other / "thesis.tex").is_file()


@pytest.mark.parametrize("command", [
    ["finetune", *TINY], ["probe", *TINY], ["adapt", *TINY], ["adapt", *TINY, "--objective", "mermed"],
    ["segment", *TINY], ["train-gate"], ["train-expert", "--objective", "clip", "--expert", "clip", "--tiny"],
])
def test_an_earlier_run_in_out_is_refused_before_the_data_is_read(command, tmp_path, capsys):
    # the data path does not exist: the error is about --out, so the folder was checked first
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "results.json").write_text("{}")
    assert main([*command, "--data", str(tmp_path / "no_such_data"), "--out", str(out)]) == 2
    assert "holds an earlier run" in one_error_line(capsys)


def test_resume_continues_only_the_run_it_started_as(images, tmp_path, capsys, monkeypatch):
    import shutil

    from transformers import TrainerCallback

    from multimeditron.adaptation import finetune as finetune_module

    out = tmp_path / "run"
    args = ["finetune", *TINY, "--data", str(images), "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "8",
            "--bootstrap", "0", "--out", str(out)]

    class Stop(TrainerCallback):
        def on_save(self, *a, **k):
            raise KeyboardInterrupt("stopped after the first epoch")

    original = finetune_module.finetune
    with monkeypatch.context() as patched:
        patched.setattr(finetune_module, "finetune", lambda *a, **k: original(*a, **{**k, "callbacks": [Stop()]}))
        with pytest.raises(KeyboardInterrupt):
            main(args)
    capsys.readouterr()
    for changed, named in ((["--adaptation", "lora"], "finetune.adaptation: finetune -> lora"),
                           (["--epochs", "3"], "training_args.num_train_epochs: 2.0 -> 3.0")):
        assert main([*args, *changed, "--resume"]) == 2
        assert named in one_error_line(capsys)
    other = tmp_path / "other"
    shutil.copytree(images, other)
    (other / "train" / "normal" / "extra.png").write_bytes((images / "train" / "normal" / "000.png").read_bytes())
    assert args[4] == "--data"
    assert main([*args[:5], str(other), *args[6:], "--resume"]) == 2
    assert "data (train): the images differ" in one_error_line(capsys)
    assert main([*args, "--resume", "--threads", "1"]) == 0  # threads may change: they do not change the result
    assert f"resuming from {out / 'checkpoint-2'} (after epoch 1 of 2" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 2  # finished: nothing to continue
    assert "has finished; nothing to continue" in one_error_line(capsys)


def test_a_failed_run_leaves_no_folder(pairs, tmp_path, capsys):
    out = tmp_path / "seg"
    # clip gives no intermediate patch tokens: refused once the run starts, after the data and expert checks
    assert main(["segment", "--expert", "clip", "--tiny", "--data", str(pairs), "--epochs", "1", "--out",
                 str(out)]) == 2
    assert "intermediate patch tokens" in one_error_line(capsys)
    assert not out.exists()


def test_every_expert_command_shows_defaults_and_help(capsys):
    import argparse
    import importlib

    from multimeditron.cli import SUBCOMMANDS

    for command in ("probe", "finetune", "adapt", "segment", "train-gate", "train-expert"):
        parser = argparse.ArgumentParser()
        importlib.import_module(f"multimeditron.cli.{SUBCOMMANDS[command]}").add_arguments(parser)
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help and len(action.help.split("[")[0].strip()) > 3, (command, action.option_strings)
        text = parser.format_help()
        assert "--threads N" in text and "--overwrite" in text
        if command != "probe":
            assert "(default: 0)" in " ".join(text.split()) and "--resume" in text
    parser = argparse.ArgumentParser()
    importlib.import_module("multimeditron.cli.finetune").add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "[schedule.warmup_epochs] (default: 10.0)" in text  # the recipe's own default, not the section class's
    assert "--adaptation {finetune,lp,lora,bitfit}" in text and "[training_args.num_train_epochs] (default: 50)" in text


def test_threads_sets_torch_and_the_blas_pools(images, capsys):
    from threadpoolctl import threadpool_info

    try:
        assert main(["probe", *TINY, "--data", str(images), "--threads", "2", "--dry-run"]) == 0
        assert torch.get_num_threads() == 2
        assert all(pool["num_threads"] == 2 for pool in threadpool_info())
        capsys.readouterr()
        assert main(["probe", *TINY, "--data", str(images), "--threads", "0", "--dry-run"]) == 2
        assert "threads must be at least 1" in one_error_line(capsys)
    finally:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)  # the suite's setting (tests/conftest.py)
        threadpool_limits(1)


def test_each_epoch_is_one_line_that_stays(images, tmp_path, capsys):
    assert main(["finetune", *TINY, "--data", str(images), "--epochs", "2", "--warmup-epochs", "0", "--batch-size",
                 "8", "--bootstrap", "0", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("[finetune] epoch ")]
    assert [line.split(":")[0] for line in lines] == ["[finetune] epoch 1/2", "[finetune] epoch 2/2"]
    assert all("loss" in line and "val score" in line for line in lines) and "{'loss'" not in printed
