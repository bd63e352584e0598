"""`eval --task multimediset` on your own MultiMediset data (last assistant turn, closed/open, per question type,
relative image paths) and `--image-ablation` (blank, noise and another sample's image)."""
from __future__ import annotations

import json
import re

import pytest
import torch
from datasets import Dataset, DatasetDict

from multimeditron.cli import main
from multimeditron.evaluation.benchmarks import get_benchmark
from multimeditron.evaluation.evaluator import ABLATIONS, evaluate_task
from multimeditron.inference import load_pretrained
from multimeditron.model.processing import MultiMeditronProcessor
from tests.conftest import random_image
from tests.evaluation.conftest import png


def _row(turns: list[tuple[str, str]], images: list, kind: str) -> dict:
    return {"modalities": [{"type": "image", "value": value} for value in images],
            "conversations": [{"role": role, "content": text} for role, text in turns], "kind": kind}


def write_set(directory, answers: list[str]) -> None:
    """Four test rows: embedded and relative-path images, a multi-turn row, yes/no and open references."""
    (directory / "imgs").mkdir(parents=True, exist_ok=True)
    random_image(seed=7, width=30).save(directory / "imgs" / "scan.png")
    rows = [
        _row([("user", "<|image|>\nIs there a lesion?"), ("assistant", answers[0])],
             [{"bytes": png(1), "path": None}], "presence"),
        _row([("user", "<|image|>\nWhich organ is shown?"), ("assistant", answers[1])],
             [{"bytes": None, "path": "imgs/scan.png"}], "organ"),
        _row([("system", "Be brief."), ("user", "<|image|>\nDescribe it."), ("assistant", "A scan."),
              ("user", "Is it normal?"), ("assistant", answers[2])], [{"bytes": png(2), "path": None}], "presence"),
        _row([("user", "<|image|> <|image|>\nSame side?"), ("assistant", answers[3])],
             [{"bytes": png(3), "path": None}, {"bytes": png(4), "path": None}], "organ"),
    ]
    train = [_row([("user", "<|image|>\nQ?"), ("assistant", "x")], [{"bytes": png(5), "path": None}], "organ")]
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(rows)}).save_to_disk(str(directory))


@pytest.fixture(scope="module")
def model_and_set(checkpoint, tmp_path_factory):
    """The tiny model and a set whose references are rigged: rows 1 and 2 (open) get what the model replies, row 3
    keeps a reference it never gives, row 0 has the yes/no reference "no"."""
    model, processor = load_pretrained(checkpoint)
    directory = tmp_path_factory.mktemp("multimediset") / "my_set"
    write_set(directory, ["no", "zzz", "yyy", "qqq"])
    replies = [s["reply"] for s in evaluate_task(model, processor, "multimediset", data=str(directory),
                                                 progress=False)["samples"]]
    assert replies[1].strip() and replies[2].strip(), replies
    write_set(directory, ["no", replies[1], replies[2], "qqq"])
    return model, processor, directory, replies


def test_scores_the_last_assistant_turn_per_question_type(model_and_set, tmp_path, capsys, checkpoint):
    model, processor, directory, replies = model_and_set
    out = tmp_path / "result.json"
    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(directory), "--split", "test",
                 "--question-type-column", "kind", "--out", str(out)]) == 0
    [result] = json.loads(out.read_text())["results"]
    samples = result["samples"]
    assert [s["reply"] for s in samples] == replies  # the context is the turns before the last assistant turn
    flags = [s["correct"] for s in samples]
    assert flags[1:] == [True, True, False]
    assert flags[0] == replies[0].lower().startswith("no")
    assert [s["closed"] for s in samples] == [True, False, False, False]
    metrics = result["metrics"]
    assert metrics["n"] == 4 and metrics["accuracy"] == pytest.approx(100 * sum(flags) / 4)
    assert metrics["open_accuracy"] == pytest.approx(200 / 3) and metrics["closed_accuracy"] == 100.0 * flags[0]
    assert metrics["per_type"]["organ"]["accuracy"] == 50.0 and metrics["per_type"]["organ"]["n"] == 2
    assert metrics["per_type"]["presence"]["accuracy"] == pytest.approx(50.0 * (flags[0] + 1))
    table = capsys.readouterr().out
    assert "| multimediset / organ | 2 | 50.0 |" in table


def test_relative_paths_resolve_against_image_base_dir_when_given(model_and_set, tmp_path, checkpoint, capsys):
    _, _, directory, _ = model_and_set
    # not in the given base folder, though next to the data: refused, one `error:` line naming the file
    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(directory),
                 "--image-base-dir", str(tmp_path), "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: missing_image: " in err and "scan.png" in err and "Traceback" not in err




