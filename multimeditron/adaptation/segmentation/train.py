"""`multimeditron segment`'s run: the frozen expert's patch grids are computed once per image, a decoder trains on
them (cross-entropy + Dice loss, AdamW, warmup + cosine), the best epoch on val (mean of Dice and Jaccard) is
scored on test per class and a few test cases are drawn as overlay PNGs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multimeditron.adaptation.errors import AdaptationError, AdaptDataError
from multimeditron.adaptation.loop import LoopSettings, run_epochs
from multimeditron.adaptation.optim import param_groups
from multimeditron.adaptation.segmentation.decoders import build_decoder
from multimeditron.adaptation.segmentation.metrics import confusion_counts, dice_loss, segmentation_metrics
from multimeditron.data.images import ImageResolver
from multimeditron.data.segmentation_pairs import Pairs, SegmentationData
from multimeditron.experts.base import VisionExpert
from multimeditron.model.image_processing import fit_size
from multimeditron.probing.embed import ImageCanvases

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240]], dtype=np.uint8)


@dataclass
class SegmentSettings:
    decoder: str = "linear"
    num_classes: int | None = None  # None: the largest class id in the train masks + 1
    dice_weight: float = 1.0
    weight_decay: float = 1e-4
    overlays: int = 4


def read_mask(resolver: ImageResolver, value: Any, size: int) -> torch.Tensor:
    """A class-id mask (a black/white mask counts as 0/1) on the expert's canvas (long side resized to `size` by nearest neighbour, padded with 0),
    the same geometry as the image's canvas."""
    mask = resolver.load(value)
    array = np.asarray(mask.convert("L") if mask.mode not in ("L", "I", "I;16", "P") else mask)
    if array.max() == 255 and set(np.unique(array).tolist()) <= {0, 255}:
        array = (array > 0).astype(np.uint8)  # a binary mask saved as black/white
    image = Image.fromarray(array.astype(np.int32) if array.dtype != np.uint8 else array)
    w, h = image.size
    target = fit_size(w, h, size)
    if target != (w, h):
        image = image.resize(target, Image.Resampling.NEAREST)
    out = np.zeros((size, size), dtype=np.int64)
    top, left = (size - target[1]) // 2, (size - target[0]) // 2
    out[top:top + target[1], left:left + target[0]] = np.asarray(image, dtype=np.int64)
    return torch.from_numpy(out)


