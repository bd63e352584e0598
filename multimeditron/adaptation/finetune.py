"""Supervised adaptation of an expert on labelled images (RETFound's `main_finetune.py`, DINOv2-on-radiology's
end-to-end, LoRA and BitFit runs) on the engine (`adaptation.engine`): a head on the expert's global output,
layer-wise lr decay, warmup + cosine, drop path, label smoothing, optional mixup/cutmix (timm), class weights or a
balanced sampler (multi-label data: one sigmoid per label, BCE with per-label positive weights); the best epoch on
val by a named metric goes to `OUT/best/` (an adapted-expert folder plus `head.safetensors`), scored on test with
part 1's metrics (bootstrap intervals, per-label metrics for multi-label data), tables and plots.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multimeditron.adaptation.engine import epoch_history, train_objective
from multimeditron.adaptation.errors import AdaptationError
from multimeditron.adaptation.heads import Classifier, build_head, head_record
from multimeditron.adaptation.images import CanvasDataset, TimmDataset
from multimeditron.adaptation.optim import param_groups
from multimeditron.adaptation.peft_methods import merged_copy, prepare_expert
from multimeditron.adaptation.recipes import FinetuneRecipe, FinetuneSection
from multimeditron.adaptation.trunk import set_drop_path, vit_trunk
from multimeditron.data.labelled_images import LabelledImages
from multimeditron.experts.adapted import read_adapted_record, save_adapted_expert
from multimeditron.experts.base import ExpertSpec, VisionExpert
from multimeditron.probing.bootstrap import bootstrap_metrics, per_label_metrics
from multimeditron.probing.metrics import (
    classification_metrics,
    is_defined,
    selection_value,
)
from multimeditron.probing.specs import ParsedSpec

HEAD_FILE = "head.safetensors"


def build_classifier(expert: VisionExpert, num_classes: int, settings: FinetuneSection) -> Classifier:
    lp = settings.adaptation == "lp"
    prepare_expert(expert, settings.adaptation, settings.lora)
    if settings.drop_path and not lp:
        set_drop_path(vit_trunk(expert), settings.drop_path)
    head = build_head("bn_linear" if lp else "linear", expert.feature_dim, num_classes)
    return Classifier(expert, head, frozen_expert=lp)


class ClassificationObjective(nn.Module):
    """The classifier and its training loss as the engine's model: `forward(pixel_values, labels)` ->
    {"loss", "logits"}. Training batches are mixed (mixup/cutmix, timm) when the settings ask; evaluation batches
    never are. Multi-label data: one BCE per label, `class_weights` then weigh each label's positives."""

    def __init__(self, classifier: Classifier, settings: FinetuneSection, num_classes: int,
                 class_weights: torch.Tensor | None = None, multilabel: bool = False) -> None:
        super().__init__()
        self.classifier, self.multilabel, self.smoothing = classifier, multilabel, settings.loss_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.mixup = None
        if settings.mixing and not multilabel:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                               label_smoothing=settings.label_smoothing, num_classes=num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if labels is not None and self.training and self.mixup is not None:
            mixed, targets = self.mixup(pixel_values, labels)
            logits = self.classifier(mixed).float()
            loss = torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1).mean()
            return {"loss": loss, "logits": logits}
        logits = self.classifier(pixel_values).float()
        if labels is None:
            return {"logits": logits}
        if self.multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.class_weights)
        else:
            loss = nn.functional.cross_entropy(logits, labels, weight=self.class_weights,
                                               label_smoothing=self.smoothing)
        return {"loss": loss, "logits": logits}


