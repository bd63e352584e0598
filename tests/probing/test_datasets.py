"""Reading probe data: image folders (val carved when missing), tables (multi-label, studies), intensity windows."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.data.images import ImageResolver
from multimeditron.data.intensity import IntensityWindow, apply_window, load_windowed, parse_window
from multimeditron.probing import ProbeSettings, build_probe_expert, embed_splits, load_probe_data, parse_spec
from multimeditron.probing.datasets import ProbeDataError
from multimeditron.probing.run import probe_inputs

from .conftest import draw, png_bytes, write_folder


def test_folder_without_val_gets_a_seeded_stratified_val(tmp_path):
    root = write_folder(tmp_path / "img", {"train": 10, "test": 2})
    data = load_probe_data(root, val_fraction=0.2, seed=0)
    assert data.classes == ["lesion", "normal"]
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [16, 4, 4]
    assert np.bincount(data.splits["val"].labels).tolist() == [2, 2]
    assert any("carved 4 of 20" in note for note in data.notes)
    again = load_probe_data(root, val_fraction=0.2, seed=0)
    assert list(again.splits["val"].images) == list(data.splits["val"].images)


def test_missing_test_split_is_named(tmp_path):
    root = write_folder(tmp_path / "img", {"train": 3, "val": 2})
    with pytest.raises(ProbeDataError, match="no test split"):
        load_probe_data(root)


def _table(tmp_path, rows):
    import datasets

    path = tmp_path / "table.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_multilabel_table_with_studies(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for split, n_studies in (("train", 6), ("val", 2), ("test", 3)):
        for s in range(n_studies):
            effusion, nodule = s % 2, (s // 2) % 2
            for _ in range(3):  # three slices per study
                rows.append({"image": {"bytes": png_bytes(draw(effusion, rng, 16)), "path": None}, "split": split,
                             "study": f"{split}-{s}", "effusion": effusion, "nodule": nodule})
    data = load_probe_data(_table(tmp_path, rows), label_columns=["effusion", "nodule"])
    assert data.multilabel and data.classes == ["effusion", "nodule"] and data.group_kind == "study"
    assert data.splits["train"].labels.shape == (18, 2)
    expert = build_probe_expert(parse_spec("retfound_green", tiny=True))
    inputs = probe_inputs(data, embed_splits(expert, data, ProbeSettings(cache_dir=None, progress=False)))
    assert len(inputs.train) == 6 and len(inputs.test) == 3  # one row per study
    assert inputs.test.embeddings.pooled.shape == (3, expert.feature_dim)
    assert inputs.test.labels.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_table_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": {"bytes": png_bytes(draw(0, rng, 8)), "path": None}, "label": "a", "split": "train"}]
    path = _table(tmp_path, rows)
    with pytest.raises(ProbeDataError, match="no column 'grade'"):
        load_probe_data(path, label_columns=["grade"])
    with pytest.raises(ProbeDataError, match="no test split"):
        load_probe_data(path)
    bad = _table(tmp_path, [{**rows[0], "split": "holdout"}])
    with pytest.raises(ProbeDataError, match="holdout"):
        load_probe_data(bad)


def test_intensity_windows(tmp_path):
    from tests.data.test_images import dicom_bytes

    assert parse_window("ct") == IntensityWindow("range", -1024, 600)
    assert parse_window("mri") == IntensityWindow("percentile", 5, 95)
    with pytest.raises(ValueError, match="range:LOW,HIGH"):
        parse_window("pet")
    # stored 0..2048 with intercept -1024 -> HU -1024, 0, 600, 1024: clipped to [-1024, 600]
    stored = np.array([[0, 1024], [1624, 2048]], dtype=np.uint16)
    data = dicom_bytes(stored, RescaleSlope="1", RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    image = load_windowed(ImageResolver(), data, parse_window("ct"))
    grey = np.asarray(image)[..., 0]
    assert grey.tolist() == [[0, round(1024 * 255 / 1624)], [255, 255]]
    values = np.arange(100, dtype=float).reshape(10, 10)
    clipped = apply_window(values, parse_window("mri"))
    flat = clipped.reshape(-1).astype(int)
    assert (flat[:5] == 0).all() and (flat[95:] == 255).all()  # below the 5th / above the 95th percentile saturate
    assert (np.diff(flat[5:95]) > 0).all()  # in between: a linear ramp


def test_dicom_folder_with_ct_window(tmp_path):
    import torch

    from multimeditron.probing.embed import ImageCanvases
    from tests.data.test_images import dicom_bytes

    for split in ("train", "test"):
        for label, hu in (("air", 0), ("bone", 2000)):
            folder = tmp_path / "ct" / split / label
            folder.mkdir(parents=True)
            stored = np.full((8, 8), hu, dtype=np.uint16)
            (folder / "slice.dcm").write_bytes(dicom_bytes(stored, RescaleSlope="1", RescaleIntercept="-1024"))
    data = load_probe_data(tmp_path / "ct", val_fraction=0.5)
    assert data.classes == ["air", "bone"] and len(data.splits["test"]) == 2
    canvases = ImageCanvases(data.splits["test"].images, 16, data.folder, parse_window("ct"))
    air, bone = canvases[0], canvases[1]
    assert air.shape == (3, 16, 16)
    assert torch.all(air == 0) and torch.all(bone == 1)  # -1024 HU -> black, 976 HU (above 600) -> white
