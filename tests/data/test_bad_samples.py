"""Every kind of bad row reaches the report with its row index (or stops the run naming it), also from workers."""
from __future__ import annotations

import struct
import zlib

import datasets
import pytest
import torch

from multimeditron.cli import main
from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import (
    DataError,
    SFTCollator,
    build_sft_datasets,
)
from multimeditron.data.schema import conversation_features, image_modality, make_row
from tests.data.conftest import png_bytes, tiny, vqa_row


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0")) + \
        _chunk(b"IEND", b"")


def damaged_pixels_png() -> bytes:
    """Chunks with valid CRCs (so the cheap check passes) around a broken compressed stream: fails only on decode."""
    data = png_bytes(seed=5)
    out, position = data[:8], 8
    while position < len(data):
        length = struct.unpack(">I", data[position:position + 4])[0]
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        out += _chunk(kind, body[:2] + bytes(b ^ 0x5A for b in body[2:]) if kind == b"IDAT" else body)
        position += 12 + length
    return out


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def planted(tmp_path):
    """(dataset folder, {row: reason}) with one bad row per reason among good rows."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.png").write_bytes(png_bytes(9))
    (tmp_path / "outside.png").write_bytes(png_bytes(9))
    image = image_modality(png_bytes())
    rows, bad = [], {}

    def add(row, reason=None):
        if reason:
            bad[len(rows)] = reason
        rows.append(row)

    add(vqa_row())
    add(make_row([image], [user("<|image|> Hi"), {"role": "doctor", "content": "x"}, assistant("a")]), "unknown_role")
    add(make_row([image], [user("<|image|> Hi"), assistant("  ")]), "empty_assistant_turn")
    add(make_row([image], [user("<|image|> Hi")]), "no_assistant_turn")
    add(make_row([image], [user("<|image|> <|image|> Hi"), assistant("a")]), "placeholder_count_mismatch")
    add(make_row([image_modality(b"garbage")], [user("<|image|> Hi"), assistant("a")]), "corrupt_image")
    add(make_row([image_modality(path="absent.png")], [user("<|image|> Hi"), assistant("a")]), "missing_image")
    add(make_row([image_modality(path="../outside.png")], [user("<|image|> Hi"), assistant("a")]),
        "image_path_outside_base_dir")
    add(make_row([image], [user("<|image|> Hi"), assistant("a"), {"role": "system", "content": "s"},
                           user("more"), assistant("b")]), "misplaced_system_turn")
    add(make_row([image_modality(path="ok.png")], [user("<|image|> Hi"), assistant("fine")]))
    add(make_row([image], [user("<|image|> Hi"), assistant("a"), user(" "), assistant("b")]), "empty_user_turn")
    add(make_row([image], [user("<|image|> Hi"), assistant("see <|image|>")]), "placeholder_in_assistant_turn")
    add(make_row([{"type": "audio", "value": {"bytes": b"x", "path": None}}], [user("<|image|>"), assistant("a")]),
        "unsupported_modality")
    add(make_row([image_modality(bomb_png())], [user("<|image|> Hi"), assistant("a")]), "image_too_large")
    add({"modalities": [], "conversations": None}, "bad_schema")
    add(make_row([image], [user("<|image|> Hi"), assistant("word " * 400)]), "too_long")  # needs the model
    datasets.Dataset.from_list(rows, features=conversation_features()).save_to_disk(tmp_path / "d")
    return tmp_path / "d", bad


def test_every_reason_reaches_the_report(tmp_path):
    _, processor = tiny("tiny-qwen3")
    folder, bad = planted(tmp_path)
    # Nearly every row is bad here: lift the stop on the refused share (tests/data/test_placeholders.py covers it).
    section = DataSection(train=[DatasetEntry(str(folder))], max_sequence_length=128, on_bad_sample="skip",
                          max_bad_sample_share=1.0)
    data = build_sft_datasets(section, processor, seed=0)
    assert len(data.train) == 2 and data.report.total == len(bad)
    assert data.report.counts == {reason: 1 for reason in bad.values()}
    for row, reason in bad.items():
        assert data.report.examples[reason] == [(str(folder), row)]
    summary = data.report.summary()
    assert f"bad samples skipped: {len(bad)}" in summary and "unknown_role: 1" in summary


def test_error_mode_names_dataset_row_and_reason(tmp_path):
    _, processor = tiny("tiny-qwen3")
    folder, bad = planted(tmp_path)
    with pytest.raises(DataError) as caught:
        build_sft_datasets(DataSection(train=[DatasetEntry(str(folder))], max_sequence_length=128), processor, 0)
    error = caught.value
    assert (error.dataset, error.row, error.reason) == (str(folder), 1, "unknown_role")
    assert str(folder) in str(error) and "row 1: unknown_role" in str(error) and f"{len(bad) - 1} more" in str(error)


def test_check_dataset_names_every_bad_row(tmp_path, capsys):
    folder, bad = planted(tmp_path)
    assert main(["check-dataset", str(folder), "--decode"]) == 1
    lines = capsys.readouterr().out.splitlines()
    named = {int(line.split(":")[0].split()[1]): line.split(":")[1].strip()
             for line in lines if line.startswith("row ")}
    expected = {row: reason for row, reason in bad.items() if reason != "too_long"}  # length needs a tokenizer
    assert named == expected
    assert f"{len(expected)} bad" in "\n".join(lines) and "  corrupt_image: 1" in lines
    # without --decode images are only located: damaged bytes go unnoticed, a missing file does not
    main(["check-dataset", str(folder)])
    quick = capsys.readouterr().out
    assert "row 6: missing_image" in quick and "row 5:" not in quick


def test_check_dataset_clean_and_published_placeholder(tmp_path, capsys):
    rows = [vqa_row(token="<|reserved_special_token_0|>", seed=i) for i in range(3)]
    datasets.Dataset.from_list(rows, features=conversation_features()).to_parquet(tmp_path / "d.parquet")
    assert main(["check-dataset", str(tmp_path / "d.parquet"), "--decode",
                 "--attachment-token", "<|reserved_special_token_0|>"]) == 0
    assert "3 rows checked, 0 bad" in capsys.readouterr().out
    # the default, `auto`, detects the published placeholder as training does, and says so
    assert main(["check-dataset", str(tmp_path / "d.parquet")]) == 0
    out = capsys.readouterr().out
    assert "image placeholder <|reserved_special_token_0|> (detected from its rows" in out
    assert "3 rows checked, 0 bad" in out
    assert main(["check-dataset", str(tmp_path / "d.parquet"), "--attachment-token", "<|image|>"]) == 1
    assert "placeholder_count_mismatch: 3" in capsys.readouterr().out


def worker_dataset(tmp_path, mode: str):
    rows = [vqa_row(seed=0), make_row([image_modality(damaged_pixels_png())],
                                      [user("<|image|> Hi"), assistant("a")]), vqa_row(seed=2)]
    datasets.Dataset.from_list(rows, features=conversation_features()).save_to_disk(tmp_path / "w")
    _, processor = tiny("tiny-qwen3")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "w"))], max_sequence_length=128, on_bad_sample=mode)
    return build_sft_datasets(section, processor, seed=0), processor


def test_worker_side_skip_reaches_the_report_from_the_workers(tmp_path):
    data, processor = worker_dataset(tmp_path, "skip")
    assert len(data.train) == 3 and data.report.total == 0  # the damage is invisible to the cheap check
    loader = torch.utils.data.DataLoader(data.train, batch_size=3, num_workers=2,
                                         collate_fn=SFTCollator(processor, packing=False))
    for batch in loader:
        assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values"}  # model inputs only
        assert batch["input_ids"].shape[0] == 3 and batch["pixel_values"].shape[0] == 3  # replaced, not dropped
    report = data.collect_skipped()
    assert report.counts == {"corrupt_image": 1}
    assert report.examples["corrupt_image"] == [(str(tmp_path / "w"), 1)]
    assert data.collect_skipped().counts == {"corrupt_image": 1}  # collected once, not twice


def test_worker_side_error_names_the_row(tmp_path):
    data, processor = worker_dataset(tmp_path, "error")
    loader = torch.utils.data.DataLoader(data.train, batch_size=3, collate_fn=SFTCollator(processor, False))
    with pytest.raises(DataError, match="row 1: corrupt_image"):
        next(iter(loader))



def test_a_thin_image_is_counted_once_not_warned_at_every_load(tmp_path):
    """Before: a `ThinImageWarning` per image each time the loader read it (every epoch, every worker)."""
    import warnings

    from multimeditron.data.report import THIN_IMAGE
    from multimeditron.model.image_processing import ThinImageWarning

    _, processor = tiny("tiny-qwen3")
    thin = make_row([image_modality(png_bytes(seed=1, size=(400, 2)))],
                    [user("<|image|>\nWhat is shown?"), assistant("A line.")])
    datasets.Dataset.from_list([thin, vqa_row()], features=conversation_features()).save_to_disk(str(tmp_path / "d"))
    data = build_sft_datasets(DataSection(train=[DatasetEntry(str(tmp_path / "d"))], max_sequence_length=128),
                              processor, 0)
    assert data.report.modified == {THIN_IMAGE: 1}  # counted once for the run, in the report it prints
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs
            for i in range(len(data.train)):
                data.train[i]
    assert not [w for w in caught if issubclass(w.category, ThinImageWarning)]


def test_check_dataset_ends_with_one_error_line(tmp_path, capsys):
    folder, _ = planted(tmp_path)
    capsys.readouterr()
    assert main(["check-dataset", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder}: ") and "rows are bad (listed above)" in err and err.count("\n") == 1
    assert main(["check-dataset", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
