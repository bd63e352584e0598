"""`multimeditron convert`: LLaVA JSON/JSONL and RETFound-style image folders -> MultiMediset Arrow, from tiny
fixtures written here; bad rows are named by index (or path) and fail the command unless --skip-bad."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from multimeditron.cli import main
from multimeditron.data.convert import BadRowsError, ConversionError, convert_image_folder, convert_llava


def write_image(path: Path, color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), color).save(path, format=fmt)
    return path.read_bytes()


def turn(source: str, text: str) -> dict[str, str]:
    return {"from": source, "value": text}


GOOD_ROWS = [
    {"id": "one", "image": "a.png", "conversations": [turn("human", "<image>\nWhat colour?"), turn("gpt", "red")]},
    {"id": "two", "image": ["a.png", "sub/b.jpg"],
     "conversations": [turn("system", "Be brief."), turn("human", "Compare <image> with <image>."),
                       turn("gpt", "Different."), turn("human", "Sure?"), turn("gpt", "Yes.")]},
    {"id": "text-only", "conversations": [turn("human", "Hello"), turn("gpt", "Hi")]},
]
BAD_ROWS = [  # appended after GOOD_ROWS: indexes 3, 4, 5, 6, 7
    {"id": "gone", "image": "missing.png", "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]},
    {"id": "count", "image": "a.png", "conversations": [turn("human", "no placeholder"), turn("gpt", "y")]},
    {"id": "role", "image": "a.png", "conversations": [turn("doctor", "<image>"), turn("gpt", "y")]},
    {"id": "where", "image": "a.png", "conversations": [turn("human", "hi"), turn("gpt", "<image>")]},
    {"id": "literal", "conversations": [turn("human", "<|image|> sneaked in"), turn("gpt", "y")]},
]


@pytest.fixture()
def llava(tmp_path: Path) -> dict:
    images = tmp_path / "images"
    return {"dir": images, "a": write_image(images / "a.png", (255, 0, 0)),
            "b": write_image(images / "sub" / "b.jpg", (0, 0, 255), fmt="JPEG"), "tmp": tmp_path}


def write_json(path: Path, rows: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def test_llava_json_round_trip(llava: dict) -> None:
    source = write_json(llava["tmp"] / "rows.json", GOOD_ROWS)
    report = convert_llava(source, llava["dir"], llava["tmp"] / "out", progress=False)
    assert report.total == 3 and report.bad == []
    loaded = load_from_disk(str(llava["tmp"] / "out"))
    assert isinstance(loaded, Dataset) and len(loaded) == 3
    first, second, third = loaded
    assert first["conversations"] == [{"role": "user", "content": "<|image|>\nWhat colour?"},
                                      {"role": "assistant", "content": "red"}]
    assert first["modalities"] == [{"type": "image", "value": {"bytes": llava["a"], "path": None}}]
    assert [m["value"]["bytes"] for m in second["modalities"]] == [llava["a"], llava["b"]]  # placeholder order
    assert [t["role"] for t in second["conversations"]] == ["system", "user", "assistant", "user", "assistant"]
    assert second["conversations"][1]["content"] == "Compare <|image|> with <|image|>."
    assert third["modalities"] == [] and third["conversations"][0] == {"role": "user", "content": "Hello"}


def test_llava_cli_jsonl_with_custom_token(llava: dict, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_json(llava["tmp"] / "rows.jsonl", GOOD_ROWS[:2])
    out = llava["tmp"] / "out"
    code = main(["convert", "llava", "--json", str(source), "--images", str(llava["dir"]), "--out", str(out),
                 "--attachment-token", "<img>"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.strip().splitlines()[-1] == f"wrote 2 rows to {out}"
    assert "llava: writing" in captured.err  # the tqdm bar
    assert load_from_disk(str(out))[1]["conversations"][1]["content"] == "Compare <img> with <img>."


def test_llava_bad_rows_are_named_and_fail(llava: dict, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_json(llava["tmp"] / "rows.json", GOOD_ROWS + BAD_ROWS)
    out = llava["tmp"] / "out"
    code = main(["convert", "llava", "--json", str(source), "--images", str(llava["dir"]), "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "row 3 (id gone): missing image" in err
    assert "row 4 (id count): 0 image placeholder(s) for 1 image(s)" in err
    assert "row 5 (id role): unknown role 'doctor'" in err
    assert "row 6 (id where): image placeholder in a 'gpt' turn" in err
    assert "row 7 (id literal): 1 image placeholder(s) for 0 image(s)" in err
    assert "5 of 8 rows are bad" in err and "row 0" not in err

    code = main(["convert", "llava", "--json", str(source), "--images", str(llava["dir"]), "--out", str(out),
                 "--no-progress", "--skip-bad"])
    captured = capsys.readouterr()
    assert code == 0 and len(load_from_disk(str(out))) == 3
    assert "skipped 5 bad rows, kept 3" in captured.err and "row 3 (id gone)" in captured.err
    assert captured.out.strip().splitlines()[-1] == f"wrote 3 rows to {out}; skipped 5 bad rows"


def test_llava_broken_jsonl_line_and_library_error(llava: dict) -> None:
    source = llava["tmp"] / "rows.jsonl"
    source.write_text(json.dumps(GOOD_ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(BadRowsError) as error:
        convert_llava(source, llava["dir"], llava["tmp"] / "out", progress=False)
    (bad,) = error.value.bad
    assert str(bad) == "row 1: invalid JSON on line 3: Expecting property name enclosed in double quotes"
    with pytest.raises(ConversionError, match="no such file"):
        convert_llava(llava["tmp"] / "absent.json", llava["dir"], llava["tmp"] / "out", progress=False)


def test_output_is_never_clobbered_by_accident(llava: dict, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_json(llava["tmp"] / "rows.json", GOOD_ROWS)
    out = llava["tmp"] / "out"
    args = ["convert", "llava", "--json", str(source), "--images", str(llava["dir"]), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0 and len(load_from_disk(str(out))) == 3
    precious = llava["tmp"] / "precious"
    (precious / "notes.txt").parent.mkdir()
    (precious / "notes.txt").write_text("keep me")
    args[args.index(str(out))] = str(precious)
    assert main([*args, "--overwrite"]) == 2 and "not a saved dataset" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.fixture()
def folder(tmp_path: Path) -> dict:
    root = tmp_path / "retina"
    files = {
        "train/AMD/1.png": (200, 0, 0), "train/AMD/2.JPG": (190, 0, 0), "train/normal/3.jpeg": (0, 200, 0),
        "val/normal/4.png": (0, 190, 0), "test/DR/5.png": (0, 0, 200), "test/normal/6.png": (0, 0, 190),
    }
    data = {name: write_image(root / name, color, "JPEG" if name.lower().endswith(("jpg", "jpeg")) else "PNG")
            for name, color in files.items()}
    (root / "train" / "README.txt").write_text("stray")  # ignored: not under a class folder
    (root / "train" / "normal" / ".DS_Store").write_text("junk")  # ignored: hidden
    return {"root": root, "bytes": data, "tmp": tmp_path}


def test_image_folder_cli(folder: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = folder["tmp"] / "out"
    code = main(["convert", "image-folder", "--root", str(folder["root"]), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.strip().splitlines()[-1] == f"wrote 6 rows (train 3, val 1, test 2) to {out}"
    assert "image-folder: writing" in captured.err and "ignored 1 files directly under train/" in captured.err
    loaded = load_from_disk(str(out))
    assert isinstance(loaded, DatasetDict) and list(loaded) == ["train", "val", "test"]
    assert loaded["train"]["answer"] == ["AMD", "AMD", "normal"] and loaded["test"]["answer"] == ["DR", "normal"]
    row = loaded["test"][0]
    assert row["choices"] == ["AMD", "DR", "normal"] and row["question_type"] == "classification"
    assert row["conversations"] == [
        {"role": "user", "content": "<|image|>\nWhich class does this image show? Options: AMD, DR, normal. "
                                    "Answer with the class name."},
        {"role": "assistant", "content": "DR"}]
    assert row["modalities"] == [{"type": "image", "value": {"bytes": folder["bytes"]["test/DR/5.png"], "path": None}}]


@pytest.mark.parametrize("name", ["valid", "dev"])
def test_image_folder_knows_every_spelling_of_val(folder: dict, name: str) -> None:
    (folder["root"] / "val").rename(folder["root"] / name)  # the split keeps its folder's name
    report = convert_image_folder(folder["root"], folder["tmp"] / "out", progress=False, notes=lambda _: None)
    assert list(load_from_disk(str(report.out_dir))) == ["train", name, "test"]
    (folder["root"] / "val" / "normal").mkdir(parents=True)  # now two folders name val: which one is a guess
    with pytest.raises(ConversionError, match="both name the val split"):
        convert_image_folder(folder["root"], folder["tmp"] / "again", progress=False, notes=lambda _: None)


@pytest.mark.parametrize(("question", "expected"), [
    ("Diagnosis among {classes}?", "Diagnosis among AMD, DR, normal?"),
    ("What is the diagnosis?", "What is the diagnosis? Options: AMD, DR, normal."),
])
def test_image_folder_custom_question(folder: dict, question: str, expected: str) -> None:
    convert_image_folder(folder["root"], folder["tmp"] / "out", question=question, attachment_token="<img>",
                         progress=False, notes=lambda _: None)
    row = load_from_disk(str(folder["tmp"] / "out"))["val"][0]
    assert row["conversations"][0]["content"] == f"<img>\n{expected}"


def test_image_folder_refuses_a_question_training_would_refuse(folder: dict) -> None:
    # a second placeholder in the question: every row would fail training's placeholder check
    with pytest.raises(ConversionError, match="placeholder"):
        convert_image_folder(folder["root"], folder["tmp"] / "out", question="Compare with <img>: which class?",
                             attachment_token="<img>", progress=False, notes=lambda _: None)
    assert not (folder["tmp"] / "out").exists()


def test_image_folder_bad_image_and_layout(folder: dict, capsys: pytest.CaptureFixture[str]) -> None:
    (folder["root"] / "train" / "AMD" / "broken.png").write_bytes(b"not an image")
    out = folder["tmp"] / "out"
    args = ["convert", "image-folder", "--root", str(folder["root"]), "--out", str(out), "--no-progress"]
    assert main(args) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "train/AMD/broken.png: unreadable image" in err and "1 of 7 rows are bad" in err
    assert main([*args, "--skip-bad"]) == 0
    assert "wrote 6 rows (train 3, val 1, test 2)" in capsys.readouterr().out
    flat = folder["tmp"] / "flat"
    write_image(flat / "AMD" / "1.png", (1, 2, 3))
    assert main(["convert", "image-folder", "--root", str(flat), "--out", str(folder["tmp"] / "o2")]) == 2
    assert "none of the split folders" in capsys.readouterr().err


def test_converters_read_what_training_reads_and_refuse_what_it_refuses(llava: dict, capsys) -> None:
    import numpy as np

    from tests.data.test_images import dicom_bytes

    images = llava["dir"]
    Image.new("P", (6, 5), 1).save(images / "clip.gif", transparency=0)
    (images / "scan.dcm").write_bytes(dicom_bytes(np.arange(30, dtype=np.uint16).reshape(5, 6)))
    (llava["tmp"] / "outside.png").write_bytes(llava["a"])
    rows = [{"id": "gif", "image": "clip.gif", "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]},
            {"id": "dicom", "image": "scan.dcm", "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]},
            {"id": "up", "image": "../outside.png", "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]},
            {"id": "abs", "image": str(llava["tmp"] / "outside.png"),
             "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]}]
    source = write_json(llava["tmp"] / "rows.json", rows)
    with pytest.raises(BadRowsError) as caught:
        convert_llava(source, images, llava["tmp"] / "out", progress=False)
    assert [(bad.row_id, bad.reason.split(" '")[0]) for bad in caught.value.bad] == \
        [("up", "image outside the image folder"), ("abs", "image outside the image folder")]
    report = convert_llava(source, images, llava["tmp"] / "out", skip_bad=True, progress=False)
    assert report.total == 2
    saved = load_from_disk(str(llava["tmp"] / "out"))
    assert saved[1]["modalities"][0]["value"]["bytes"] == (images / "scan.dcm").read_bytes()

    # nothing convertible: a non-zero exit and no 0-row dataset
    only_bad = write_json(llava["tmp"] / "bad.json", rows[2:])
    out = llava["tmp"] / "empty_out"
    assert main(["convert", "llava", "--json", str(only_bad), "--images", str(images), "--out", str(out),
                 "--skip-bad", "--no-progress"]) == 2
    assert not out.exists() and "no convertible rows" in capsys.readouterr().err
    folder = llava["tmp"] / "folder"
    (folder / "train" / "cls").mkdir(parents=True)
    (folder / "train" / "cls" / "broken.png").write_bytes(b"not an image")
    assert main(["convert", "image-folder", "--root", str(folder), "--out", str(out), "--skip-bad",
                 "--no-progress"]) == 2
    assert not out.exists() and "no readable images" in capsys.readouterr().err
    (folder / "train" / "cls" / "scan.dcm").write_bytes((images / "scan.dcm").read_bytes())
    (folder / "train" / "cls" / "clip.gif").write_bytes((images / "clip.gif").read_bytes())
    report = convert_image_folder(folder, out, skip_bad=True, progress=False)
    assert report.rows == {"train": 2} and len(report.bad) == 1


@pytest.mark.parametrize(("turns", "reason"), [
    ([turn("human", "<image> x"), turn("gpt", "  ")], "empty_assistant_turn: assistant turn 1 is empty"),
    ([turn("human", "<image> x"), turn("gpt", "y"), turn("system", "late"), turn("human", "z"), turn("gpt", "w")],
     "misplaced_system_turn: turn 2 is a system turn"),
    ([turn("human", "<image> x")], "no_assistant_turn"),
])
def test_llava_rows_that_training_refuses_are_not_written(llava: dict, turns: list, reason: str) -> None:
    """One chat-row check: before, `convert` wrote these rows and training then refused them."""
    from multimeditron.data.convert import RowError, llava_row

    with pytest.raises(RowError, match=reason):
        llava_row({"image": "a.png", "conversations": turns}, llava["dir"], read_images=False)
