"""Intensity windows (`multimeditron.data.intensity`) over the project's one DICOM decoder: HU windows, percentile
windows, and the decoder's rescale handling and size guard reached through the raw-values path."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.data.images import ImageResolver, decode_image, read_dicom
from multimeditron.data.intensity import IntensityWindow, apply_window, load_windowed, parse_window, raw_values
from multimeditron.data.report import IMAGE_TOO_LARGE, BadSample
from tests.data.test_images import dicom_bytes


def test_intensity_windows():
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


def test_raw_mode_reads_a_multi_valued_rescale():
    # some scanners repeat RescaleSlope/Intercept (VM > 1): the first value holds, in raw and display modes alike
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    data = dicom_bytes(stored, RescaleSlope=["2", "2"], RescaleIntercept=["-1024", "-1024"])
    expected = stored.astype(float) * 2 - 1024
    assert raw_values(data).tolist() == expected.tolist()
    assert read_dicom(data, "raw").tolist() == expected.tolist()
    assert np.asarray(decode_image(data)).shape == (2, 2, 3)


def test_size_guard_holds_on_the_intensity_path():
    data = dicom_bytes(np.zeros((4, 4), dtype=np.uint16), RescaleIntercept="-1024")
    for read in (lambda: raw_values(data, max_pixels=15),
                 lambda: load_windowed(ImageResolver(max_pixels=15), data, parse_window("ct"))):
        with pytest.raises(BadSample) as caught:
            read()
        assert caught.value.reason == IMAGE_TOO_LARGE
    from PIL import Image

    from tests.data.test_images import encode

    png = encode(Image.fromarray(np.zeros((4, 4), dtype=np.uint8), "L"))
    with pytest.raises(BadSample) as caught:
        load_windowed(ImageResolver(max_pixels=15), png, parse_window("mri"))
    assert caught.value.reason == IMAGE_TOO_LARGE
    assert raw_values(png, max_pixels=16).shape == (4, 4)


def test_raw_mode_flips_monochrome1():
    stored = np.array([[0, 10]], dtype=np.uint16)
    assert raw_values(dicom_bytes(stored, photometric="MONOCHROME1")).tolist() == [[10.0, 0.0]]
