"""Canvas geometry of MultiMeditronImageProcessor against hand-computed canvases: `pad` (default) and `center_crop`
(short side resized, centre kept, the published CLIP processors'), chosen by the model config and saved with the
processor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multimeditron.model.image_processing import MultiMeditronImageProcessor
from tests.conftest import GENERALIST, tiny_model


def _columns(width: int, height: int) -> Image.Image:
    """Column j has grey value 10 * (j + 1), so which columns survive a crop reads off the canvas."""
    row = np.array([10 * (j + 1) for j in range(width)], dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2))


def test_center_crop_keeps_the_centre_columns():
    # 8 x 4 on a 4-px canvas: the short side is already 4, so no resize; the crop starts at (8 - 4) // 2 = 2
    canvas = MultiMeditronImageProcessor(image_size=4, geometry="center_crop").to_canvas(_columns(8, 4))
    expected = torch.tensor([30, 40, 50, 60], dtype=torch.float32) / 255
    assert canvas.shape == (3, 4, 4)
    assert torch.allclose(canvas, expected.expand(3, 4, 4))
    # 7 x 4: the odd column is dropped on the right (offset (7 - 4) // 2 = 1), as the CLIP processors do
    canvas = MultiMeditronImageProcessor(image_size=4, geometry="center_crop").to_canvas(_columns(7, 4))
    assert torch.allclose(canvas[0, 0] * 255, torch.tensor([20.0, 30, 40, 50]))


def test_pad_is_the_default_and_keeps_every_column():
    processor = MultiMeditronImageProcessor(image_size=8)
    assert processor.geometry == "pad"
    canvas = processor.to_canvas(_columns(8, 4))  # long side already 8: rows 2..5 hold the image, the rest black
    assert torch.allclose(canvas[0, 2] * 255, torch.arange(10, 90, 10, dtype=torch.float32))
    assert canvas[:, :2].abs().sum() == 0 and canvas[:, 6:].abs().sum() == 0


def test_center_crop_upscales_the_short_side_without_black_borders():
    image = Image.new("RGB", (6, 3), (200, 100, 50))  # short side 3 -> 12, then the centre 12 x 12
    canvas = MultiMeditronImageProcessor(image_size=12, geometry="center_crop").to_canvas(image)
    assert canvas.shape == (3, 12, 12)
    assert torch.allclose(canvas, (torch.tensor([200.0, 100, 50]) / 255).view(3, 1, 1).expand(3, 12, 12), atol=1e-6)


def test_geometry_comes_from_the_model_config_and_is_saved(tmp_path):
    with pytest.raises(ValueError, match=r"image_geometry: 'crop' is not one of \['pad', 'center_crop'\]"):
        tiny_model(experts=[GENERALIST], image_geometry="crop")
    model, processor = tiny_model(experts=[GENERALIST], image_geometry="center_crop")
    assert model.config.image_geometry == processor.image_processor.geometry == "center_crop"
    processor.image_processor.save_pretrained(tmp_path)
    assert MultiMeditronImageProcessor.from_pretrained(tmp_path).geometry == "center_crop"
