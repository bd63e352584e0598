"""Reading stored images (bytes, paths under a base folder, PIL values, DICOM) into correct RGB PIL images: the one
decoder used by training, `generate`, `eval`, the lmms-eval model, the benchmark readers and the converters.

Pillow and numpy only. Problems raise `BadSample` with a stable reason (see `multimeditron.data.report`). The pixel
normalisation itself (`to_rgb`) is the image processor's, so a PIL image given to the processor gets the same.
DICOM has one decoder here (`read_dicom`); its raw mode gives the modality values (HU) that the intensity windows of
`multimeditron.data.intensity` clip, with the same size guard and rescale handling as the display mode.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from multimeditron.data.report import (
    CORRUPT_IMAGE,
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    PATH_ESCAPE,
    UNSUPPORTED_IMAGE,
    BadSample,
)
from multimeditron.model.image_processing import normalize_image, scale_to_uint8

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own threshold, but as a hard error
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", *DICOM_SUFFIXES})


def list_image_files(folder: str | os.PathLike, recursive: bool = True,
                     extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The image files in `folder` (below it when `recursive`), sorted, hidden files and other suffixes skipped.

    The one rule for listed paths: they are absolute, so a relative folder (`--data retina/`) is never joined to the
    folder a second time by whatever resolves them later, whatever the working directory."""
    base = Path(folder).expanduser().absolute()
    found = base.rglob("*") if recursive else base.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)


class ImageResolver:
    """Where image paths point to.

    With `base_dir` every path (relative or absolute) must resolve inside it. Without it, relative paths resolve
    against `default_dir` (the dataset's own folder) and must stay inside it; absolute paths are taken as written.
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, default_dir: str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        self.default_dir = Path(default_dir).resolve() if default_dir else None
        self.max_pixels = int(max_pixels)

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        root = self.base_dir
        if root is None and not candidate.is_absolute():
            root = self.default_dir
            if root is None:
                raise BadSample(MISSING_IMAGE, f"relative image path {path!r} needs data.image_base_dir")
        if root is None:
            return candidate
        # resolve() follows symlinks and '..', so neither can lead outside the base folder
        resolved = (root / candidate).resolve()
        if not resolved.is_relative_to(root):
            raise BadSample(PATH_ESCAPE, f"image path {path!r} resolves outside {str(root)!r}")
        return resolved

    def load(self, value: Any) -> Image.Image:
        """A modality value ({bytes, path} mapping, the whole modality dict, bytes, path or PIL) -> RGB image."""
        if isinstance(value, Image.Image):
            return normalize_image(value)
        data, path = self.locate(value)
        return decode_image(data if data is not None else path, self.max_pixels)

    def check(self, value: Any) -> tuple[int, int]:
        """Cheap validation without decoding pixels: present, readable header, not a bomb, chunks intact.
        Returns the stored (width, height)."""
        if isinstance(value, Image.Image):
            return value.size
        data, path = self.locate(value)
        return verify_image(data if data is not None else path, self.max_pixels)

    def locate(self, value: Any) -> tuple[bytes | None, Path | None]:
        """(bytes, None) or (None, an existing file inside the allowed folder); no decoding."""
        if isinstance(value, dict) and "value" in value and isinstance(value["value"], dict):
            value = value["value"]  # the whole modality {type, value}
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value), None
        if isinstance(value, (str, os.PathLike)):
            value = {"path": os.fspath(value)}
        if not isinstance(value, dict):
            raise BadSample(MISSING_IMAGE, f"unreadable image value of type {type(value).__name__}")
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        if value.get("path"):
            path = self.resolve(value["path"])
            if not path.is_file():
                raise BadSample(MISSING_IMAGE, f"image file {str(path)!r} does not exist")
            return None, path
        raise BadSample(MISSING_IMAGE, "the image holds neither bytes nor a path")


def image_identity(value: Any, folder: str | os.PathLike | None = None) -> bytes:
    """What identifies a stored image without decoding it: a digest of its bytes, or its resolved path with the
    file's size and modification time (relative paths against `folder`)."""
    import hashlib

    if isinstance(value, dict) and isinstance(value.get("value"), dict):
        value = value["value"]  # the whole modality {type, value}, as `ImageResolver.locate` reads it
    if isinstance(value, dict) and value.get("bytes"):
        return hashlib.blake2b(bytes(value["bytes"]), digest_size=16).digest()
    if isinstance(value, (bytes, bytearray)):
        return hashlib.blake2b(bytes(value), digest_size=16).digest()
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, (str, os.PathLike)):
        raise BadSample(MISSING_IMAGE, f"unreadable image value of type {type(value).__name__}")
    full = Path(path) if Path(path).is_absolute() or folder is None else Path(folder) / path
    stat = full.stat() if full.is_file() else None
    return f"{full.resolve()}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode()


def images_fingerprint(*columns: Any, folder: str | os.PathLike | None = None) -> str:
    """A digest of a list of stored images (several lists: of their rows in turn), by `image_identity`."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for row in zip(*columns):
        for value in row:
            digest.update(image_identity(value, folder))
    return digest.hexdigest()


def is_dicom(source: bytes | Path) -> bool:
    """A DICOM file: by its suffix, else by the `DICM` marker after the 128-byte preamble."""
    if isinstance(source, Path):
        if source.suffix.lower() in DICOM_SUFFIXES:
            return True
        with source.open("rb") as handle:
            head = handle.read(132)
    else:
        head = source[:132]
    return head[128:132] == b"DICM"


def open_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A non-DICOM image opened lazily (header only), refused when it is over `max_pixels` (decompression bomb
    guard) or unidentifiable."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # our explicit max_pixels check below is the limit; Pillow's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise BadSample(IMAGE_TOO_LARGE, str(error)) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadSample(CORRUPT_IMAGE, f"cannot identify the image: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise BadSample(IMAGE_TOO_LARGE, f"{width}x{height} = {width * height} pixels exceeds the limit "
                        f"of {max_pixels} (decompression bomb guard)")
    return image


def verify_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Header and integrity check (PNG chunk CRCs, truncation) without a full decode; the stored (width, height)."""
    if is_dicom(source):
        return read_dicom(source, "check", max_pixels)
    image = open_image(source, max_pixels)
    try:
        image.verify()
    except Exception as error:  # Pillow raises many types here (SyntaxError, OSError, struct.error, ...)
        raise BadSample(CORRUPT_IMAGE, f"image data is damaged: {error}") from error
    return image.size