def classifier_groups(classifier: Classifier, settings: FinetuneSection, weight_decay: float,
                      learning_rate: float) -> list[dict[str, Any]]:
    """The optimiser groups: layer-wise decay for `finetune`; with `settings.backbone_lr` every group of the
    expert (blocks, adapters, biases) scaled by backbone_lr / learning_rate, so the head runs at the learning rate
    and the expert at its own (a group's `lr_scale` is what the engine multiplies the schedule by)."""
    layer_decay = settings.layer_decay if settings.adaptation == "finetune" else 1.0
    groups = param_groups(classifier.expert, classifier.head, weight_decay, layer_decay)
    if settings.backbone_lr is None or settings.adaptation == "lp":
        return groups
    if learning_rate <= 0:
        raise AdaptationError("finetune.backbone_lr needs a positive training_args.learning_rate (the head's)")
    head = {id(p) for p in classifier.head.parameters()}
    ratio = settings.backbone_lr / learning_rate
    out = []
    for group in groups:  # a group may mix head and expert parameters (one weight-decay group without layer decay)
        own = [p for p in group["params"] if id(p) in head]
        expert = [p for p in group["params"] if id(p) not in head]
        out += [{**group, "params": own}] if own else []
        out += [{**group, "params": expert, "lr_scale": group.get("lr_scale", 1.0) * ratio}] if expert else []
    return out


def add_paper_metrics(run: dict[str, Any], name: str, data: LabelledImages,
                      scored: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> None:
    """`run["paper_metrics"]`: split -> [the paper's metric set, with the definitions it uses] (the layout `probe`
    writes, which `probing.report` turns into CSV rows and a table)."""
    from multimeditron.probing.paper_metrics import paper_metric_set

    run["paper_metrics"] = {split: [paper_metric_set(name, data.splits[split].labels, scored[split][0],
                                                     multilabel=data.multilabel, classes=list(data.classes))]
                            for split in ("val", "test")}


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax over classes, or a sigmoid per label."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)).numpy()


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
    """A fine-tuned run's `best/` (or the run folder itself) -> (classifier in eval mode, record)."""
    from safetensors.torch import load_file

    from multimeditron.experts.registry import build_expert

    folder = Path(folder)
    if (folder / "best" / HEAD_FILE).is_file():
        folder = folder / "best"
    if not (folder / HEAD_FILE).is_file():
        raise AdaptationError(f"--checkpoint {folder}: no {HEAD_FILE}; expected a run folder written by "
                              f"`multimeditron finetune` (or its best/)")
    try:
        record = read_adapted_record(folder)
        head_info = record["provenance"]["head"]
        spec = record["spec"]
        expert = build_expert({"id": spec.id, "checkpoint": str(folder), "output": "cls"})
        head = build_head(head_info["kind"], head_info["width"], len(head_info["classes"]))
        head.load_state_dict(load_file(str(folder / HEAD_FILE)), strict=True)
    except (KeyError, OSError, RuntimeError, ValueError) as error:
        raise AdaptationError(f"--checkpoint {folder}: cannot be loaded ({error})") from error
    return Classifier(expert, head, frozen_expert=True).eval(), record


def labelled_canvases(data: LabelledImages, split: str, size: int, augment: bool = False, seed: int = 0,
                      expert: VisionExpert | None = None, settings: FinetuneSection | None = None) -> CanvasDataset:
    """The split's images as the engine's dataset: the letterbox canvas (with its light augmentation), or with
    `settings.transform == "timm"` RETFound's timm transforms (training when `augment`, else evaluation), which
    need the `expert`'s size and normalisation."""
    part = data.splits[split]
    if settings is not None and settings.transform == "timm":
        if expert is None:
            raise ValueError("the timm transform needs the expert (its normalisation)")
        return TimmDataset(part.images, size, expert.mean, expert.std, settings.timm, data.folder, part.labels,
                           train=augment, seed=seed)
    return CanvasDataset(part.images, size, data.folder, part.labels, augment=augment, seed=seed)


def evaluate_splits(trainer: Any, data: LabelledImages, splits: tuple[str, ...], size: int,
                    expert: VisionExpert | None = None, settings: FinetuneSection | None = None, bootstrap: int = 0,
                    seed: int = 0) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """split -> (probabilities, metrics) with part 1's `classification_metrics`; the test metrics carry bootstrap
    intervals (`bootstrap` resamples, as `probe`'s). The predictions of every process are gathered by the engine
    (each image once, whatever the number of processes)."""
    out = {}
    for split in splits:
        logits = trainer.predict(labelled_canvases(data, split, size, expert=expert, settings=settings)).predictions
        probs = probabilities(logits, data.multilabel)
        labels = data.splits[split].labels
        if split == "test" and bootstrap:
            metrics = bootstrap_metrics(labels, probs, n_resamples=bootstrap, seed=seed, multilabel=data.multilabel)
        else:
            metrics = classification_metrics(labels, probs, multilabel=data.multilabel)
        out[split] = (probs, metrics)
    return out


def plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without their intervals (`value` of each bootstrap entry)."""
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in metrics.items()}


def _metrics_fn(select_metric: str, multilabel: bool):
    def compute(prediction: Any) -> dict[str, float]:
        metrics = classification_metrics(prediction.label_ids, probabilities(prediction.predictions, multilabel),
                                         multilabel=multilabel)
        scalars = {k: float(v) for k, v in metrics.items() if is_defined(v)}
        return {**scalars, "score": selection_value(metrics, select_metric)}
    return compute


def finetune(expert: VisionExpert, spec: ExpertSpec, data: LabelledImages, recipe: FinetuneRecipe, *,
             name: str | None = None, processes: int = 1, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train on the engine, keep the best epoch on val in `OUT/best/`, score it on val and test; returns part 1's
    result dict (`probing.report.write_reports` writes it, on the main process) with this run's history."""
    from multimeditron.training.arguments import training_arguments

    settings = recipe.finetune
    args = training_arguments(recipe.training_arguments(processes))
    out = Path(args.output_dir)
    classes, train = data.classes, data.splits["train"]
    torch.manual_seed(args.seed)  # the head's initialisation
    classifier = build_classifier(expert, len(classes), settings)
    class_weights, sample_weights = _balance(train.labels, len(classes), settings.balance)
    objective = ClassificationObjective(classifier, settings, len(classes), class_weights, data.multilabel)
    groups = classifier_groups(classifier, settings, args.weight_decay, args.learning_rate)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in classifier.parameters())
    trainer = train_objective(
        objective, labelled_canvases(data, "train", expert.image_size, settings.augment, args.seed, expert, settings),
        args, groups, recipe.schedule,
        eval_dataset=labelled_canvases(data, "val", expert.image_size, expert=expert, settings=settings),
        compute_metrics=_metrics_fn(settings.select_metric, data.multilabel), sample_weights=sample_weights,
        resume=args.resume_from_checkpoint, drop_last_train=settings.mixing, callbacks=callbacks,
        log_name="finetune")
    history = epoch_history(trainer.state.log_history)
    best_epoch = max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None
    scored = evaluate_splits(trainer, data, ("val", "test"), expert.image_size, expert, settings,
                             bootstrap=settings.bootstrap, seed=args.seed)
    record = {"objective": "classification", "adaptation": settings.adaptation, "select_metric": settings.select_metric,
              "recipe": recipe.to_dict(), "classes": classes, "data": data.name, "epoch": best_epoch,
              "val": plain(scored["val"][1]), "score": selection_value(plain(scored["val"][1]), settings.select_metric),
              "head": head_record("bn_linear" if settings.adaptation == "lp" else "linear", expert.feature_dim,
                                  classes, data.multilabel)}
    result = _result(name or spec.id, record, data, scored, settings.bootstrap, args.seed)
    result["runs"][0]["details"].update({"history": history, "trainable_parameters": trainable, "parameters": total})
    if settings.paper_metrics:
        add_paper_metrics(result["runs"][0], settings.paper_metrics, data, scored)
    if trainer.is_world_process_zero():
        save_checkpoint(classifier, spec, out / "best", record)
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        write_outputs(result, data, scored, out)
    return result


