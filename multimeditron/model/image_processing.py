"""`MultiMeditronImageProcessor`: any PIL image -> the model's canvas tensor, identical for training and inference.

Pixel normalisation (EXIF orientation, high bit depth scaled to its range, alpha composited on black) lives here so
that a PIL image handed straight to the processor gets what the data pipeline gives a decoded file
(`multimeditron.data.images` decodes bytes, paths and DICOM, then calls `to_rgb` from here). The canvas keeps the
aspect ratio. Two geometries: `pad` (the default) resizes the long side to the canvas size and pads the short side
with black, so nothing at the borders is lost; `center_crop` resizes the short side to the canvas size and crops the
centre square, as the CLIP / BiomedCLIP processors of the published MultiMeditron did. Either way memory is bounded by
the canvas whatever the stored size.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from multimeditron.choices import IMAGE_GEOMETRIES

HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ORIENTATION_TAG = 0x0112  # EXIF: how the stored pixels must be rotated/flipped to be viewed upright
GEOMETRIES = IMAGE_GEOMETRIES


class ThinImageWarning(UserWarning):
    """An image so elongated that its short side on the canvas is thinner than one patch."""


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear map of the image's actual value range onto 0..255 (a 12-bit scan stored in 16 bits stays visible)."""
    array = array.astype(np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round(np.nan_to_num((array - low) * (255.0 / (high - low)))).astype(np.uint8)


def _composite_on_black(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Pillow's own convert() clips 16-bit values and drops alpha onto garbage colour."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_DEPTH_MODES:
        grey = scale_to_uint8(np.asarray(image))
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return image if image.mode == "RGB" else _composite_on_black(image)
    if mode in ("RGBA", "LA", "PA"):
        return _composite_on_black(image)
    if mode in ("RGBa", "La"):  # premultiplied: compositing on black is just dropping alpha
        return image.convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV: Pillow converts these correctly


def normalize_image(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """A PIL image (EXIF orientation applied), an HWC/HW uint8 array or a CHW tensor in [0, 1] -> RGB PIL image."""
    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"an image must be a PIL image, a numpy array or a tensor, not {type(image).__name__}")
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:  # exif_transpose would copy even an upright image
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def fit_size(width: int, height: int, canvas: int) -> tuple[int, int]:
    """(width, height) with the long side equal to `canvas`, the aspect ratio kept, each side at least 1 px."""
    scale = canvas / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fill_size(width: int, height: int, canvas: int) -> tuple[int, int]:
    """(width, height) with the short side equal to `canvas`, the aspect ratio kept (the CLIP processors' resize)."""
    scale = canvas / min(width, height)
    return max(canvas, round(width * scale)), max(canvas, round(height * scale))


class MultiMeditronImageProcessor(BaseImageProcessor):
    """Images -> `pixel_values` (N, 3, S, S) in [0, 1]; each expert resizes and normalises the canvas itself.

    Args:
        image_size: the canvas side S (the largest expert input).
        patch_size: canvas pixels per patch of the coarsest expert; an image whose short side ends up thinner than
            this carries almost nothing and raises a `ThinImageWarning` (counted by the data pipeline).
        geometry: `pad` (long side resized to S, short side padded with black) or `center_crop` (short side resized
            to S, the centre S x S kept).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 224, patch_size: int = 1, geometry: str = "pad", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"image_geometry: {geometry!r} is not one of {list(GEOMETRIES)}")
        self.image_size = int(image_size)
        self.patch_size = max(1, int(patch_size))
        self.geometry = geometry

    def is_thin(self, width: int, height: int) -> bool:
        if self.geometry == "center_crop":
            return False  # the crop fills the whole canvas
        return min(fit_size(width, height, self.image_size)) < self.patch_size

    def to_canvas(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """One image -> (3, S, S) float tensor in [0, 1]: long side resized to S, short side padded with black (or,
        with `center_crop`, short side resized to S and the centre kept)."""
        image = normalize_image(image)
        width, height = image.size
        if self.geometry == "center_crop":
            return self._center_crop(image)
        size = fit_size(width, height, self.image_size)
        if min(size) < self.patch_size:
            warnings.warn(f"a {width}x{height} image becomes {size[0]}x{size[1]} on the {self.image_size}-px canvas, "
                          f"thinner than one {self.patch_size}-px patch", ThinImageWarning, stacklevel=2)
        if size != (width, height):
            # reducing_gap: shrink a huge image by integer steps first (fast, no full-size float copy)
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        canvas = np.zeros((self.image_size, self.image_size, 3), dtype=np.float32)
        top, left = (self.image_size - size[1]) // 2, (self.image_size - size[0]) // 2
        canvas[top:top + size[1], left:left + size[0]] = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()

    def _center_crop(self, image: Image.Image) -> torch.Tensor:
        size = fill_size(*image.size, self.image_size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        # the CLIP processors' offsets: the odd pixel, if any, is dropped at the right / bottom
        left, top = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        canvas = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """An image or a (nested) list of images -> BatchFeature with `pixel_values` (N, 3, S, S), in order."""
        flat = flatten_images(images)
        if flat:
            pixels = torch.stack([self.to_canvas(image) for image in flat])
        else:
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
        return BatchFeature(data={"pixel_values": pixels}, tensor_type=return_tensors)


def flatten_images(images: Any) -> list:
    """None, one image, a flat list or a list of lists (one per text) -> a flat list in order."""
    if images is None:
        return []
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    flat: list = []
    for item in images:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat
