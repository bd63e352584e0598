"""Intensity windows (`multimeditron.data.intensity`): HU windows and percentile windows."""
from __future__ import annotations

import numpy as np
import pytest

from multimeditron.data.images import ImageResolver
from multimeditron.data.intensity import IntensityWindow, apply_window, load_windowed, parse_window
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
