"""Fixtures for the evaluation tests: a tiny saved checkpoint whose answers vary with the image, and tiny local
copies of each benchmark written in that benchmark's own schema (images embedded)."""
from __future__ import annotations

import base64
import io

import pytest
import torch
from datasets import Dataset, Features, Image, Value

from tests.conftest import random_image, tiny_model


def lively_tiny_model():
    """The tiny Qwen3 model with larger random weights: a freshly built one only ever emits newlines."""
    model, processor = tiny_model()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and (name.startswith("language_model") or "proj" in name):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model, processor


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("checkpoint")
    model, processor = lively_tiny_model()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def write_gmai(path) -> None:
    """GMAI-MMBench: question, options in columns A-E (E empty on 4-option items), letter answer, base64 image."""
    rows = {"index": [0, 1, 2, 3], "question": ["Which organ is shown?", "What modality is this?",
                                                   "Is the finding benign?", "Which lesion is visible?"],
            "A": ["Liver", "CT", "Yes", "Cyst"], "B": ["Lung", "MRI", "No", "Tumor"],
            "C": ["Effusion", "Chest", "", "Stone"], "D": ["Kidney", "Ultrasound", None, "Polyp"],
            "E": ["Brain", None, None, None],
            "answer": ["B", "A", "A", "D"], "image": [base64.b64encode(png(s)).decode() for s in range(4)],
            "modality": ["CT", "MRI", "X-ray", "Endoscopy"]}
    Dataset.from_dict(rows).to_parquet(str(path))


def write_slake(path) -> None:
    """SLAKE: English and Chinese rows (Chinese first, so filtering must happen before --limit)."""
    rows = {"qid": [1, 2, 3, 4, 5, 6], "img_name": [f"xmlab{i}/source.jpg" for i in range(6)],
            "question": ["这是什么?", "有病变吗?", "Is this a CT?", "Which organ is abnormal?",
                         "How many kidneys are shown?", "Does the lung look healthy?"],
            "answer": ["CT", "是", "Yes", "Liver", "two", "No"],
            "q_lang": ["zh", "zh", "en", "en", "en", "en"],
            "answer_type": ["OPEN", "CLOSED", "CLOSED", "OPEN", "OPEN", "CLOSED"],
            "image": [{"bytes": png(10 + s), "path": None} for s in range(6)]}
    features = Features({"qid": Value("int64"), "img_name": Value("string"), "question": Value("string"),
                         "answer": Value("string"), "q_lang": Value("string"), "answer_type": Value("string"),
                         "image": Image()})
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


def write_pathvqa(path) -> None:
    """PathVQA: image (datasets Image feature), question, answer; yes/no and open questions."""
    rows = {"image": [{"bytes": png(20 + s), "path": None} for s in range(4)],
            "question": ["Is there necrosis?", "What is present?", "Are the cells atypical?", "Where is this from?"],
            "answer": ["yes", "granuloma", "no", "lung"]}
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.fixture(scope="session")
def task_data(tmp_path_factory) -> dict[str, str]:
    """{task name: local parquet path}."""
    directory = tmp_path_factory.mktemp("task_data")
    paths = {"mmd_gmai_mmbench": directory / "gmai_val.parquet", "mmd_slake": directory / "slake_test.parquet",
             "mmd_pathvqa": directory / "pathvqa_test.parquet"}
    write_gmai(paths["mmd_gmai_mmbench"])
    write_slake(paths["mmd_slake"])
    write_pathvqa(paths["mmd_pathvqa"])
    return {task: str(path) for task, path in paths.items()}
