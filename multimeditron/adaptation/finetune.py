"""Supervised adaptation of an expert on labelled images (RETFound's `main_finetune.py`, DINOv2-on-radiology's
end-to-end, LoRA and BitFit runs): a head on the expert's global output, layer-wise lr decay, warmup + cosine,
drop path, label smoothing, optional mixup/cutmix (timm), class weights or a balanced sampler (multi-label data:
one sigmoid per label, BCE with per-label positive weights); the best epoch on val by a named metric goes to
`OUT/best/` (an adapted-expert folder plus `head.safetensors`), scored on test with part 1's metrics, tables and
plots.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multimeditron.adaptation.errors import AdaptationError
from multimeditron.adaptation.heads import Classifier, build_head, head_record
from multimeditron.adaptation.images import CanvasDataset
from multimeditron.adaptation.loop import LoopSettings, run_epochs
from multimeditron.adaptation.optim import param_groups
from multimeditron.adaptation.peft_methods import LoraSettings, merged_copy, prepare_expert
from multimeditron.adaptation.trunk import set_drop_path, vit_trunk
from multimeditron.data.labelled_images import LabelledImages
from multimeditron.experts.adapted import read_adapted_record, save_adapted_expert
from multimeditron.experts.base import ExpertSpec, VisionExpert
from multimeditron.probing.metrics import SELECTION_METRICS, classification_metrics, selection_value

HEAD_FILE = "head.safetensors"
BALANCE = ("none", "weights", "sampler")


@dataclass
class FinetuneSettings:
    adaptation: str = "finetune"  # finetune | lp | lora | bitfit
    layer_decay: float = 0.65  # finetune only; 1 = one rate for the whole expert
    drop_path: float = 0.2  # not for lp
    label_smoothing: float = 0.1
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    balance: str = "none"  # none | weights (inverse-frequency class weights) | sampler (balanced batches)
    weight_decay: float = 0.05
    augment: bool = True
    select_metric: str = "retfound"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.select_metric not in SELECTION_METRICS:
            raise AdaptationError(f"select metric {self.select_metric!r} is not one of {list(SELECTION_METRICS)}")
        if self.balance not in BALANCE:
            raise AdaptationError(f"balance {self.balance!r} is not one of {list(BALANCE)}")


def build_classifier(expert: VisionExpert, num_classes: int, settings: FinetuneSettings) -> Classifier:
    lp = settings.adaptation == "lp"
    prepare_expert(expert, settings.adaptation, settings.lora)
    if settings.drop_path and not lp:
        set_drop_path(vit_trunk(expert), settings.drop_path)
    head = build_head("bn_linear" if lp else "linear", expert.feature_dim, num_classes)
    return Classifier(expert, head, frozen_expert=lp)


@torch.no_grad()
def predict(classifier: Classifier, dataset: CanvasDataset, batch_size: int, device: str,
            multilabel: bool = False) -> np.ndarray:
    """Probabilities (n, C) of every image, in order: softmax over classes, or a sigmoid per label."""
    classifier.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    squash = torch.sigmoid if multilabel else (lambda logits: torch.softmax(logits, dim=-1))
    out = [squash(classifier(x.to(device)).float()).cpu() for x, _ in loader]
    return torch.cat(out).numpy()


def _loss_fn(settings: FinetuneSettings, num_classes: int, class_weights: torch.Tensor | None,
             multilabel: bool = False):
    if multilabel:
        # One binary cross-entropy per label; `class_weights` are then the positives' weights (pos_weight).
        binary = nn.BCEWithLogitsLoss(pos_weight=class_weights)
        return lambda module, batch: binary(module(batch[0]).float(), batch[1].float())
    if settings.mixup > 0 or settings.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                      label_smoothing=settings.label_smoothing, num_classes=num_classes)
        soft = SoftTargetCrossEntropy()

        def mixed(module: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            images, targets = mixup(*batch)
            return soft(module(images).float(), targets)

        return mixed
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=settings.label_smoothing)
    return lambda module, batch: criterion(module(batch[0]).float(), batch[1])


def _balance(labels: np.ndarray, num_classes: int, how: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(class weights for the loss, per-sample weights for the sampler), from the train class counts; for
    multi-label `labels` (n, C), `weights` gives each label's positives the weight negatives / positives."""
    if how == "none":
        return None, None
    if labels.ndim == 2:
        if how == "sampler":
            raise AdaptationError("balance sampler: multi-label data has no single class to balance; use weights")
        positives = labels.sum(axis=0).astype(np.float64)
        if (positives == 0).any():
            raise AdaptationError(f"balance weights: labels {np.flatnonzero(positives == 0).tolist()} have no "
                                  f"positive train image")
        return torch.tensor((len(labels) - positives) / positives, dtype=torch.float32), None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise AdaptationError(f"balance {how}: classes {missing} have no train image")
    per_class = torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)
    if how == "weights":
        return per_class, None
    return None, per_class[torch.as_tensor(labels)].double()


