"""`multimeditron segment`'s run: the frozen expert's patch grids are computed once per image, a decoder trains on
them on the engine (cross-entropy + Dice loss, AdamW, warmup + cosine), the best epoch on val (mean of Dice and
Jaccard) is scored on test per class and a few test cases are drawn as overlay PNGs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multimeditron.adaptation.engine import epoch_history, train_objective
from multimeditron.adaptation.errors import AdaptationError, AdaptDataError
from multimeditron.adaptation.optim import param_groups
from multimeditron.adaptation.recipes import SegmentRecipe
from multimeditron.adaptation.segmentation.decoders import build_decoder
from multimeditron.adaptation.segmentation.metrics import (
    confusion_counts,
    confusion_matrix,
    dice_loss,
    monai_dice_loss,
    segmentation_metrics,
    torchmetrics_style_metrics,
)
from multimeditron.data.images import ImageResolver
from multimeditron.data.segmentation_pairs import Pairs, SegmentationData
from multimeditron.experts.base import VisionExpert
from multimeditron.model.image_processing import fit_size
from multimeditron.probing.embed import ImageCanvases

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240]], dtype=np.uint8)


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


class Segmenter(nn.Module):
    """The decoder and its loss as the engine's model: `forward(pixel_values, grids, labels)` -> {"loss", "logits"}
    with loss = cross-entropy + `dice_weight` x Dice loss (`loss` "ce+dice"), or monai's Dice loss alone ("dice",
    DINOv2-on-radiology's)."""

    def __init__(self, decoder: nn.Module, dice_weight: float = 1.0, loss: str = "ce+dice") -> None:
        super().__init__()
        self.decoder, self.dice_weight, self.loss = decoder, dice_weight, loss

    def forward(self, pixel_values: torch.Tensor, grids: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.decoder(list(grids.unbind(1)), pixel_values).float()
        if labels is None:
            return {"logits": logits}
        if self.loss == "dice":
            return {"loss": monai_dice_loss(logits, labels), "logits": logits}
        return {"loss": F.cross_entropy(logits, labels) + self.dice_weight * dice_loss(logits, labels),
                "logits": logits}


class EncodedPairs(torch.utils.data.Dataset):
    """(canvases, patch grids, masks) as the engine's batch keys."""

    def __init__(self, canvases: torch.Tensor, grids: torch.Tensor, masks: torch.Tensor) -> None:
        self.canvases, self.grids, self.masks = canvases, grids, masks

    def __len__(self) -> int:
        return len(self.canvases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.canvases[index], "grids": self.grids[index], "labels": self.masks[index]}


def _class_ids(logits: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    # Evaluation keeps each pixel's class, not its C logits: what is gathered across processes stays small.
    return logits.argmax(1)


def overlay_png(canvas: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, path: Path) -> None:
    """image | ground truth over the image | prediction over the image, classes in a fixed palette."""
    image = (canvas.permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    def blend(mask: torch.Tensor) -> np.ndarray:
        colours = PALETTE[mask.numpy() % len(PALETTE)]
        alpha = (mask.numpy() > 0)[..., None] * 0.5
        return (image * (1 - alpha) + colours * alpha).astype(np.uint8)

    Image.fromarray(np.concatenate([image, blend(truth), blend(pred)], axis=1)).save(path)


def segment(expert: VisionExpert, data: SegmentationData, recipe: SegmentRecipe,
            spec_record: dict[str, Any] | None = None, processes: int = 1) -> dict[str, Any]:
    """Train the decoder on the engine, keep the best epoch on val, score it on test; writes
    `OUT/decoder.safetensors`, `OUT/segmentation.json` (recipe, history, val/test metrics) and `OUT/overlays/*.png`."""
    from safetensors.torch import save_model

    from multimeditron.training.arguments import training_arguments

    args = training_arguments(recipe.training_arguments(processes))
    method = recipe.segment
    out = Path(args.output_dir)
    expert.requires_grad_(False)
    layers = int(build_decoder(method.decoder, 8, 2).layers)  # blocks the decoder reads
    device = str(args.device)
    encoded = {s: encode_pairs(expert, data.splits[s], data.folder, layers, args.per_device_eval_batch_size, device)
               for s in ("train", "val", "test")}
    num_classes = method.num_classes or int(encoded["train"][2].max()) + 1
    if num_classes < 2:
        raise AdaptDataError(f"{data.name}: the train masks hold only class 0 (background); nothing to segment")
    too_big = {s: int(e[2].max()) for s, e in encoded.items() if int(e[2].max()) >= num_classes}
    if too_big:
        raise AdaptDataError(f"{data.name}: masks hold class ids up to {too_big} but there are {num_classes} classes")
    classes = ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    width = encoded["train"][1].shape[2]
    torch.manual_seed(args.seed)
    segmenter = Segmenter(build_decoder(method.decoder, width, num_classes), method.dice_weight, method.loss)
    groups = param_groups(nn.Identity(), segmenter, args.weight_decay)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        metrics = segmentation_metrics(confusion_counts(torch.as_tensor(prediction.predictions),
                                                        torch.as_tensor(prediction.label_ids), num_classes), classes)
        scalars = {k: float(metrics[k]) for k in ("dice", "jaccard") if metrics[k] is not None}
        return {**scalars, "score": float(metrics["score"]) if metrics["score"] is not None else -1.0}

    trainer = train_objective(segmenter, EncodedPairs(*encoded["train"]), args, groups, recipe.schedule,
                              eval_dataset=EncodedPairs(*encoded["val"]), compute_metrics=compute_metrics,
                              preprocess_logits_for_metrics=_class_ids, resume=args.resume_from_checkpoint)
    history = epoch_history(trainer.state.log_history)

    def evaluate(split: str) -> tuple[torch.Tensor, dict[str, Any]]:
        pred = torch.as_tensor(trainer.predict(EncodedPairs(*encoded[split])).predictions)
        return pred, segmentation_metrics(confusion_counts(pred, encoded[split][2], num_classes), classes)

    val, test = evaluate("val"), evaluate("test")
    result = {"data": data.name, "decoder": method.decoder, "classes": classes, "expert": spec_record,
              "recipe": recipe.to_dict(), "history": history,
              "best_epoch": max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None,
              "val": val[1], "test": test[1]}
    if method.paper_metrics == "dinov2_radiology":
        result["paper_metrics"] = {split: torchmetrics_style_metrics(
            confusion_matrix(pred, encoded[split][2], num_classes), classes) for split, pred in
            (("val", val[0]), ("test", test[0]))}
    if trainer.is_world_process_zero():
        save_model(segmenter.decoder, str(out / "decoder.safetensors"))
        (out / "segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "overlays").mkdir(exist_ok=True)
        canvases, _, masks = encoded["test"]
        for i in range(min(method.overlays, len(canvases))):
            overlay_png(canvases[i], masks[i], test[0][i], out / "overlays" / f"test_{i:03d}.png")
    return result


def segment_plan(recipe: SegmentRecipe, data: SegmentationData, expert: VisionExpert, processes: int = 1) -> str:
    """The dry run: the decoder is sized from the expert's width (its class count from the recipe, or 2 until
    the train masks are read, which the run does)."""
    from multimeditron.adaptation.plan import format_plan

    method = recipe.segment
    width = int(expert.feature_dim)
    decoder = build_decoder(method.decoder, width, method.num_classes or 2)
    weight_decay = float(recipe.training_arguments(processes)["weight_decay"])
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    data_lines = [f"data: {data.name}: image/mask pairs: {sizes}",
                  f"method: {method.decoder} decoder on the frozen expert, classes "
                  f"{method.num_classes or 'from the train masks'}, loss "
                  + ("Dice only (monai DiceLoss, softmax, background included)" if method.loss == "dice" else
                     f"cross-entropy + {method.dice_weight:g} x Dice")
                  + (f"; also reports {method.paper_metrics}'s torchmetrics-style Dice/Jaccard (background "
                     f"ignored)" if method.paper_metrics else "")]
    return format_plan("segment", recipe, data_lines, expert, param_groups(nn.Identity(), decoder, weight_decay),
                       ["checkpoint-*/", "decoder.safetensors", "segmentation.json", "overlays/"], processes)