def _result(name: str, provenance: dict[str, Any], data: LabelledImages,
            scored: dict[str, tuple[np.ndarray, dict[str, Any]]], bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    run = {"expert": name, "protocol": f"finetune:{provenance['adaptation']}",
           "chosen": {"epoch": provenance.get("epoch"), "select_metric": provenance.get("select_metric")},
           "val": scored["val"][1], "test": scored["test"][1], "details": {}, "notes": []}
    if data.multilabel:
        run["per_label"] = per_label_metrics(data.splits["test"].labels, scored["test"][0], data.classes,
                                             n_resamples=bootstrap, seed=seed)
    return {"data": data.name, "classes": list(provenance["head"]["classes"]), "runs": [run], "comparisons": [],
            "notes": data.notes, "refused": data.refused}


def write_outputs(result: dict[str, Any], data: LabelledImages, scored: dict[str, tuple[np.ndarray, dict[str, Any]]],
                  out_dir: str | Path) -> None:
    """The reports (results.json/.csv/.md), the test predictions and the confusion-matrix / ROC plots."""
    from multimeditron.probing.plots import confusion_png, roc_png
    from multimeditron.probing.report import write_reports

    out = Path(out_dir)
    write_reports(result, out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    probs, labels = scored["test"][0], data.splits["test"].labels
    run = result["runs"][0]
    title = f"{run['expert']} ({run['protocol']}), test"
    if not data.multilabel:
        confusion_png(labels, probs, result["classes"], plots / "confusion_test.png", title)
    roc_png(labels, probs, result["classes"], plots / "roc_test.png", title, multilabel=data.multilabel)
    np.savez(out / "test_predictions.npz", labels=labels, probabilities=probs)


def score_checkpoint(classifier: Classifier, record: dict[str, Any], data: LabelledImages, args: Any,
                     name: str, bootstrap: int = 0, write: bool = True) -> dict[str, Any]:
    """Val and test metrics of a saved classifier as part 1's result dict, written to `args.output_dir`."""
    from transformers import Trainer

    provenance = record["provenance"]
    classes = provenance["head"]["classes"]
    if bool(provenance["head"].get("multilabel")) != data.multilabel:
        raise AdaptationError(f"{data.name}: {'multi-label' if data.multilabel else 'one-label'} data, but the "
                              f"checkpoint's head is {'multi-label' if provenance['head'].get('multilabel') else 'not'}")
    if list(classes) != list(data.classes):
        raise AdaptationError(f"{data.name}: classes {data.classes} differ from the checkpoint's {classes}")
    objective = ClassificationObjective(classifier, FinetuneSection(), len(classes), multilabel=data.multilabel)
    trainer = Trainer(model=objective, args=args)
    scored = evaluate_splits(trainer, data, ("val", "test"), classifier.expert.image_size, bootstrap=bootstrap,
                             seed=args.seed)
    result = _result(name, provenance, data, scored, bootstrap, args.seed)
    if write and trainer.is_world_process_zero():
        write_outputs(result, data, scored, args.output_dir)
    return result


def load_finetune_data(recipe: FinetuneRecipe) -> LabelledImages:
    """The labelled splits the recipe names (val carved from train when absent, seeded by the run's seed), every
    file checked by the recipe's `data.on_bad_image`."""
    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.data.splits import ImageDataError

    section = recipe.data
    try:
        return load_labelled_images(section.path, image_column=section.image_column,
                                    label_columns=section.label_columns, split_column=section.split_column,
                                    val_fraction=section.val_fraction, seed=int(recipe.training_arguments()["seed"]),
                                    on_bad_image=section.on_bad_image, allow_overlap=section.allow_overlap)
    except ImageDataError as error:
        raise AdaptationError(f"data.path: {error}") from error


def finetune_spec(recipe: FinetuneRecipe) -> ParsedSpec:
    """The recipe's expert, checked before anything heavy; `finetune.pool` becomes the family's `cls_pool` option
    (every family pools: class token, mean of patch tokens, mean of all tokens)."""
    from multimeditron.adaptation.experts import expert_spec, spec_text

    options = {"cls_pool": recipe.finetune.pool} if recipe.finetune.pool else {}
    return expert_spec(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny, options=options,
                       options_from="finetune.pool (--pool)")


def prepare_finetune_expert(recipe: FinetuneRecipe, parsed: ParsedSpec | None = None,
                            ) -> tuple[VisionExpert, ExpertSpec, str]:
    """(the expert to train, its resolved spec, the name its results carry); a random-weight expert is the seed's."""
    from multimeditron.adaptation.experts import load_expert

    parsed = parsed or finetune_spec(recipe)
    expert, spec = load_expert(parsed, seed=int(recipe.training_arguments()["seed"]))
    return expert, spec, parsed.name


def finetune_plan(recipe: FinetuneRecipe, data: LabelledImages, expert: VisionExpert, processes: int = 1) -> str:
    from multimeditron.adaptation.plan import format_plan

    settings = recipe.finetune
    classifier = build_classifier(expert, len(data.classes), settings)
    layer_decay = settings.layer_decay if settings.adaptation == "finetune" else 1.0
    values = recipe.training_arguments(processes)
    groups = classifier_groups(classifier, settings, float(values["weight_decay"]), float(values["learning_rate"]))
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    kind = "labels" if data.multilabel else "classes"
    data_lines = [f"data: {data.name}: {len(data.classes)} {kind} ({', '.join(data.classes)}); images: {sizes}",
                  *(f"data note: {note}" for note in data.notes),
                  f"method: {settings.adaptation}, layer decay {layer_decay:g}, drop path "
                  f"{settings.drop_path if settings.adaptation != 'lp' else 0:g}, label smoothing "
                  f"{settings.label_smoothing:g}{'' if settings.smoothing_applies == 'always' else ' (inside mixup/cutmix only)'}, "
                  f"mixup {settings.mixup:g}, cutmix {settings.cutmix:g}, balance "
                  f"{settings.balance}, augment {settings.augment}, best epoch by val {settings.select_metric}",
                  f"head on the {settings.pool or 'family'} output; optimiser {values.get('optim', 'adamw_torch')}"
                  + (f" ({values['optim_args']})" if values.get("optim_args") else "")
                  + (f", head lr {values['learning_rate']:.4g}, expert lr {settings.backbone_lr:.4g}"
                     if settings.backbone_lr is not None else "")
                  + (f"; LoRA r {settings.lora.r}, alpha {settings.lora.alpha}, dropout {settings.lora.dropout:g}, "
                     f"bias {settings.lora.bias}" if settings.adaptation == "lora" else ""),
                  _transform_line(settings, expert.image_size)
                  + (f"; also reports the {settings.paper_metrics} metric set" if settings.paper_metrics else "")]
    return format_plan("finetune", recipe, data_lines, expert, groups,
                       ["checkpoint-*/ (resumable)", "best/ (adapted expert + head)", "history.json",
                        "results.{json,csv,md}", "plots/", "test_predictions.npz"], processes)


def _transform_line(settings: FinetuneSection, size: int) -> str:
    if settings.transform == "canvas":
        return (f"images: letterbox canvas {size} px" + (", random resized crop (scale 0.5-1) + flip"
                                                         if settings.augment else ""))
    t = settings.timm
    crop_pct = t.crop_pct if t.crop_pct is not None else (224 / 256 if size <= 224 else 1.0)
    train = (f"random resized crop scale {t.scale[0]:g}-{t.scale[1]:g} + flip, RandAugment {t.auto_augment}, random "
             f"erasing {t.re_prob:g} ({t.re_mode})" if settings.augment else "the eval transform")
    return (f"images: timm create_transform {size} px ({t.interpolation}): train {train}; eval resize "
            f"{int(size / crop_pct)} + centre crop {size}")