def save_checkpoint(classifier: Classifier, spec: ExpertSpec, folder: Path, record: dict[str, Any]) -> Path:
    """The adapted expert (LoRA merged) with its record, and the head beside it."""
    from safetensors.torch import save_file

    expert = merged_copy(classifier.expert).cpu()
    save_adapted_expert(expert, spec, folder, record)
    save_file({k: v.detach().cpu().contiguous() for k, v in classifier.head.state_dict().items()},
              str(folder / HEAD_FILE))
    return folder


def load_finetuned(folder: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """A fine-tuned run's `best/` (or `last/`, or the run folder itself) -> (classifier in eval mode, record)."""
    from safetensors.torch import load_file

    from multimeditron.experts.registry import build_expert

    folder = Path(folder)
    if (folder / "best" / HEAD_FILE).is_file():
        folder = folder / "best"
    if not (folder / HEAD_FILE).is_file():
        raise AdaptationError(f"{folder}: no {HEAD_FILE}; expected a folder written by `multimeditron finetune`")
    record = read_adapted_record(folder)
    head_info = record["provenance"]["head"]
    spec = record["spec"]
    expert = build_expert({"id": spec.id, "checkpoint": str(folder), "output": "cls"})
    head = build_head(head_info["kind"], head_info["width"], len(head_info["classes"]))
    head.load_state_dict(load_file(str(folder / HEAD_FILE)), strict=True)
    return Classifier(expert, head, frozen_expert=True).eval(), record


def evaluate_splits(classifier: Classifier, data: LabelledImages, splits: tuple[str, ...], batch_size: int,
                    device: str) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """split -> (probabilities, metrics) with part 1's `classification_metrics`."""
    out = {}
    for split in splits:
        part = data.splits[split]
        probs = predict(classifier, CanvasDataset(part.images, classifier.expert.image_size, data.folder),
                        batch_size, device, data.multilabel)
        out[split] = (probs, classification_metrics(part.labels, probs, multilabel=data.multilabel))
    return out


def finetune(expert: VisionExpert, spec: ExpertSpec, data: LabelledImages, out_dir: str | Path, loop: LoopSettings,
             settings: FinetuneSettings, *, resume: bool = False, name: str | None = None) -> dict[str, Any]:
    """Train, keep the best epoch on val in `OUT/best/`, score it on val and test; returns part 1's result dict
    (`probing.report.write_reports` writes it) with this run's history."""
    out = Path(out_dir)
    classes, train = data.classes, data.splits["train"]
    torch.manual_seed(loop.seed)  # the head's initialisation
    classifier = build_classifier(expert, len(classes), settings)
    class_weights, sample_weights = _balance(train.labels, len(classes), settings.balance)
    mixing = settings.mixup > 0 or settings.cutmix > 0
    if mixing and data.multilabel:
        raise AdaptationError(f"{data.name}: mixup/cutmix mix class ids; they do not apply to multi-label data")
    if mixing and loop.batch_size % 2:
        raise AdaptationError(f"mixup/cutmix mix pairs within a batch: --batch-size must be even, got {loop.batch_size}")
    dataset = CanvasDataset(train.images, expert.image_size, data.folder, train.labels, augment=settings.augment)
    val = CanvasDataset(data.splits["val"].images, expert.image_size, data.folder)
    layer_decay = settings.layer_decay if settings.adaptation == "finetune" else 1.0
    groups = param_groups(classifier.expert, classifier.head, settings.weight_decay, layer_decay)
    record_base = {"objective": "classification", **asdict(settings), "classes": classes, "data": data.name,
                   "head": head_record("bn_linear" if settings.adaptation == "lp" else "linear", expert.feature_dim,
                                       classes, data.multilabel), "loop": loop.to_dict()}
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in classifier.parameters())

    def on_epoch_end(epoch: int, record: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        probs = predict(classifier, val, loop.batch_size, loop.device, data.multilabel)
        metrics = classification_metrics(data.splits["val"].labels, probs, multilabel=data.multilabel)
        score = selection_value(metrics, settings.select_metric)
        best = max((h["score"] for h in history), default=-np.inf)
        if score > best:
            save_checkpoint(classifier, spec, out / "best",
                            {**record_base, "epoch": epoch + 1, "val": metrics, "score": score})
        return {"val": metrics, "score": score}

    loss_fn = _loss_fn(settings, len(classes), class_weights, data.multilabel)
    history = run_epochs(classifier, dataset, groups, loss_fn, loop, out, resume=resume, sample_weights=sample_weights,
                         on_epoch_end=on_epoch_end, desc=f"finetune ({settings.adaptation})", drop_last=mixing)
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    best, record = load_finetuned(out / "best")
    result = score_checkpoint(best, record, data, loop.batch_size, loop.device, out,
                              name or spec.id)
    result["runs"][0]["details"].update({"history": history, "trainable_parameters": trainable,
                                         "parameters": total})
    return result


def score_checkpoint(classifier: Classifier, record: dict[str, Any], data: LabelledImages, batch_size: int, device: str,
                     out_dir: str | Path | None, name: str) -> dict[str, Any]:
    """Val and test metrics of a saved classifier as part 1's result dict; with `out_dir`, the reports, the
    test predictions and the confusion-matrix / ROC plots are written there."""
    from multimeditron.probing.plots import confusion_png, roc_png
    from multimeditron.probing.report import write_reports

    provenance = record["provenance"]
    classes = provenance["head"]["classes"]
    if bool(provenance["head"].get("multilabel")) != data.multilabel:
        raise AdaptationError(f"{data.name}: {'multi-label' if data.multilabel else 'one-label'} data, but the "
                              f"checkpoint's head is {'multi-label' if provenance['head'].get('multilabel') else 'not'}")
    if list(classes) != list(data.classes):
        raise AdaptationError(f"{data.name}: classes {data.classes} differ from the checkpoint's {classes}")
    scored = evaluate_splits(classifier, data, ("val", "test"), batch_size, device)
    run = {"expert": name, "protocol": f"finetune:{provenance['adaptation']}",
           "chosen": {"epoch": provenance.get("epoch"), "select_metric": provenance.get("select_metric")},
           "val": scored["val"][1], "test": scored["test"][1], "details": {}, "notes": []}
    result = {"data": data.name, "classes": classes, "runs": [run], "comparisons": []}
    if out_dir is not None:
        out = Path(out_dir)
        write_reports(result, out)
        plots = out / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        probs, labels = scored["test"][0], data.splits["test"].labels
        title = f"{name} ({run['protocol']}), test"
        if not data.multilabel:
            confusion_png(labels, probs, classes, plots / "confusion_test.png", title)
        roc_png(labels, probs, classes, plots / "roc_test.png", title, multilabel=data.multilabel)
        np.savez(out / "test_predictions.npz", labels=labels, probabilities=probs)
    return result
