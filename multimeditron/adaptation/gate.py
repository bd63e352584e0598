"""`train-gate`: the modality gate of a mixture of experts (the published `scripts/image_router_train.py`): a timm
image classifier (ResNet-18/34/50 or any timm model) trained on images labelled by modality, on the engine, the
best epoch by val accuracy (ties: the lower val cross-entropy) written as a gate folder that `router: pretrained`
loads directly.

The gate folder is the published `GatingNetwork` layout (`config.json` with `model_type: gating_network`,
`num_classes`, `class_names`; `model.safetensors`, ResNet weights under `resnet.` as published, other timm models
under their own names) plus what rebuilds it without further keys (`arch`, `options`, `image_size`, `mean`, `std`)
and, when given, `class_experts` ({class name: expert name}), from which a VLM config derives `class_to_expert`
(`model.gate_classifier.complete_router_classifier`). The gate is trained through `GateClassifier.logits`, the
router's own resize and normalisation, so it sees in training what it sees in the router.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multimeditron.adaptation.engine import Schedule, epoch_history, train_objective
from multimeditron.adaptation.errors import AdaptationError
from multimeditron.adaptation.images import CanvasDataset, FirstImages
from multimeditron.adaptation.recipes import _Recipe
from multimeditron.data.labelled_images import LabelledImages, LabelledSplit
from multimeditron.experts.base import CLIP_MEAN, CLIP_STD
from multimeditron.model.gate_classifier import (
    PUBLISHED_MODEL_TYPE,
    PUBLISHED_PREFIX,
    GateClassifier,
    GateClassifierSpec,
    read_gate_record,
)
from multimeditron.probing.recipe import LabelledDataSection

GATE_FOLDER = "gate"


@dataclass
class GateSection:
    arch: str = "resnet50"  # any timm model name; published: --resnet_size 50 (18, 34, 50)
    options: dict[str, Any] = field(default_factory=dict)  # timm.create_model keyword arguments
    checkpoint: str | None = None  # start from: timm weights (the classifier is re-made) or an earlier gate folder
    image_size: int = 224  # published: ResNet transforms, 224 px
    # The router normalises with these; the published gate was used on CLIP-normalised images (its experts').
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    freeze_backbone: bool = False  # train the classifier layer only (the published script meant to; see cookbook)
    max_samples_per_class: int | None = 1000  # published default: the first N train images of each class
    augment: bool = False  # random resized crop + flip (published: none)
    label_smoothing: float = 0.0
    class_experts: dict[str, str] = field(default_factory=dict)  # class name -> expert name, stored in the folder

    def __post_init__(self) -> None:
        if self.max_samples_per_class is not None and self.max_samples_per_class < 1:
            raise ValueError(f"max_samples_per_class must be >= 1 or null, got {self.max_samples_per_class}")
        self.classifier_spec(num_classes=1)  # the router's own checks of arch and input, before any image is read

    def classifier_spec(self, num_classes: int) -> GateClassifierSpec:
        """The router's spec of this gate over `num_classes` classes (class i routes to "expert" i while it
        trains), checked by the router's one rule (`GateClassifierSpec.from_dict`)."""
        return GateClassifierSpec.from_dict({"class_to_expert": list(range(num_classes)), "arch": self.arch,
                                             "options": dict(self.options), "image_size": self.image_size,
                                             "mean": list(self.mean), "std": list(self.std)}, num_classes,
                                            where="gate")


@dataclass
class GateRecipe(_Recipe):
    data: LabelledDataSection
    gate: GateSection = field(default_factory=GateSection)
    # Published: a constant learning rate (no scheduler): no warm-up, no decay (min_lr None).
    schedule: Schedule = field(default_factory=lambda: Schedule(warmup_epochs=0.0, min_lr=None))
    training_args: dict[str, Any] = field(default_factory=dict)
    deepspeed: str | None = None
    # Published `image_router_train.py`: Adam, lr 1e-4, batch 16, 20 epochs, no weight decay.
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"output_dir": "runs/gate", "num_train_epochs": 20,
                                                   "per_device_train_batch_size": 16, "learning_rate": 1e-4,
                                                   "weight_decay": 0.0}


