"""Labelled image sets (`multimeditron.data.labelled_images`): image folders (val carved when missing, every
spelling of val), tables (multi-label, studies, split aliases), and errors that name the problem."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.data.labelled_images import load_labelled_images
from multimeditron.data.splits import SPLIT_ALIASES, ImageDataError, canonical_split, carve_validation
from tests.probing.conftest import draw, png_bytes, write_folder, write_study_table


def test_folder_without_val_gets_a_seeded_stratified_val(tmp_path):
    root = write_folder(tmp_path / "img", {"train": 10, "test": 2})
    data = load_labelled_images(root, val_fraction=0.2, seed=0)
    assert data.classes == ["lesion", "normal"]
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [16, 4, 4]
    assert np.bincount(data.splits["val"].labels).tolist() == [2, 2]
    assert any("carved 4 of 20" in note for note in data.notes)
    again = load_labelled_images(root, val_fraction=0.2, seed=0)
    assert list(again.splits["val"].images) == list(data.splits["val"].images)


@pytest.mark.parametrize("name", ["val", "valid", "validation", "dev", "Valid"])
def test_every_spelling_of_the_val_folder_is_val(tmp_path, name):
    root = write_folder(tmp_path / "img", {"train": 3, name: 2, "test": 2})
    data = load_labelled_images(root)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [6, 4, 4]
    assert not any("carved" in note for note in data.notes)  # the folder is val: nothing carved from train


def test_two_folders_for_one_split_are_refused(tmp_path):
    root = write_folder(tmp_path / "img", {"train": 2, "val": 1, "dev": 1, "test": 1})
    with pytest.raises(ImageDataError, match="dev/ and val/ both name the val split"):
        load_labelled_images(root)


def test_missing_test_split_is_named(tmp_path):
    root = write_folder(tmp_path / "img", {"train": 3, "val": 2})
    with pytest.raises(ImageDataError, match="no test split"):
        load_labelled_images(root)


def _table(tmp_path, rows, name="table.parquet"):
    import datasets

    path = tmp_path / name
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_multilabel_table_with_studies(tmp_path):
    data = load_labelled_images(write_study_table(tmp_path / "studies.parquet"), label_columns=["effusion", "nodule"])
    assert data.multilabel and data.classes == ["effusion", "nodule"] and data.group_kind == "study"
    assert data.splits["train"].labels.shape == (18, 2)
    assert len(set(data.splits["test"].groups.tolist())) == 3


def test_split_column_spellings_are_one_rule(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": {"bytes": png_bytes(draw(i % 2, rng, 8)), "path": None}, "label": "ab"[i % 2], "split": split}
            for i, split in enumerate(["train"] * 4 + ["Dev", "valid"] + ["TEST"] * 2)]
    data = load_labelled_images(_table(tmp_path, rows))
    assert {s: len(p) for s, p in data.splits.items()} == {"train": 4, "val": 2, "test": 2}


def test_table_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": {"bytes": png_bytes(draw(0, rng, 8)), "path": None}, "label": "a", "split": "train"}]
    path = _table(tmp_path, rows)
    with pytest.raises(ImageDataError, match="no column 'grade'"):
        load_labelled_images(path, label_columns=["grade"])
    with pytest.raises(ImageDataError, match="no test split"):
        load_labelled_images(path)
    bad = _table(tmp_path, [{**rows[0], "split": "holdout"}], "bad.parquet")
    with pytest.raises(ImageDataError, match=r"holds \['holdout'\]; expected train/val/test \(valid = val"):
        load_labelled_images(bad)


def test_split_names_and_carving_rules():
    assert {alias for alias, split in SPLIT_ALIASES.items() if split == "val"} == {"val", "valid", "validation",
                                                                                     "dev"}
    assert canonical_split(" Validation ") == "val" and canonical_split("holdout") is None
    labels = np.array([0] * 6 + [1] * 4)
    kept, carved = carve_validation(10, 0.5, 0, labels)
    assert sorted(labels[carved].tolist()) == [0, 0, 0, 1, 1]  # stratified: the classes' shares kept
    assert sorted([*kept, *carved]) == list(range(10))
    groups = np.repeat(np.arange(5), 2)
    kept, carved = carve_validation(10, 0.2, 0, groups=groups)
    assert not set(groups[kept]) & set(groups[carved])  # whole groups
    with pytest.raises(ImageDataError, match="too few"):
        carve_validation(1, 0.2, 0)


def test_data_a_classifier_cannot_learn_is_refused(tmp_path):
    one = write_folder(tmp_path / "one", {"train": 3, "test": 2}, classes=("normal",))
    with pytest.raises(ImageDataError, match=r"one class only \(normal\)"):
        load_labelled_images(one)
    extra = write_folder(tmp_path / "extra", {"train": 3, "val": 2, "test": 2})
    write_folder(extra, {"test": 2}, classes=("cyst",))  # a class present only in test
    with pytest.raises(ImageDataError, match=r"train has class\(es\) without an image: cyst \(found only in test\)"):
        load_labelled_images(extra)
    no_val = write_folder(tmp_path / "no_val", {"train": 3, "val": 2, "test": 2})
    write_folder(no_val, {"train": 3, "test": 2}, classes=("cyst",))  # in train and test, not in val
    data = load_labelled_images(no_val)
    assert any("val has class(es) without an image: cyst" in note for note in data.notes)


def _patients(tmp_path, placement: dict[str, list[str]], name: str):
    rng = np.random.default_rng(0)
    rows = [{"image": {"bytes": png_bytes(draw(i % 2, rng, 8)), "path": None}, "label": "ab"[i % 2],
             "split": split, "patient": patient}
            for split, patients in placement.items() for i, patient in enumerate(patients)]
    return _table(tmp_path, rows, name)


def test_a_patient_in_two_splits_is_refused_unless_allowed(tmp_path):
    leaky = _patients(tmp_path, {"train": ["p1", "p2", "p3", "p4"], "val": ["p5", "p6"], "test": ["p1", "p7"]},
                      "leaky.parquet")
    with pytest.raises(ImageDataError, match=r"patients appear in two splits: 1 in train and test \(e.g. 'p1'\)"):
        load_labelled_images(leaky)
    data = load_labelled_images(leaky, allow_overlap=True)
    assert any("allowed by data.allow_overlap" in note for note in data.notes)
    clean = _patients(tmp_path, {"train": ["p1", "p2", "p3", "p4"], "val": ["p5", "p6"], "test": ["p7", "p8"]},
                      "clean.parquet")
    assert load_labelled_images(clean).group_kind == "patient"


def test_unreadable_table_images_are_refused_or_left_out(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": {"bytes": png_bytes(draw(i % 2, rng, 8)), "path": None}, "label": "ab"[i % 2], "split": s}
            for i, s in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 2)]
    rows[3]["image"] = {"bytes": b"not a png", "path": None}
    path = _table(tmp_path, rows)
    with pytest.raises(ImageDataError, match=r"1 file\(s\) cannot be read as images: row 3 \(corrupt_image\)"):
        load_labelled_images(path)
    data = load_labelled_images(path, on_bad_image="skip")
    assert len(data.splits["train"]) == 5 and data.refused[0]["split"] == "train"
    assert data.refused[0]["file"] == "row 3" and any("left out 1 unreadable file" in note for note in data.notes)
