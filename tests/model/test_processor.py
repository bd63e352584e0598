"""`MultiMeditronProcessor` as a transformers processor: AutoProcessor round trip, transformers' file layout, older
saved folders, images never silently dropped, HF content parts; the aspect-preserving canvas and its thin warning."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from multimeditron.model.image_processing import MultiMeditronImageProcessor, ThinImageWarning
from multimeditron.model.processing import LEGACY_PROCESSOR_FILE, MultiMeditronProcessor
from tests.conftest import random_image
from tests.data.conftest import tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, processor = tiny("tiny-qwen3")
    directory = tmp_path_factory.mktemp("processor")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, processor


def _prompt(processor, n_images: int = 1) -> str:
    content = " ".join([processor.attachment_token] * n_images + ["Is there a lesion?"])
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_auto_processor_round_trips_with_transformers_files(saved):
    directory, processor = saved
    assert (directory / "processor_config.json").is_file() and not (directory / LEGACY_PROCESSOR_FILE).exists()
    stored = json.loads((directory / "processor_config.json").read_text())
    assert stored["processor_class"] == "MultiMeditronProcessor"
    assert stored["image_processor"]["image_processor_type"] == "MultiMeditronImageProcessor"
    loaded = AutoProcessor.from_pretrained(directory)
    assert type(loaded) is MultiMeditronProcessor
    assert (loaded.num_image_tokens, loaded.image_size, loaded.attachment_token, loaded.chat_template_kwargs) == \
        (processor.num_image_tokens, processor.image_size, processor.attachment_token, processor.chat_template_kwargs)
    assert loaded.image_processor.patch_size == processor.image_processor.patch_size
    assert type(AutoImageProcessor.from_pretrained(directory)) is MultiMeditronImageProcessor
    images = [random_image(seed=1), random_image(seed=2, width=20)]
    ours, theirs = processor(_prompt(processor, 2), images=images), loaded(_prompt(loaded, 2), images=images)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_folders_saved_before_still_load(saved, tmp_path):
    directory, processor = saved
    for path in directory.iterdir():
        if path.name != "processor_config.json":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / LEGACY_PROCESSOR_FILE).write_text(json.dumps({
        "processor_class": "MultiMeditronProcessor", "num_image_tokens": processor.num_image_tokens,
        "image_size": processor.image_size, "attachment_token": processor.attachment_token,
        "chat_template_kwargs": {"enable_thinking": False}}))
    for loader in (AutoProcessor, MultiMeditronProcessor):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is MultiMeditronProcessor and loaded.image_size == processor.image_size
        assert loaded(_prompt(loaded), images=[random_image()])["pixel_values"].shape[0] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MultiMeditron"):
        MultiMeditronProcessor.from_pretrained(tmp_path / "empty")


def test_images_without_placeholders_raise_instead_of_being_dropped(saved):
    _, processor = saved
    text = processor.apply_chat_template([{"role": "user", "content": "Is there a lesion?"}])
    with pytest.raises(ValueError, match=r"0 image placeholder\(s\).*1 image\(s\)"):
        processor(text=text, images=[random_image()])
    with pytest.raises(ValueError, match="2 image lists for 1 texts"):
        processor(text=[_prompt(processor)], images=[[random_image()], []])


def test_chat_template_takes_strings_and_hf_content_parts(saved):
    _, processor = saved
    image = random_image()
    as_string = processor.apply_chat_template(
        [{"role": "user", "content": f"{processor.attachment_token}\nWhich side?"}], add_generation_prompt=True)
    parts = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Which side?"}]}]
    assert processor.apply_chat_template(parts, add_generation_prompt=True) == as_string
    batch = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = processor(as_string, images=[image])
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    with pytest.raises(ValueError, match="text and image parts only"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])


def test_canvas_keeps_the_aspect_ratio_and_pads_the_short_side():
    processor = MultiMeditronImageProcessor(image_size=32, patch_size=4)
    wide = Image.fromarray(np.full((10, 40, 3), 255, dtype=np.uint8))  # 4:1 -> 32 x 8 of content
    canvas = processor.to_canvas(wide)
    assert canvas.shape == (3, 32, 32)
    rows = canvas[0].amax(dim=1)
    assert rows[12:20].min() == 1.0 and rows[:12].max() == 0.0 and rows[20:].max() == 0.0
    tall = processor.to_canvas(wide.transpose(Image.Transpose.ROTATE_90))
    assert torch.equal(tall[0], canvas[0].T)


def test_an_extreme_strip_is_bounded_by_the_canvas_and_warns():
    processor = MultiMeditronImageProcessor(image_size=32, patch_size=4)
    strip = Image.new("RGB", (20000, 5), (255, 255, 255))  # padded to a square first, this was 20000 x 20000 x 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        canvas = processor.to_canvas(strip)
    assert canvas.shape == (3, 32, 32) and canvas.amax() == 1.0  # still visible: a 32 x 1 line
    assert [w.category for w in caught] == [ThinImageWarning]
    assert processor.is_thin(20000, 5) and not processor.is_thin(40, 10)