def load_gate_data(recipe: GateRecipe) -> LabelledImages:
    """The modality-labelled splits (an image folder, a table with a label column, or MultiMediset rows whose image
    column is `modalities`), with at most `max_samples_per_class` train images per class."""
    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.data.splits import ImageDataError, take_rows

    section = recipe.data
    try:
        data = load_labelled_images(section.path, image_column=section.image_column,
                                    label_columns=section.label_columns, split_column=section.split_column,
                                    val_fraction=section.val_fraction, seed=int(recipe.training_arguments()["seed"]),
                                    on_bad_image=section.on_bad_image, allow_overlap=section.allow_overlap)
    except ImageDataError as error:
        raise AdaptationError(f"data.path: {error}") from error
    if data.multilabel:
        raise AdaptationError(f"data.label_columns: a gate gives each image one modality; name one column "
                              f"(got {data.classes})")
    for split, part in data.splits.items():
        data.splits[split] = LabelledSplit(FirstImages(part.images), part.labels, part.groups)
    cap = recipe.gate.max_samples_per_class
    train = data.splits["train"]
    if cap is not None and np.bincount(train.labels).max(initial=0) > cap:
        rows = np.concatenate([np.flatnonzero(train.labels == c)[:cap] for c in range(len(data.classes))])
        rows.sort()
        data.splits["train"] = LabelledSplit(FirstImages(take_rows(train.images.values, rows)), train.labels[rows])
        data.notes.append(f"train capped at the first {cap} images of each class (gate.max_samples_per_class)")
    missing = [c for c in data.classes if c not in recipe.gate.class_experts] if recipe.gate.class_experts else []
    extra = sorted(set(recipe.gate.class_experts) - set(data.classes))
    if missing or extra:
        raise AdaptationError(f"gate.class_experts: maps {sorted(recipe.gate.class_experts)}, but the data's classes "
                              f"are {data.classes}" + (f" ({missing} unmapped)" if missing else "")
                              + (f" ({extra} not in the data)" if extra else ""))
    return data


def build_gate(section: GateSection, classes: list[str]) -> GateClassifier:
    """A gate over `classes` (class i routes to "expert" i while it trains), from `checkpoint` when given."""
    n = len(classes)
    gate = GateClassifier(section.classifier_spec(n), n)
    if section.checkpoint:
        record = read_gate_record(section.checkpoint)
        if record is not None:
            if record.get("class_names") != classes:
                raise AdaptationError(f"gate.checkpoint: the gate {section.checkpoint} has classes "
                                      f"{record.get('class_names')}, the data {classes}")
            gate.load_checkpoint(section.checkpoint)
        else:  # timm's loader drops a classifier of another size and resamples what it must
            import timm

            gate.model = timm.create_model(section.arch, pretrained=True, num_classes=n,
                                           pretrained_cfg_overlay={"file": section.checkpoint}, **section.options)
    if section.freeze_backbone:
        gate.model.requires_grad_(False)
        gate.model.get_classifier().requires_grad_(True)
    return gate


class GateObjective(nn.Module):
    """The gate and its cross-entropy as the engine's model: `forward(pixel_values, labels)` -> {"loss", "logits"}."""

    def __init__(self, gate: GateClassifier, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gate, self.smoothing = gate, label_smoothing

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.gate.logits(pixel_values)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels, label_smoothing=self.smoothing),
                "logits": logits}


def _canvases(data: LabelledImages, split: str, size: int, augment: bool = False, seed: int = 0) -> CanvasDataset:
    part = data.splits[split]
    return CanvasDataset(part.images, size, data.folder, part.labels, augment=augment, seed=seed)


# The best epoch: the highest val accuracy, ties broken by the lower val cross-entropy. The router adds up class
# probabilities per expert, so of two epochs that classify alike the more confident one routes better (a gate right
# but unsure sends images to another expert). The loss term stays below one image of accuracy for any val set up
# to 10^6 images (cross-entropy capped at 1000).
TIE_BREAK = 1e-10


def _accuracy(prediction: Any) -> dict[str, float]:
    logits = torch.as_tensor(np.asarray(prediction.predictions), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(prediction.label_ids), dtype=torch.long)
    accuracy = float((logits.argmax(dim=-1) == labels).double().mean())
    cross_entropy = float(F.cross_entropy(logits, labels))
    return {"accuracy": accuracy, "cross_entropy": cross_entropy,
            "score": accuracy - TIE_BREAK * min(cross_entropy, 1000.0)}


