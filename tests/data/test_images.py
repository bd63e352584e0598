"""Image decoding: bit depth, alpha, palette, EXIF, greyscale, path escapes, bombs, corrupt data, DICOM."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from multimeditron.data.images import ImageResolver, decode_image, verify_image
from multimeditron.data.report import (
    CORRUPT_IMAGE,
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    PATH_ESCAPE,
    BadSample,
)
from tests.data.conftest import png_bytes


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_16_bit_is_scaled_to_its_actual_range():
    values = np.array([[1000, 2000], [3000, 1000]], dtype=np.uint16)  # a 12-bit scan: Pillow would clip to white
    rgb = np.asarray(decode_image(encode(Image.fromarray(values))))
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [128, 128, 128]


def test_alpha_is_composited_on_black():
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[..., 0] = 255
    array[..., 3] = [[255, 128], [0, 64]]
    rgb = np.asarray(decode_image(encode(Image.fromarray(array, "RGBA"))))
    assert rgb[..., 0].tolist() == [[255, 128], [0, 64]]
    assert rgb[..., 1:].max() == 0
    la = Image.fromarray(np.stack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 0, np.uint8)], -1), "LA")
    assert np.asarray(decode_image(encode(la))).max() == 0


def test_palette_with_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0] + [255, 255, 255] * 255)
    image.putpixel((1, 0), 1)
    rgb = np.asarray(decode_image(encode(image, transparency=1)))
    assert rgb[0, 0].tolist() == [0, 255, 0] and rgb[0, 1].tolist() == [0, 0, 0]


def test_greyscale_becomes_three_equal_channels():
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), "L")
    rgb = np.asarray(decode_image(encode(grey)))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb[..., 0].tolist() == [[0, 100], [200, 255]]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (10, 30)


def test_paths_must_stay_in_the_base_folder(tmp_path):
    base = tmp_path / "images"
    base.mkdir()
    (base / "ok.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (base / "link.png").symlink_to(tmp_path / "secret.png")
    resolver = ImageResolver(base_dir=base)
    assert resolver.load({"bytes": None, "path": "ok.png"}).size == (20, 16)
    for path in ("../secret.png", str(tmp_path / "secret.png"), "link.png"):
        with pytest.raises(BadSample) as caught:
            resolver.load({"bytes": None, "path": path})
        assert caught.value.reason == PATH_ESCAPE
    with pytest.raises(BadSample) as caught:
        resolver.check({"bytes": None, "path": "absent.png"})
    assert caught.value.reason == MISSING_IMAGE
    # without a base folder, relative paths resolve against the dataset folder (and may not leave it either)
    default = ImageResolver(default_dir=base)
    assert default.load("ok.png").size == (20, 16)
    with pytest.raises(BadSample):
        default.load("../secret.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_decompression_bomb_is_refused():
    # a valid PNG header claiming 100000 x 100000 pixels: refused from the header, nothing is allocated
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 10)) + \
        _chunk(b"IEND", b"")
    for check in (decode_image, verify_image):
        with pytest.raises(BadSample) as caught:
            check(bomb)
        assert caught.value.reason == IMAGE_TOO_LARGE
    with pytest.raises(BadSample) as caught:
        decode_image(png_bytes(), max_pixels=100)
    assert caught.value.reason == IMAGE_TOO_LARGE


def test_corrupt_and_truncated_images():
    data = png_bytes()
    for broken in (b"not an image", data[: len(data) // 2]):
        with pytest.raises(BadSample) as caught:
            decode_image(broken)
        assert caught.value.reason == CORRUPT_IMAGE
        with pytest.raises(BadSample):
            verify_image(broken)


def dicom_bytes(values: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = values.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_rescale_and_window():
    stored = np.array([[0, 1024], [1064, 2048]], dtype=np.uint16)
    # modality values (HU) = 1 * stored - 1024 -> [-1024, 0, 40, 1024]; window 40 +- 200 (width 400)
    data = dicom_bytes(stored, RescaleSlope="1", RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    grey = np.asarray(decode_image(data))[..., 0].astype(float)
    expected = np.clip((np.array([[-1024, 0], [40, 1024]]) - 39.5) / 399 + 0.5, 0, 1) * 255
    assert np.abs(grey - np.round(expected)).max() <= 1
    assert grey[0, 0] == 0 and grey[1, 1] == 255 and 120 <= grey[1, 0] <= 135


def test_dicom_without_window_uses_its_range_and_monochrome1_is_inverted():
    stored = np.array([[100, 200], [300, 100]], dtype=np.uint16)
    grey = np.asarray(decode_image(dicom_bytes(stored, photometric="MONOCHROME1")))[..., 0]
    assert grey.tolist() == [[255, 128], [0, 255]]


def test_images_thinner_than_a_patch_are_kept_and_counted_in_the_data_report(tmp_path, qwen):
    from datasets import Dataset

    from multimeditron.config import DataSection, DatasetEntry
    from multimeditron.data.dataset import build_sft_datasets
    from multimeditron.data.report import THIN_IMAGE
    from tests.data.conftest import vqa_row

    _, processor = qwen
    strip = vqa_row(seed=1)
    strip["modalities"][0]["value"]["bytes"] = png_bytes(size=(400, 2))
    Dataset.from_list([vqa_row(seed=0), strip]).save_to_disk(str(tmp_path / "set"))
    data = build_sft_datasets(DataSection(train=[DatasetEntry(str(tmp_path / "set"))], max_sequence_length=256),
                              processor, seed=0)
    assert len(data.train) == 2 and data.report.total == 0
    assert data.report.modified == {THIN_IMAGE: 1}
    assert f"kept but changed, {THIN_IMAGE}: 1" in data.report.summary()
