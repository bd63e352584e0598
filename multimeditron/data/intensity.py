"""Intensity windows for scans whose raw values matter: CT clipped to a Hounsfield range, MRI to value percentiles.

The plain decoder (`multimeditron.data.images`) maps a DICOM through its own window and a 16-bit image through its
full range; evaluation protocols for radiology encoders instead clip CT to [-1024, 600] HU and MRI to its 5th-95th
percentile before scaling to 8 bits. These functions read the raw values (DICOM rescaled to modality units by the
project's one DICOM decoder, other greyscale files at their stored depth) and apply such a window.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multimeditron.data.images import DEFAULT_MAX_PIXELS, ImageResolver, is_dicom, open_image, read_dicom
from multimeditron.data.report import CORRUPT_IMAGE, UNSUPPORTED_IMAGE, BadSample

CT_WINDOW = (-1024.0, 600.0)
MRI_PERCENTILES = (5.0, 95.0)


@dataclass(frozen=True)
class IntensityWindow:
    """`kind` "range": clip to [low, high] in the image's own units (HU for CT); "percentile": clip each image to
    its [low, high] value percentiles."""

    kind: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.kind not in ("range", "percentile"):
            raise ValueError(f"intensity window kind {self.kind!r} is not 'range' or 'percentile'")
        if not self.low < self.high:
            raise ValueError(f"intensity window: low {self.low} must be below high {self.high}")
        if self.kind == "percentile" and not (0 <= self.low and self.high <= 100):
            raise ValueError(f"intensity window: percentiles must lie in [0, 100], got {self.low}, {self.high}")

    def describe(self) -> str:
        return f"{self.kind} [{self.low:g}, {self.high:g}]" + ("" if self.kind == "range" else " percentiles")


def parse_window(text: str) -> IntensityWindow:
    """`ct` ([-1024, 600] HU), `mri` (5th-95th percentile), `range:LOW,HIGH` or `percentile:LOW,HIGH`."""
    name, _, values = text.strip().partition(":")
    name = name.lower()
    if name in ("ct", "mri") and not values:
        return IntensityWindow("range", *CT_WINDOW) if name == "ct" else IntensityWindow("percentile", *MRI_PERCENTILES)
    if name in ("range", "percentile", "ct", "mri") and values:
        try:
            low, high = (float(v) for v in values.split(","))
        except ValueError as error:
            raise ValueError(f"intensity window {text!r}: expected two comma-separated numbers after ':'") from error
        return IntensityWindow("percentile" if name in ("percentile", "mri") else "range", low, high)
    raise ValueError(f"intensity window {text!r}: use ct, mri, range:LOW,HIGH or percentile:LOW,HIGH")


def raw_values(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A greyscale image's stored values as float64 (H, W): DICOM in modality units (`read_dicom`'s raw mode:
    slope/intercept applied, first frame of a series), other files at their stored bit depth; both refused over
    `max_pixels` (the decoder's decompression bomb guard)."""
    if is_dicom(source):
        return read_dicom(source, "raw", max_pixels)  # type: ignore[return-value]
    image = open_image(source, max_pixels)
    try:
        image.load()
    except Exception as error:
        raise BadSample(CORRUPT_IMAGE, f"cannot decode the image: {error}") from error
    if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise BadSample(UNSUPPORTED_IMAGE, f"an intensity window needs a greyscale image, got mode {image.mode}")
    return np.asarray(image).astype(np.float64)


def apply_window(values: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """Raw values -> uint8 (H, W): clipped to the window, then mapped linearly onto 0..255."""
    if window.kind == "percentile":
        low, high = (float(v) for v in np.percentile(values, [window.low, window.high]))
    else:
        low, high = window.low, window.high
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def load_windowed(resolver: ImageResolver, value: Any, window: IntensityWindow) -> Image.Image:
    """A stored image (as `ImageResolver.load` takes it) -> RGB PIL image through `window`."""
    data, path = resolver.locate(value)
    grey = apply_window(raw_values(data if data is not None else path, resolver.max_pixels), window)
    return Image.fromarray(grey, "L").convert("RGB")