def save_gate(gate: GateClassifier, classes: list[str], folder: str | Path,
              class_experts: dict[str, str] | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """The gate folder `router: pretrained` loads (see the module docstring)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    spec = gate.spec
    # ResNets as the published GatingNetwork stores them (timm's ResNet names are torchvision's); others plain.
    prefix = PUBLISHED_PREFIX if spec.arch.startswith("resnet") else ""
    save_file({prefix + k: v.detach().cpu().contiguous() for k, v in gate.model.state_dict().items()},
              str(out / "model.safetensors"))
    config = {"model_type": PUBLISHED_MODEL_TYPE, "num_classes": len(classes), "class_names": list(classes),
              "arch": spec.arch, "options": spec.options, "image_size": spec.image_size, "mean": list(spec.mean),
              "std": list(spec.std), **({"class_experts": dict(class_experts)} if class_experts else {}),
              "provenance": provenance or {}}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out


def evaluate_gate(gate: GateClassifier, data: LabelledImages, split: str, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy and the confusion counts of `gate` on one split (one process; the gate in eval mode)."""
    loader = torch.utils.data.DataLoader(_canvases(data, split, gate.spec.image_size), batch_size=batch_size)
    was_training = gate.training
    gate.eval()
    predicted = []
    with torch.no_grad():
        for batch in loader:
            predicted.append(gate.logits(batch["pixel_values"]).argmax(-1))
    gate.train(was_training)
    labels = np.asarray(data.splits[split].labels)
    guesses = torch.cat(predicted).numpy() if predicted else np.zeros(0, dtype=np.int64)
    n = len(data.classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, guesses), 1)
    return {"accuracy": float((guesses == labels).mean()) if len(labels) else float("nan"), "images": len(labels),
            "confusion": confusion.tolist(), "classes": list(data.classes)}


def train_gate(data: LabelledImages, recipe: GateRecipe, *, processes: int = 1,
               callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train on the engine, keep the best epoch by val accuracy (ties: the lower cross-entropy) in `OUT/gate/`;
    returns the run's record (val and test accuracy, history), also written as `OUT/results.json` on the main
    process."""
    from multimeditron.training.arguments import training_arguments

    section = recipe.gate
    args = training_arguments(recipe.training_arguments(processes))
    torch.manual_seed(args.seed)  # the classifier's initialisation
    gate = build_gate(section, data.classes)
    objective = GateObjective(gate, section.label_smoothing)
    params = [p for p in gate.parameters() if p.requires_grad]
    groups = [{"params": params, "weight_decay": args.weight_decay}]
    trainer = train_objective(
        objective, _canvases(data, "train", section.image_size, section.augment, args.seed), args, groups,
        recipe.schedule, eval_dataset=_canvases(data, "val", section.image_size), compute_metrics=_accuracy,
        resume=args.resume_from_checkpoint, callbacks=callbacks, log_name="train-gate")
    history = epoch_history(trainer.state.log_history)
    best = max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None
    scored = {split: evaluate_gate(gate, data, split) for split in ("val", "test") if split in data.splits}
    record = {"command": "train-gate", "data": data.name, "classes": data.classes, "epoch": best,
              "class_experts": section.class_experts, "recipe": recipe.to_dict(), **scored,
              "trainable_parameters": sum(p.numel() for p in params), "history": history, "notes": data.notes,
              "refused": data.refused}
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        provenance = {"data": data.name, "epoch": best, **{f"{s}_accuracy": r["accuracy"] for s, r in scored.items()}}
        save_gate(gate, data.classes, out / GATE_FOLDER, section.class_experts, provenance)
        (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def gate_plan(recipe: GateRecipe, data: LabelledImages, processes: int = 1) -> str:
    from multimeditron.adaptation.plan import format_plan
    from multimeditron.experts.base import VisionExpert

    gate = build_gate(recipe.gate, data.classes)
    weight_decay = float(recipe.training_arguments(processes)["weight_decay"])
    groups = [{"params": [p for p in gate.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    lines = [f"data: {data.name}: {len(data.classes)} classes ({', '.join(data.classes)}); images: {sizes}",
             *(f"data note: {note}" for note in data.notes),
             f"gate: timm {recipe.gate.arch}, input {recipe.gate.image_size} px, freeze_backbone "
             f"{recipe.gate.freeze_backbone}, best epoch by val accuracy; class_experts "
             f"{recipe.gate.class_experts or '(none: the VLM config sets class_to_expert)'}"]

    class _Described(VisionExpert):  # format_plan describes an expert; the gate stands in for one
        image_size, mean, std = recipe.gate.image_size, tuple(recipe.gate.mean), tuple(recipe.gate.std)

        def describe(self) -> str:
            return f"gate {recipe.gate.arch} ({len(data.classes)} classes)"

    return format_plan("train-gate", recipe, lines, _Described(), groups,
                       ["checkpoint-*/ (resumable)", f"{GATE_FOLDER}/ (config.json + model.safetensors)",
                        "results.json"], processes)