@torch.no_grad()
def encode_pairs(expert: VisionExpert, pairs: Pairs, folder: Path | None, layers: int, batch_size: int,
                 device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(canvases (N, 3, S, S), patch grids (N, L, D, g, g) of the last `layers` blocks, masks (N, S, S))."""
    if not expert.supports_layers:
        raise AdaptationError(f"{expert.expert_id}: segmentation needs intermediate patch tokens, which this expert "
                         f"does not give")
    expert = expert.to(device).eval()
    canvases_ds = ImageCanvases(pairs.images, expert.image_size, folder)
    resolver = ImageResolver(default_dir=folder)
    canvases, grids = [], []
    prefix = int(getattr(expert, "num_prefix_tokens", 1))
    for start in range(0, len(pairs), batch_size):
        batch = torch.stack([canvases_ds[i] for i in range(start, min(len(pairs), start + batch_size))])
        tokens = expert.encode_layers(expert.preprocess(batch.to(device)), layers)
        patches = [t[:, prefix:].float() for t in tokens]
        side = round(patches[0].shape[1] ** 0.5)
        if side * side != patches[0].shape[1]:
            raise ValueError(f"{expert.expert_id}: {patches[0].shape[1]} patch tokens are not a square grid")
        grids.append(torch.stack([p.transpose(1, 2).reshape(len(batch), -1, side, side) for p in patches], 1).cpu())
        canvases.append(batch)
    masks = torch.stack([read_mask(resolver, value, expert.image_size) for value in pairs.masks])
    return torch.cat(canvases), torch.cat(grids), masks


class _Segmenter(nn.Module):
    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, canvas: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        return self.decoder(list(grids.unbind(1)), canvas)


@torch.no_grad()
def predict(segmenter: _Segmenter, canvases: torch.Tensor, grids: torch.Tensor, batch_size: int,
            device: str) -> torch.Tensor:
    segmenter.to(device).eval()
    return torch.cat([segmenter(canvases[i:i + batch_size].to(device), grids[i:i + batch_size].to(device))
                      .argmax(1).cpu() for i in range(0, len(canvases), batch_size)])


def overlay_png(canvas: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, path: Path) -> None:
    """image | ground truth over the image | prediction over the image, classes in a fixed palette."""
    image = (canvas.permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    def blend(mask: torch.Tensor) -> np.ndarray:
        colours = PALETTE[mask.numpy() % len(PALETTE)]
        alpha = (mask.numpy() > 0)[..., None] * 0.5
        return (image * (1 - alpha) + colours * alpha).astype(np.uint8)

    Image.fromarray(np.concatenate([image, blend(truth), blend(pred)], axis=1)).save(path)


def segment(expert: VisionExpert, data: SegmentationData, out_dir: str | Path, loop: LoopSettings,
            settings: SegmentSettings, spec_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the decoder, keep the best epoch on val, score it on test; writes `OUT/decoder.safetensors`,
    `OUT/segmentation.json` (settings, history, val/test metrics) and `OUT/overlays/*.png`."""
    from safetensors.torch import load_model, save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    expert.requires_grad_(False)
    layers = 4 if settings.decoder == "unet" else 1
    encoded = {s: encode_pairs(expert, data.splits[s], data.folder, layers, loop.batch_size, loop.device)
               for s in ("train", "val", "test")}
    num_classes = settings.num_classes or int(encoded["train"][2].max()) + 1
    if num_classes < 2:
        raise AdaptDataError(f"{data.name}: the train masks hold only class 0 (background); nothing to segment")
    too_big = {s: int(e[2].max()) for s, e in encoded.items() if int(e[2].max()) >= num_classes}
    if too_big:
        raise AdaptDataError(f"{data.name}: masks hold class ids up to {too_big} but there are {num_classes} classes")
    classes = ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    width = encoded["train"][1].shape[2]
    torch.manual_seed(loop.seed)
    segmenter = _Segmenter(build_decoder(settings.decoder, width, num_classes))
    groups = param_groups(nn.Identity(), segmenter, settings.weight_decay)

    def loss_fn(module: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        canvas, grids, mask = batch
        logits = module(canvas, grids).float()
        return F.cross_entropy(logits, mask) + settings.dice_weight * dice_loss(logits, mask)

    def evaluate(split: str) -> dict[str, Any]:
        canvases, grids, masks = encoded[split]
        pred = predict(segmenter, canvases, grids, loop.batch_size, loop.device)
        return segmentation_metrics(confusion_counts(pred, masks, num_classes), classes)

    def on_epoch_end(epoch: int, record: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        metrics = evaluate("val")
        score = metrics["score"] if metrics["score"] is not None else -1.0
        if score > max((h["val_score"] for h in history), default=-np.inf):
            save_model(segmenter, str(out / "decoder.safetensors"))
        return {"val_score": score, "val_dice": metrics["dice"]}

    train = torch.utils.data.TensorDataset(*encoded["train"])
    history = run_epochs(segmenter, train, groups, loss_fn, loop, out, on_epoch_end=on_epoch_end,
                         desc=f"segment ({settings.decoder})")
    load_model(segmenter, str(out / "decoder.safetensors"))
    result = {"data": data.name, "decoder": settings.decoder, "classes": classes, "expert": spec_record,
              "settings": asdict(settings), "loop": loop.to_dict(), "history": history,
              "best_epoch": int(np.argmax([h["val_score"] for h in history])) + 1,
              "val": evaluate("val"), "test": evaluate("test")}
    (out / "segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
    canvases, grids, masks = encoded["test"]
    pred = predict(segmenter, canvases, grids, loop.batch_size, loop.device)
    (out / "overlays").mkdir(exist_ok=True)
    for i in range(min(settings.overlays, len(canvases))):
        overlay_png(canvases[i], masks[i], pred[i], out / "overlays" / f"test_{i:03d}.png")
    return result
