"""`benchmarks/mermed_pretraining.py --data textures`: the drawn texture splits are balanced one-hot labels over the
four kinds, grey (no per-image colour tint for the pretraining to keep), and the same for the same seed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mermed_pretraining.py"


def _module():
    spec = importlib.util.spec_from_file_location("mermed_pretraining", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_texture_splits_are_balanced_grey_and_seeded(tmp_path):
    from datasets import load_from_disk

    bench = _module()
    sizes = {"train": 8, "val": 4, "test": 4}
    bench.generate_texture_images(tmp_path / "a", sizes, seed=0, image_size=32)
    bench.generate_texture_images(tmp_path / "b", sizes, seed=0, image_size=32)
    a, b = load_from_disk(str(tmp_path / "a")), load_from_disk(str(tmp_path / "b"))
    for split, n in sizes.items():
        labels = np.stack([a[split][kind] for kind in bench.TEXTURES], axis=1)
        assert (labels.sum(1) == 1).all() and (labels.sum(0) == n // len(bench.TEXTURES)).all()
        assert a[split]["image"] == b[split]["image"]
    for kind in bench.TEXTURES:
        image = bench.draw_texture(np.random.default_rng(1), kind, 32).astype(float)
        means = image.mean((0, 1))
        assert np.ptp(means) < 0.02 * 255, (kind, means)  # channels differ by noise only
