"""Inference sees what training saw: the same stored files (EXIF-rotated JPEG, 16-bit PNG, RGBA, LA, transparent GIF,
float TIFF, DICOM) through every entry point (training, `generate`, `eval`, the lmms-eval model, the benchmark readers,
both converters, the processor) give identical `pixel_values`, relative paths resolving against the data's folder;
with either canvas geometry (`pad`, and `center_crop` as the saved processor config names it)."""
from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from multimeditron.cli import main
from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data.convert import convert_image_folder, convert_llava
from multimeditron.data.dataset import build_sft_datasets
from multimeditron.data.schema import image_modality, make_row
from multimeditron.evaluation.data import decode_image, slake_image
from multimeditron.inference import load_pretrained
from multimeditron.model.processing import MultiMeditronProcessor
from tests.data.test_images import dicom_bytes
from tests.evaluation.conftest import checkpoint  # noqa: F401 (fixture)

NAMES = ["a_exif.jpg", "b_deep.png", "c_rgba.png", "d_la.png", "e_clear.gif", "f_float.tif", "g_scan.dcm"]


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _files() -> dict[str, bytes]:
    """Each a format `Image.open(x).convert("RGB")` gets wrong; sizes are not square, so padding matters too."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (18, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    deep = Image.fromarray(rng.integers(1000, 3000, (20, 14), dtype=np.uint16))
    rgba = Image.fromarray(rng.integers(0, 255, (16, 24, 4), dtype=np.uint8), "RGBA")
    la = Image.fromarray(rng.integers(0, 255, (22, 12, 2), dtype=np.uint8), "LA")
    palette = Image.fromarray(rng.integers(0, 4, (12, 20), dtype=np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200])
    floats = Image.fromarray(rng.normal(0.0, 0.01, (14, 26)).astype(np.float32), "F")  # values far below 1
    return {"a_exif.jpg": _encode(rgb, "JPEG", exif=exif.tobytes()), "b_deep.png": _encode(deep, "PNG"),
            "c_rgba.png": _encode(rgba, "PNG"), "d_la.png": _encode(la, "PNG"),
            "e_clear.gif": _encode(palette, "GIF", transparency=1), "f_float.tif": _encode(floats, "TIFF"),
            "g_scan.dcm": dicom_bytes(rng.integers(0, 4000, (16, 10)).astype(np.uint16), RescaleSlope="1",
                                      RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")}


class Recorder:
    """Every `pixel_values` the processor produces, in call order."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[torch.Tensor] = []
        original = MultiMeditronProcessor.__call__

        def call(processor, *args, **kwargs):
            batch = original(processor, *args, **kwargs)
            self.seen.append(batch["pixel_values"].clone())
            return batch

        monkeypatch.setattr(MultiMeditronProcessor, "__call__", call)

    def take(self) -> torch.Tensor:
        pixels, self.seen = torch.cat(self.seen), []
        return pixels


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A dataset folder holding the files under imgs/ and one MultiMediset row naming them by relative path."""
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("entry_points")
    (root / "data" / "imgs").mkdir(parents=True)
    for name, data in _files().items():
        (root / "data" / "imgs" / name).write_bytes(data)
    question = " ".join(["<|image|>"] * len(NAMES)) + "\nIs it normal?"
    row = make_row([image_modality(path=f"imgs/{name}") for name in NAMES],
                   [{"role": "user", "content": question}, {"role": "assistant", "content": "yes"}])
    Dataset.from_list([row]).save_to_disk(str(root / "data" / "set"))
    return root


@pytest.fixture(params=["pad", "center_crop"])
def saved(request, checkpoint, tmp_path_factory):  # noqa: F811
    """(geometry, model folder): the evaluation checkpoint, or its copy saved with centre-crop geometry."""
    if request.param == "pad":
        return request.param, checkpoint
    directory = tmp_path_factory.mktemp("center_crop")
    model, processor = load_pretrained(checkpoint)
    model.config.image_geometry = processor.image_processor.geometry = "center_crop"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return request.param, str(directory)


def test_every_entry_point_gives_the_pixels_training_gives(stored, saved, monkeypatch, tmp_path):
    geometry, checkpoint = saved  # noqa: F811 (the folder, not the fixture)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # relative paths must resolve against the data's folder, not the current one
    model, processor = load_pretrained(checkpoint)
    assert processor.image_processor.geometry == geometry  # read back from the saved processor config
    files = stored / "data" / "imgs"
    # the data sits next to its images: relative paths are relative to the dataset folder
    (stored / "data" / "set" / "imgs").mkdir(exist_ok=True)
    for name in NAMES:
        (stored / "data" / "set" / "imgs" / name).write_bytes((files / name).read_bytes())

    section = DataSection(train=[DatasetEntry(str(stored / "data" / "set"))], max_sequence_length=512)
    training = build_sft_datasets(section, processor, seed=0).train[0]["pixel_values"]
    assert training.shape == (len(NAMES), 3, processor.image_size, processor.image_size)
    # what the old inference decoder got wrong is right here: rotation applied, 16-bit and float data visible
    assert training[0].shape[-1] == processor.image_size
    for index in (1, 5):
        assert training[index].amax() > 0.9, NAMES[index]
    # the sideways 30x18 photo, upright 18 wide: padded, its canvas has black columns; cropped, none
    black_columns = int((training[0].abs().sum(dim=(0, 1)) == 0).sum())
    assert (black_columns > 0) == (geometry == "pad")

    record = Recorder(monkeypatch)
    # a file named on the command line is taken as written, relative to the current folder (`../` included)
    (tmp_path / "relative").mkdir()
    for name in NAMES:
        (tmp_path / "relative" / name).write_bytes((files / name).read_bytes())
    args = ["generate", "--model", checkpoint, "--prompt", "Is it normal?", "--max-new-tokens", "1"]
    assert main(args + [item for name in NAMES for item in ("--image", str(Path("../relative") / name))]) == 0
    entry_points = {"generate": record.take()}

    assert main(["eval", "--model", checkpoint, "--task", "multimediset", "--data", str(stored / "data" / "set"),
                 "--max-new-tokens", "1", "--out", str(tmp_path / "eval.json")]) == 0
    entry_points["eval multimediset"] = record.take()

    # lmms-eval: the model class over the task's own doc_to_messages (rows read from $MMD_MULTIMEDISET_DATA)
    from lmms_eval.api.instance import Instance

    from multimeditron.evaluation import lmms_tasks
    from multimeditron.evaluation.lmms_model import MultiMeditronLMMS

    monkeypatch.setenv("MMD_MULTIMEDISET_DATA", str(stored / "data" / "set"))
    lmms = MultiMeditronLMMS(pretrained=checkpoint, batch_size=1)
    lmms.task_dict = {"multimediset": {"test": lmms_tasks.multimediset_docs(None)}}
    request = Instance(request_type="generate_until", idx=0, metadata={"task": "multimediset", "doc_id": 0,
                                                                       "repeats": 1},
                       arguments=("", lmms_tasks.multimediset_doc_to_messages, {"max_new_tokens": 1, "until": ["\n"]},
                                  0, "multimediset", "test"))
    lmms.generate_until([request])
    entry_points["lmms-eval model"] = record.take()

    # benchmark readers: GMAI's base64 text, PathVQA's {bytes, path}, SLAKE's image folder and imgs.zip
    data = {name: (files / name).read_bytes() for name in NAMES}
    entry_points["gmai base64"] = torch.stack(
        [processor.image_to_canvas(decode_image(base64.b64encode(data[n]).decode())) for n in NAMES])
    entry_points["pathvqa bytes"] = torch.stack(
        [processor.image_to_canvas(decode_image({"bytes": data[n], "path": None})) for n in NAMES])
    monkeypatch.setenv("MMD_SLAKE_IMAGES", str(stored / "data"))
    entry_points["slake folder"] = torch.stack(
        [processor.image_to_canvas(slake_image(f"imgs/{n}", "unused")) for n in NAMES])
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as archive:
        for name in NAMES:
            archive.writestr(f"imgs/{name}", data[name])
    monkeypatch.setenv("MMD_SLAKE_IMAGES", str(tmp_path / "imgs.zip"))
    entry_points["slake zip"] = torch.stack([processor.image_to_canvas(slake_image(n, "unused")) for n in NAMES])

    # converters: their datasets (bytes embedded) read back by training and by `eval`
    records = [{"id": "0", "image": [f"imgs/{n}" for n in NAMES],
                "conversations": [{"from": "human", "value": "<image>" * len(NAMES) + "\nIs it normal?"},
                                  {"from": "gpt", "value": "yes"}]}]
    (stored / "data" / "llava.json").write_text(json.dumps(records))
    convert_llava(stored / "data" / "llava.json", None, tmp_path / "llava", progress=False)
    section = DataSection(train=[DatasetEntry(str(tmp_path / "llava"))], max_sequence_length=512)
    entry_points["convert llava -> training"] = build_sft_datasets(section, processor, seed=0).train[0]["pixel_values"]
    for name in NAMES:
        (tmp_path / "folder" / "test" / "cls").mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / "test" / "cls" / name).write_bytes(data[name])
    convert_image_folder(tmp_path / "folder", tmp_path / "folder_set", progress=False)
    record.seen.clear()
    assert main(["eval", "--model", checkpoint, "--task", "synthetic_vqa", "--data", str(tmp_path / "folder_set"),
                 "--batch-size", "1", "--max-new-tokens", "1"]) == 0
    entry_points["convert image-folder -> eval"] = record.take()

    # the processor itself, given what Image.open returns (everything but DICOM, which Pillow cannot open)
    opened = [Image.open(files / n) for n in NAMES[:-1]]
    text = " ".join([processor.attachment_token] * len(opened))
    entry_points["processor(Image.open)"] = torch.cat([processor(text, images=opened)["pixel_values"],
                                                       training[-1:]])

    for where, pixels in entry_points.items():
        assert pixels.shape == training.shape, where
        for index, name in enumerate(NAMES):
            assert torch.equal(pixels[index], training[index]), f"{where}: {name} differs from training"