def decode_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes or a file -> RGB PIL image (EXIF orientation applied, high bit depth scaled, alpha on black)."""
    if is_dicom(source):
        return read_dicom(source, "image", max_pixels)
    image = open_image(source, max_pixels)
    try:
        image.load()  # with Pillow's default LOAD_TRUNCATED_IMAGES=False a truncated file raises here
    except Exception as error:
        raise BadSample(CORRUPT_IMAGE, f"cannot decode the image: {error}") from error
    return normalize_image(image)


def load_image(value: Any, base_dir: str | os.PathLike | None = None,
               default_dir: str | os.PathLike | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any stored image (see `ImageResolver.load`) -> RGB PIL image; relative paths resolve against `base_dir`
    (and must stay inside it), else against `default_dir` (the dataset's folder, or the current one for files named
    on a command line)."""
    return ImageResolver(base_dir, default_dir, max_pixels).load(value)


# ---- DICOM ------------------------------------------------------------------------------------------------------
def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): the first one."""
    if value is None:
        return float("nan")
    try:
        return float(value[0]) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else float(value)
    except (TypeError, ValueError, IndexError):
        return float("nan")


DicomMode = Literal["check", "image", "raw"]


def read_dicom(source: bytes | Path, mode: DicomMode = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
               ) -> Image.Image | np.ndarray | tuple[int, int]:
    """The one DICOM decoder. Every mode checks the header, the size (`max_pixels`, the decompression bomb guard)
    and that there is pixel data, then returns:
    - "check": the (width, height), without decoding the pixels;
    - "image": the RGB PIL image for display (modality values through the file's own window, `_dicom_grey`);
    - "raw": the greyscale values as float64 (H, W) in modality units (RescaleSlope/Intercept applied, e.g. HU for
      CT), MONOCHROME1 flipped so that high values are bright: what intensity windows clip.
    A multi-frame series stands for its first frame."""
    try:
        import pydicom
    except ImportError as error:
        raise BadSample(UNSUPPORTED_IMAGE, "DICOM image but pydicom is missing: pip install 'multimeditron[dicom]'") \
            from error
    stream = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        ds = pydicom.dcmread(stream, force=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as error:
        raise BadSample(CORRUPT_IMAGE, f"unreadable DICOM: {error}") from error
    if rows * columns > max_pixels:
        raise BadSample(IMAGE_TOO_LARGE, f"DICOM {columns}x{rows} exceeds the limit of {max_pixels} pixels")
    if "PixelData" not in ds:
        raise BadSample(CORRUPT_IMAGE, "DICOM without pixel data")
    if mode == "check":
        return columns, rows
    colour = int(ds.get("SamplesPerPixel", 1)) == 3
    if mode == "raw" and colour:
        raise BadSample(UNSUPPORTED_IMAGE, "an intensity window needs a greyscale DICOM, got a colour one")
    try:
        array = ds.pixel_array
    except Exception as error:  # compressed transfer syntaxes need optional decoders
        raise BadSample(UNSUPPORTED_IMAGE, f"cannot decode DICOM pixel data "
                        f"({ds.file_meta.get('TransferSyntaxUID', '?') if 'file_meta' in ds else '?'}): {error}") \
            from error
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[0]  # a multi-frame series: the first frame stands for it
    if mode == "raw":
        values = _modality_values(ds, array)
        if _monochrome1(ds):
            values = values.max() + values.min() - values  # low values are white: flip so that high = bright
        return values
    if colour:
        photometric = str(ds.get("PhotometricInterpretation", "RGB"))
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            array = convert_color_space(array, photometric, "RGB")
        if array.dtype != np.uint8:
            array = scale_to_uint8(array)
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
    return Image.fromarray(_dicom_grey(ds, array), "L").convert("RGB")


def _monochrome1(ds: Any) -> bool:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1"


def _modality_values(ds: Any, array: np.ndarray) -> np.ndarray:
    """Stored values -> modality values: RescaleSlope and RescaleIntercept (their first value when a file repeats
    them; slope 1 and intercept 0 when absent or unreadable)."""
    slope = _first(ds.get("RescaleSlope", 1.0))
    intercept = _first(ds.get("RescaleIntercept", 0.0))
    slope, intercept = (1.0 if np.isnan(slope) else slope), (0.0 if np.isnan(intercept) else intercept)
    return array.astype(np.float64) * slope + intercept


def _dicom_grey(ds: Any, array: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (`_modality_values`) -> display values (window centre/width)."""
    values = _modality_values(ds, array)
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if np.isnan(centre) or np.isnan(width) or width < 1:
        grey = scale_to_uint8(values).astype(np.float64) / 255.0
    elif width == 1:
        grey = (values > centre - 0.5).astype(np.float64)
    else:
        # DICOM PS3.3 C.11.2.1.2 linear VOI function, mapped onto [0, 1]
        grey = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if _monochrome1(ds):
        grey = 1.0 - grey  # MONOCHROME1: low values are white
    return np.round(grey * 255.0).astype(np.uint8)
