"""Per-class Dice and Jaccard over a whole split (intersections and sizes summed over its images), their means over
the foreground classes, and the segmentation score (the mean of mean Dice and mean Jaccard). Target pixels below 0
(`IGNORED`: the data's ignore index and the canvas padding) count nowhere: not in the loss, not in the metrics."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORED = -100  # a target pixel that counts nowhere (cross-entropy's own ignore_index)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, 3) per class: |pred & target|, |pred|, |target| over the batch's pixels whose target is not ignored."""
    out = torch.zeros(num_classes, 3, dtype=torch.float64)
    valid = target >= 0
    for c in range(num_classes):
        p, t = (pred == c) & valid, target == c
        out[c] = torch.tensor([(p & t).sum().item(), p.sum().item(), t.sum().item()], dtype=torch.float64)
    return out


def segmentation_metrics(counts: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Dice 2|P∩G|/(|P|+|G|) and Jaccard |P∩G|/|P∪G| per class (None when a class is absent from both);
    means over the foreground classes (class 0 is background) where defined."""
    per_class = {}
    for c, name in enumerate(classes):
        inter, p, t = counts[c].tolist()
        union = p + t - inter
        per_class[name] = ({"dice": 2 * inter / (p + t), "jaccard": inter / union, "pixels": int(t)}
                           if union > 0 else {"dice": None, "jaccard": None, "pixels": 0})
    foreground = [per_class[n] for n in classes[1:] if per_class[n]["dice"] is not None]
    if not foreground:
        return {"per_class": per_class, "dice": None, "jaccard": None, "score": None}
    dice = sum(m["dice"] for m in foreground) / len(foreground)
    jaccard = sum(m["jaccard"] for m in foreground) / len(foreground)
    return {"per_class": per_class, "dice": dice, "jaccard": jaccard, "score": (dice + jaccard) / 2}


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the soft Dice of the softmax over the foreground classes, pooled over the batch (this toolkit's Dice
    term; DINOv2-on-radiology's loss is `monai_dice_loss`), over the pixels whose target is not ignored."""
    valid = (target >= 0).unsqueeze(1).float()
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
    return 1 - dice[1:].mean() if logits.shape[1] > 1 else 1 - dice.mean()


def monai_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """monai's `DiceLoss(softmax=True, to_onehot_y=True)` at its defaults, which DINOv2-on-radiology trains with
    (`eval/segmentation/segmentation.py`): softmax, background included, Dice per image and class
    1 - (2 |P G| + 1e-5) / (|P| + |G| + 1e-5), averaged over images and classes. (monai is not a dependency; this
    follows its documented defaults: include_background=True, batch=False, smooth_nr = smooth_dr = 1e-5.) Ignored
    target pixels count nowhere."""
    valid = (target >= 0).unsqueeze(1).float()
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dims = (2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) pixel counts over the pixels whose target is not ignored, rows the true class, columns the predicted
    one."""
    valid = target.reshape(-1) >= 0
    index = target.reshape(-1)[valid].long() * num_classes + pred.reshape(-1)[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).double()


def counts_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """`confusion_counts`' (C, 3) |pred & target|, |pred|, |target| read from a (C, C) confusion matrix."""
    return torch.stack([confusion.diagonal(), confusion.sum(0), confusion.sum(1)], dim=1).double()


def torchmetrics_style_metrics(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """DINOv2-on-radiology's segmentation numbers (`eval/metrics.py`: torchmetrics `Dice` and
    `MulticlassJaccardIndex`, average macro, `ignore_index=0`): pixels whose TRUE class is background are left out
    entirely (a foreground prediction on background is no false positive), per class over the split, macro mean over
    the foreground classes that occur (truth or prediction). Ours (`segmentation_metrics`) counts every pixel."""
    kept = confusion[1:]  # rows of foreground truth only
    per_class = {}
    for c, name in enumerate(classes[1:], start=1):
        inter = float(kept[c - 1, c])
        truth = float(kept[c - 1].sum())
        predicted = float(kept[:, c].sum())
        union = truth + predicted - inter
        per_class[name] = ({"dice": 2 * inter / (truth + predicted), "jaccard": inter / union}
                           if union > 0 else {"dice": None, "jaccard": None})
    defined = [m for m in per_class.values() if m["dice"] is not None]
    return {"per_class": per_class,
            "dice": sum(m["dice"] for m in defined) / len(defined) if defined else None,
            "jaccard": sum(m["jaccard"] for m in defined) / len(defined) if defined else None,
            "definition": "torchmetrics Dice / MulticlassJaccardIndex, macro, ignore_index=0 (background-truth "
                          "pixels dropped), as DINOv2-on-radiology's eval/metrics.py"}
