"""What an interrupted adaptation run needs to continue exactly where it stopped: the training module's weights,
the optimiser state and the progress record, saved at the end of each epoch in `OUT/last/`.

Every epoch reseeds torch, numpy and Python from (seed, epoch), so a resumed run draws the same batches,
augmentations and corruptions as an uninterrupted one and ends with the same weights.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

MODULE_FILE = "training_state.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
PROGRESS_FILE = "progress.json"


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed every generator for `epoch`; returns a generator for the data order."""
    value = (seed * 100_003 + epoch) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def save_state(folder: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
               progress: dict[str, Any]) -> Path:
    from safetensors.torch import save_model

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_model(module, str(out / MODULE_FILE))
    torch.save(optimizer.state_dict(), out / OPTIMIZER_FILE)
    (out / PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")
    return out


def has_state(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in (MODULE_FILE, OPTIMIZER_FILE, PROGRESS_FILE))


def load_state(folder: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore `module` and `optimizer` from `folder` (strict); returns the progress record."""
    from safetensors.torch import load_model

    folder = Path(folder)
    if not has_state(folder):
        raise FileNotFoundError(f"{folder}: no resumable state ({MODULE_FILE}, {OPTIMIZER_FILE}, {PROGRESS_FILE})")
    load_model(module, str(folder / MODULE_FILE), strict=True)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    return json.loads((folder / PROGRESS_FILE).read_text())
