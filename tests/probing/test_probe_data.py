"""Probing over labelled image sets: images grouped by study are embedded one by one and probed as one case, and a
DICOM folder goes through a CT window into the expert's canvases."""
from __future__ import annotations

import numpy as np

from multimeditron.data.intensity import parse_window
from multimeditron.data.labelled_images import load_labelled_images
from multimeditron.probing import ProbeSettings, build_probe_expert, embed_splits, parse_spec
from multimeditron.probing.run import probe_inputs

from .conftest import write_study_table


def test_studies_are_probed_as_one_case(tmp_path):
    data = load_labelled_images(write_study_table(tmp_path / "studies.parquet"), label_columns=["effusion", "nodule"])
    expert = build_probe_expert(parse_spec("retfound_green", tiny=True))
    inputs = probe_inputs(data, embed_splits(expert, data, ProbeSettings(cache_dir=None, progress=False)))
    assert len(inputs.train) == 6 and len(inputs.test) == 3  # one row per study
    assert inputs.test.embeddings.pooled.shape == (3, expert.feature_dim)
    assert inputs.test.labels.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_dicom_folder_with_ct_window(tmp_path):
    import torch

    from multimeditron.probing.embed import ImageCanvases
    from tests.data.test_images import dicom_bytes

    for split, slices in (("train", 2), ("test", 1)):  # train keeps a slice of each class after val is carved
        for label, hu in (("air", 0), ("bone", 2000)):
            folder = tmp_path / "ct" / split / label
            folder.mkdir(parents=True)
            stored = np.full((8, 8), hu, dtype=np.uint16)
            for k in range(slices):
                (folder / f"slice{k}.dcm").write_bytes(dicom_bytes(stored, RescaleSlope="1",
                                                                   RescaleIntercept="-1024"))
    data = load_labelled_images(tmp_path / "ct", val_fraction=0.5)
    assert data.classes == ["air", "bone"] and len(data.splits["test"]) == 2
    canvases = ImageCanvases(data.splits["test"].images, 16, data.folder, parse_window("ct"))
    air, bone = canvases[0], canvases[1]
    assert air.shape == (3, 16, 16)
    assert torch.all(air == 0) and torch.all(bone == 1)  # -1024 HU -> black, 976 HU (above 600) -> white
