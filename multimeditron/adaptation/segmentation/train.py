"""`multimeditron segment`'s run: the frozen expert's patch grids are computed once per image, a decoder trains on
them on the engine (cross-entropy + Dice loss, AdamW, warmup + cosine), the best epoch on val (mean of Dice and
Jaccard, on the canvas) is scored on val and test per class at each mask's own resolution, and a few test cases are
drawn as overlay PNGs."""
from __future__ import annotations

import json
from dataclasses import dataclass
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
    IGNORED,
    confusion_counts,
    confusion_matrix,
    counts_from_confusion,
    dice_loss,
    monai_dice_loss,
    segmentation_metrics,
    torchmetrics_style_metrics,
)
from multimeditron.data.segmentation_pairs import SegmentationData
from multimeditron.experts.base import VisionExpert
from multimeditron.model.image_processing import fit_size
from multimeditron.probing.embed import ImageCanvases

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240]], dtype=np.uint8)


def canvas_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an image's content on the expert's square canvas (long side resized, short
    side padded: the model's `pad` geometry)."""
    w, h = fit_size(width, height, size)
    return (size - h) // 2, (size - w) // 2, h, w


def canvas_mask(ids: np.ndarray, size: int, ignore_index: int | None = None) -> torch.Tensor:
    """Class ids at the mask's own resolution -> the expert's canvas (nearest neighbour, the image's geometry); the
    padding and the `ignore_index` pixels become `IGNORED`."""
    ids = np.where(ids == ignore_index, IGNORED, ids) if ignore_index is not None else ids
    top, left, h, w = canvas_box(ids.shape[1], ids.shape[0], size)
    resized = np.asarray(Image.fromarray(ids.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
    out = np.full((size, size), IGNORED, dtype=np.int64)
    out[top:top + h, left:left + w] = resized
    return torch.from_numpy(out)


@dataclass
class Encoded:
    """One split on the expert: canvases (N, 3, S, S), patch grids (N, L, D, g, g) of the last `layers` blocks, the
    masks on the canvas (N, S, S) and at their own resolution (what the reported metrics are computed on)."""
    canvases: torch.Tensor
    grids: torch.Tensor
    masks: torch.Tensor
    native: list[np.ndarray]


@torch.no_grad()
def encode_pairs(expert: VisionExpert, data: SegmentationData, split: str, layers: int, batch_size: int,
                 device: str) -> Encoded:
    if not expert.supports_layers:
        raise AdaptationError(f"{expert.expert_id}: segmentation needs intermediate patch tokens, which this expert "
                              f"does not give")
    expert = expert.to(device).eval()
    pairs = data.splits[split]
    canvases_ds = ImageCanvases(pairs.images, expert.image_size, data.folder)
    canvases, grids = [], []
    prefix = int(getattr(expert, "num_prefix_tokens", 1))
    for start in range(0, len(pairs), batch_size):
        batch = torch.stack([canvases_ds[i] for i in range(start, min(len(pairs), start + batch_size))])
        tokens = expert.encode_layers(expert.preprocess(batch.to(device)), layers)
        patches = [t[:, prefix:].float() for t in tokens]
        side = round(patches[0].shape[1] ** 0.5)
        if side * side != patches[0].shape[1]:
            raise AdaptationError(f"{expert.expert_id}: {patches[0].shape[1]} patch tokens are not a square grid")
        grids.append(torch.stack([p.transpose(1, 2).reshape(len(batch), -1, side, side) for p in patches], 1).cpu())
        canvases.append(batch)
    ignore = None if data.rules.black_white else data.rules.ignore_index
    native = [data.read_mask(value, i) for i, value in enumerate(pairs.masks)]
    masks = torch.stack([canvas_mask(ids, expert.image_size, ignore) for ids in native])
    native = [np.where(ids == ignore, IGNORED, ids) if ignore is not None else ids for ids in native]
    return Encoded(torch.cat(canvases), torch.cat(grids), masks, native)


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
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORED) if (labels >= 0).any() else logits.sum() * 0
        return {"loss": loss + self.dice_weight * dice_loss(logits, labels), "logits": logits}


class EncodedPairs(torch.utils.data.Dataset):
    """(canvases, patch grids, canvas masks) as the engine's batch keys."""

    def __init__(self, encoded: Encoded) -> None:
        self.canvases, self.grids, self.masks = encoded.canvases, encoded.grids, encoded.masks

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
        colours = PALETTE[mask.clamp(min=0).numpy() % len(PALETTE)]
        alpha = (mask.numpy() > 0)[..., None] * 0.5
        return (image * (1 - alpha) + colours * alpha).astype(np.uint8)

    Image.fromarray(np.concatenate([image, blend(truth), blend(pred)], axis=1)).save(path)


@torch.no_grad()
def native_metrics(segmenter: Segmenter, encoded: Encoded, num_classes: int, classes: list[str], batch_size: int,
                   device: str | torch.device) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """(canvas predictions (N, S, S), metrics, confusion matrix (C, C)): each image's logits are cut to its content
    on the canvas, resized to its mask's own resolution (bilinear) and scored there, so experts of different input
    sizes are scored against the same ground truth and the padding is never counted."""
    segmenter = segmenter.eval()
    size = encoded.canvases.shape[-1]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    predictions = []
    for start in range(0, len(encoded.canvases), batch_size):
        rows = slice(start, start + batch_size)
        logits = segmenter(encoded.canvases[rows].to(device), encoded.grids[rows].to(device))["logits"].float()
        predictions.append(logits.argmax(1).cpu())
        for one, truth in zip(logits, encoded.native[rows]):
            top, left, h, w = canvas_box(truth.shape[1], truth.shape[0], size)
            content = one[:, top:top + h, left:left + w].unsqueeze(0)
            pred = F.interpolate(content, size=truth.shape, mode="bilinear", align_corners=False)[0].argmax(0)
            confusion += confusion_matrix(pred.cpu(), torch.from_numpy(truth), num_classes)
    return torch.cat(predictions), segmentation_metrics(counts_from_confusion(confusion), classes), confusion


def segment(expert: VisionExpert, data: SegmentationData, recipe: SegmentRecipe,
            spec_record: dict[str, Any] | None = None, processes: int = 1) -> dict[str, Any]:
    """Train the decoder on the engine, keep the best epoch on val, score it on val and test at each mask's own
    resolution; writes `OUT/decoder.safetensors`, `OUT/segmentation.json` (recipe, history, val/test metrics,
    refused files) and `OUT/overlays/*.png`."""
    from safetensors.torch import save_model

    from multimeditron.training.arguments import training_arguments

    args = training_arguments(recipe.training_arguments(processes))
    method = recipe.segment
    out = Path(args.output_dir)
    expert.requires_grad_(False)
    layers = int(build_decoder(method.decoder, 8, 2).layers)  # blocks the decoder reads
    device = str(args.device)
    num_classes = int(data.num_classes or 0)
    if num_classes < 2:
        raise AdaptDataError(f"{data.name}: the masks were not checked (segmentation_pairs.check_masks)")
    encoded = {s: encode_pairs(expert, data, s, layers, args.per_device_eval_batch_size, device)
               for s in ("train", "val", "test")}
    classes = ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    width = encoded["train"].grids.shape[2]
    torch.manual_seed(args.seed)
    segmenter = Segmenter(build_decoder(method.decoder, width, num_classes), method.dice_weight, method.loss)
    groups = param_groups(nn.Identity(), segmenter, args.weight_decay)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        # The epoch's val score on the canvas (padding and ignored pixels left out); the reported scores are
        # computed at each mask's own resolution (`native_metrics`).
        metrics = segmentation_metrics(confusion_counts(torch.as_tensor(prediction.predictions),
                                                        torch.as_tensor(prediction.label_ids), num_classes), classes)
        scalars = {k: float(metrics[k]) for k in ("dice", "jaccard") if metrics[k] is not None}
        return {**scalars, "score": float(metrics["score"]) if metrics["score"] is not None else -1.0}

    trainer = train_objective(segmenter, EncodedPairs(encoded["train"]), args, groups, recipe.schedule,
                              eval_dataset=EncodedPairs(encoded["val"]), compute_metrics=compute_metrics,
                              preprocess_logits_for_metrics=_class_ids, resume=args.resume_from_checkpoint,
                              log_name="segment")
    history = epoch_history(trainer.state.log_history)
    val = native_metrics(segmenter, encoded["val"], num_classes, classes, args.per_device_eval_batch_size, device)
    test = native_metrics(segmenter, encoded["test"], num_classes, classes, args.per_device_eval_batch_size, device)
    result = {"data": data.name, "decoder": method.decoder, "classes": classes, "expert": spec_record,
              "recipe": recipe.to_dict(), "history": history,
              "best_epoch": max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None,
              "mask_rules": {"ignore_index": data.rules.ignore_index, "black_white": data.rules.black_white,
                             "palette": data.rules.palette},
              "pixels": data.pixels, "refused": data.refused, "notes": data.notes,
              "val": val[1], "test": test[1]}
    if method.paper_metrics == "dinov2_radiology":
        result["paper_metrics"] = {split: torchmetrics_style_metrics(scored[2], classes)
                                   for split, scored in (("val", val), ("test", test))}
    if trainer.is_world_process_zero():
        save_model(segmenter.decoder, str(out / "decoder.safetensors"))
        (out / "segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "overlays").mkdir(exist_ok=True)
        for i in range(min(method.overlays, len(encoded["test"].canvases))):
            overlay_png(encoded["test"].canvases[i], encoded["test"].masks[i], test[0][i],
                        out / "overlays" / f"test_{i:03d}.png")
    return result


def segment_plan(recipe: SegmentRecipe, data: SegmentationData, expert: VisionExpert, processes: int = 1) -> str:
    """The dry run: the decoder is sized from the expert's width (its class count from the recipe, or 2 until
    the train masks are read, which the run does)."""
    from multimeditron.adaptation.plan import format_plan

    method = recipe.segment
    width = int(expert.feature_dim)
    decoder = build_decoder(method.decoder, width, data.num_classes or 2)
    weight_decay = float(recipe.training_arguments(processes)["weight_decay"])
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    rules = data.rules
    data_lines = [f"data: {data.name}: image/mask pairs: {sizes}; {data.num_classes} classes "
                  f"({'declared' if method.num_classes else 'from the train masks'}); ignored pixels: "
                  f"{'none' if rules.black_white or rules.ignore_index is None else rules.ignore_index}",
                  *(f"data note: {note}" for note in data.notes),
                  f"method: {method.decoder} decoder on the frozen expert, loss "
                  + ("Dice only (monai DiceLoss, softmax, background included)" if method.loss == "dice" else
                     f"cross-entropy + {method.dice_weight:g} x Dice")
                  + "; Dice and Jaccard at each mask's own resolution"
                  + (f"; also reports {method.paper_metrics}'s torchmetrics-style Dice/Jaccard (background "
                     f"ignored)" if method.paper_metrics else "")]
    return format_plan("segment", recipe, data_lines, expert, param_groups(nn.Identity(), decoder, weight_decay),
                       ["checkpoint-*/", "decoder.safetensors", "segmentation.json", "overlays/"], processes)