def test_the_data_placeholder_is_read_as_training_reads_it(model_and_set, tmp_path):
    """The benchmark detects the data's placeholder as training does (`data.attachment_token: auto`), so
    LLaVA-style `<image>` rows are read, not refused as holding 0 placeholders."""
    model, processor, directory, replies = model_and_set
    table = DatasetDict.load_from_disk(str(directory))["test"].select(range(2))
    llava = tmp_path / "llava"
    table.map(lambda row: {"conversations": [{**turn, "content": turn["content"].replace("<|image|>", "<image>")}
                                             for turn in row["conversations"]]}).save_to_disk(str(llava))
    result = evaluate_task(model, processor, "multimediset", data=str(llava), image_base_dir=directory,
                           progress=False)
    assert [s["reply"] for s in result["samples"]] == replies[:2]
    with pytest.raises(ValueError, match=re.escape("holds 0 <|image|> placeholder(s) but the row has 1 image")):  # what the old default did
        evaluate_task(model, processor, "multimediset", data=str(llava), image_base_dir=directory, progress=False,
                      attachment_token="<|image|>")
def test_bad_options_are_refused_before_loading_the_model(tmp_path):
    from multimeditron.errors import UsageError

    with pytest.raises(UsageError, match="question-type-column applies to the multimediset task"):
        main(["eval", "--model", str(tmp_path), "--task", "mmd_pathvqa", "--question-type-column", "x", "--debug"])
    with pytest.raises(KeyError, match="no column 'nope'"):
        get_benchmark("multimediset", question_type_column="nope").score(
            {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "a")
    with pytest.raises(ValueError, match="nothing to score"):
        get_benchmark("multimediset").messages({"modalities": [], "conversations": [{"role": "user",
                                                                                      "content": "q"}]})


def test_image_ablation_replaces_every_image_and_reports_each_kind(model_and_set, monkeypatch, capsys, checkpoint):
    _, _, directory, _ = model_and_set
    seen: list[torch.Tensor] = []
    original = MultiMeditronProcessor.__call__

    def record(self, *args, **kwargs):
        batch = original(self, *args, **kwargs)
        seen.append(batch["pixel_values"])
        return batch

    monkeypatch.setattr(MultiMeditronProcessor, "__call__", record)
    out = directory.parent / "ablation.json"
    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(directory), "--batch-size", "8",
                 "--image-ablation", "--max-new-tokens", "4", "--out", str(out)]) == 0
    # one batch per run (4 rows), in the same row order: real, then each ablation
    assert len(seen) == 1 + len(ABLATIONS)
    real, pixels = seen[0], dict(zip(ABLATIONS, seen[1:]))
    assert pixels["blank"].shape == real.shape and pixels["blank"].abs().max() == 0
    assert not any(torch.equal(a, b) for a, b in zip(pixels["noise"], real))
    # another sample's image: each replacement is a real image of a different row, never the row's own
    assert not any(torch.equal(a, b) for a, b in zip(pixels["other"], real))
    assert all(any(torch.equal(a, b) for b in real) for a in pixels["other"])
    [result] = json.loads(out.read_text())["results"]
    assert set(result["ablation"]) == set(ABLATIONS)
    assert all(metrics["n"] == 4 for metrics in result["ablation"].values())
    table = capsys.readouterr().out
    assert "| task | real images | blank image | noise image | another sample's image | chance |" in table
    assert f"| multimediset | {result['metrics']['accuracy']:.1f} |" in table


def test_missing_data_and_a_misspelt_column_are_refused_before_the_model_loads(model_and_set, checkpoint, tmp_path,
                                                                               capsys, monkeypatch):
    """Before: a ValueError traceback without --data; a KeyError after every answer was generated for the column."""
    _, _, directory, _ = model_and_set

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("multimeditron.inference.load_pretrained", no_model)
    monkeypatch.delenv("MMD_MULTIMEDISET_DATA", raising=False)
    assert main(["eval", "--model", checkpoint, "--task", "multimediset"]) == 2
    assert capsys.readouterr().err == ("error: --task multimediset has no hub copy: pass --data PATH or set "
                                       "MMD_MULTIMEDISET_DATA\n")
    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(directory),
                 "--question-type-column", "knd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --question-type-column knd: multimediset has no such column; its columns: [")
    assert "'kind'" in err and err.count("\n") == 1


def test_out_naming_a_folder_writes_results_json_inside_it(model_and_set, checkpoint, tmp_path, capsys):
    _, _, directory, _ = model_and_set
    folder = tmp_path / "results"
    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(directory), "--limit", "1",
                 "--out", f"{folder}/"]) == 0
    assert (folder / "results.json").is_file()
    assert f"results in {folder / 'results.json'}" in capsys.readouterr().out
