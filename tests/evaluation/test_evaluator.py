"""The built-in evaluator: local copies in every supported layout, SLAKE's image sources, the synthetic VQA task
(per question type beside chance) and the `multimeditron eval` command."""
from __future__ import annotations

import base64
import json
import zipfile

import pytest
from datasets import DatasetDict

from multimeditron.cli import main
from multimeditron.data.report import DataError
from multimeditron.evaluation import TASKS_DIR
from multimeditron.evaluation.benchmarks import get_benchmark
from multimeditron.evaluation.data import decode_image, load_table
from multimeditron.evaluation.evaluator import evaluate_synthetic, markdown_table
from multimeditron.inference import load_pretrained
from tests.evaluation.conftest import png


def test_local_copies_load_from_every_layout(task_data, tmp_path):
    rows = load_table(task_data["mmd_pathvqa"], None)
    assert len(rows) == 4
    snapshot = tmp_path / "snapshot" / "data"  # a hub snapshot: split names in the file names
    snapshot.mkdir(parents=True)
    rows.to_parquet(str(snapshot / "test-00000-of-00001.parquet"))
    rows.select(range(1)).to_parquet(str(snapshot / "train-00000-of-00001.parquet"))
    DatasetDict({"train": rows.select(range(2)), "test": rows}).save_to_disk(str(tmp_path / "dict"))
    rows.save_to_disk(str(tmp_path / "single"))
    for source in (snapshot.parent, tmp_path / "dict", tmp_path / "single"):
        assert load_table(source, "test")["answer"] == rows["answer"]
    assert len(load_table(next((tmp_path / "single").glob("*.arrow")), None)) == 4
    with pytest.raises(DataError, match="does not exist"):  # the error training's loader gives
        load_table(tmp_path / "missing.parquet", "test")


def test_hub_failure_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.delenv("MMD_PATHVQA_DATA", raising=False)
    with pytest.raises(RuntimeError, match=r"\$MMD_PATHVQA_DATA"):
        get_benchmark("mmd_pathvqa").load()
    with pytest.raises(ValueError, match="no hub copy"):
        get_benchmark("synthetic_vqa").load()


def test_slake_keeps_english_rows_and_finds_images_by_name(task_data, tmp_path, monkeypatch):
    bench = get_benchmark("mmd_slake")
    rows = bench.load(task_data["mmd_slake"])
    assert set(rows["q_lang"]) == {"en"} and len(rows) == 4
    doc = {**rows[0], "image": None}
    folder = tmp_path / "imgs" / "xmlab2"
    folder.mkdir(parents=True)
    (folder / "source.jpg").write_bytes(png(3))
    monkeypatch.setenv("MMD_SLAKE_IMAGES", str(tmp_path))
    assert bench.images(doc)[0].size == (40, 36)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as archive:
        archive.writestr("imgs/xmlab2/source.jpg", png(3))
    monkeypatch.setenv("MMD_SLAKE_IMAGES", str(tmp_path / "imgs.zip"))
    assert bench.images(doc)[0].size == (40, 36)


def test_gmai_prompt_lists_only_present_options_and_images_decode_from_base64(task_data):
    bench = get_benchmark("mmd_gmai_mmbench")
    doc = bench.load(task_data["mmd_gmai_mmbench"])[1]
    question = bench.question(doc)
    assert "D. Ultrasound" in question and "E." not in question and question.endswith("directly.")
    encoded = base64.b64encode(png(1)).decode()
    assert decode_image(f"data:image/png;base64,{encoded}").size == decode_image(encoded).size == (40, 36)


def test_task_list_and_tasks_dir(capsys):
    assert main(["eval", "--list-tasks"]) == 0
    listing = capsys.readouterr().out
    for name in ("mmd_gmai_mmbench", "mmd_slake", "mmd_pathvqa", "synthetic_vqa", "$MMD_SLAKE_DATA"):
        assert name in listing
    assert main(["eval", "--tasks-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(TASKS_DIR)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    from multimeditron.data.synthetic import generate_synthetic_vqa

    directory = tmp_path_factory.mktemp("synthetic")
    # num_train=1: datasets 5.2 cannot load_from_disk a DatasetDict holding an empty split
    generate_synthetic_vqa(directory, num_train=1, num_test=10, seed=0, image_size=32)
    return str(directory)


def test_synthetic_scoring_reads_every_question_type_of_the_real_schema(synthetic):
    from multimeditron.data.synthetic import CHANCE_LEVELS, QUESTION_TYPES

    bench = get_benchmark("synthetic_vqa")
    rows = bench.load(synthetic)
    records = [bench.score(doc, doc["answer"]) for doc in rows]  # an oracle scores 100 everywhere
    summary = bench.summarize(records)
    assert summary["accuracy"] == 100.0 and set(summary["per_type"]) == set(QUESTION_TYPES)
    for kind, metrics in summary["per_type"].items():
        assert metrics["chance"] == pytest.approx(100 * CHANCE_LEVELS[kind]) and metrics["n"] == 2
    mc = next(doc for doc in rows if doc["choices"])
    letter = mc["answer"]
    option_text = mc["choices"]["ABCD".index(letter)]
    assert bench.score(mc, f"{letter}. {option_text}")["correct"] and bench.score(mc, option_text)["correct"]
    [user] = bench.messages(rows[0])
    assert [part["type"] for part in user["content"]] == ["image", "text"]


def test_synthetic_evaluation_and_eval_command_agree(checkpoint, synthetic, tmp_path, capsys):
    model, processor = load_pretrained(checkpoint)
    metrics = evaluate_synthetic(model, processor, DatasetDict.load_from_disk(synthetic), batch_size=4,
                                 progress=False)
    assert metrics["n"] == 10 and 0 <= metrics["accuracy"] <= 100 and 20 < metrics["chance"] < 50
    out = tmp_path / "synthetic.json"
    assert main(["eval", "--model", checkpoint, "--task", "synthetic_vqa", "--data", synthetic, "--batch-size", "3",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| synthetic_vqa / count |" in table and "| task | n | accuracy |" in table
    [saved] = json.loads(out.read_text())["results"]
    assert saved["metrics"] == metrics and len(saved["samples"]) == 10


def test_markdown_table_marks_empty_groups():
    table = markdown_table([{"task": "mmd_pathvqa", "metrics": {"accuracy": 50.0, "closed_accuracy": 50.0,
                                                                 "open_accuracy": None, "n": 2}}])
    assert "| mmd_pathvqa | 2 | 50.0 | 50.0 | n/a |  |" in table
