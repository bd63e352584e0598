"""`train-expert --objective clip`: contrastive image-text training of a CLIP-family expert (the published
`scripts/expert_model_train.py`, `biomed_train.py`, `train_clip.py`) with open_clip's model and `ClipLoss`, on the
engine, from image-caption pairs: MultiMediset caption rows (`text`), conversation rows (the image and the first
assistant turn) or any table with an image and a caption column, one modality or all at once.

The expert is built by the registry (`biomedclip`, `clip` with the open_clip backend, their checkpoints or an
adapted folder); its OpenCLIP vision tower becomes the `visual` of an open_clip model whose text tower (and
tokenizer, logit scale) comes from the family's checkpoint (`contrastive.text`), so the expert trains in the very
module layout the registry loads. Evaluation on the held-out split: image->text and text->image recall@k (a
retrieval counts as correct when it finds any item with the same caption) and zero-shot classification of the
modality column; the best epoch by val mean recall@1 goes to `OUT/best/`, an adapted-expert folder (`expert.json`
+ `expert.safetensors`) with the text tower beside it (`contrastive_text.safetensors`, open_clip key names).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from multimeditron.adaptation.engine import Schedule, epoch_history, train_objective
from multimeditron.adaptation.errors import AdaptationError, AdaptDataError
from multimeditron.adaptation.images import CanvasDataset, FirstImages
from multimeditron.adaptation.recipes import ExpertSection, _Recipe
from multimeditron.data.bad_images import BadImagePolicy
from multimeditron.experts.base import ExpertSpec, VisionExpert

TEXT_FILE = "contrastive_text.safetensors"
TINY_TEXT = "tiny"  # `contrastive.text` of a tiny expert: open_clip's text transformer at width 32, 2 layers
TINY_TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_TOKENIZER = "ViT-B-32"  # open_clip's bundled BPE tokenizer (no download)
PLACEHOLDERS = ("<|image|>", "<attachment>")  # removed from captions (published: `.replace("<attachment>", "")`)
RECALL_KS = (1, 5, 10)


@dataclass
class CaptionDataSection:
    paths: list[str] = field(default_factory=list)  # MultiMediset datasets or tables (save_to_disk, parquet, arrow)
    image_column: str | None = None  # default: `image`, else the first image of `modalities`
    caption_column: str | None = None  # default: `text` (caption rows), else the first assistant turn
    modality_column: str = "modality"  # per-modality training and zero-shot classes, when the column exists
    modalities: list[str] = field(default_factory=list)  # keep these modalities only (one expert per modality)
    split_column: str = "split"
    val_fraction: float = 0.1  # published: train_test_split(test_size=0.1)
    max_samples: int | None = None  # per dataset and split, the first N rows
    on_bad_image: BadImagePolicy = "error"  # a file that cannot be read as an image: stop (error) or leave it out (skip)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


@dataclass
class ContrastiveSection:
    text: str | None = None  # open_clip model name or hf-hub id of the text tower + tokenizer; None: the family's
    text_pretrained: str | None = None  # its weights: an open_clip tag (openai) or a file; None: the family's
    train_vision: bool = True  # published train_clip.py: freeze_vision_model false
    train_text: bool = True  # published train_clip.py: freeze_text_model false
    context_length: int | None = None  # token length; None: the text tower's own (BiomedCLIP 256, CLIP 77)
    name: str | None = None  # the expert's name in a gate's class_experts; None: the modalities joined by `+`
    zero_shot_template: str = "A {}."  # the prompt of each modality class
    eval_before: bool = True  # score the held-out split before training too (the starting point)


@dataclass
class ContrastiveRecipe(_Recipe):
    data: CaptionDataSection
    expert: ExpertSection = field(default_factory=ExpertSection)
    objective: Literal["clip"] = "clip"
    contrastive: ContrastiveSection = field(default_factory=ContrastiveSection)
    # Published scripts: a constant learning rate (no scheduler).
    schedule: Schedule = field(default_factory=lambda: Schedule(warmup_epochs=0.0, min_lr=None))
    training_args: dict[str, Any] = field(default_factory=dict)
    deepspeed: str | None = None
    # Published expert_model_train.py / biomed_train.py: Adam(lr 5e-5, betas (0.9, 0.98), eps 1e-6, weight decay
    # 0.2), batch 16, 20 epochs.
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"output_dir": "runs/train-expert", "num_train_epochs": 20,
                                                   "per_device_train_batch_size": 16, "learning_rate": 5e-5,
                                                   "weight_decay": 0.2, "adam_beta1": 0.9, "adam_beta2": 0.98,
                                                   "adam_epsilon": 1e-6}

    def expert_name(self) -> str | None:
        return self.contrastive.name or ("+".join(self.data.modalities) if self.data.modalities else None)


# ---- data ---------------------------------------------------------------------------------------------------------
@dataclass
class CaptionSplit:
    images: Sequence[Any]
    captions: list[str]
    modalities: list[str | None]
    folders: list[Path | None]  # the folder relative image paths of each pair resolve against
    refused: list[dict[str, Any]] = field(default_factory=list)  # pairs left out under on_bad_image: skip

    def __len__(self) -> int:
        return len(self.captions)

    def fingerprint(self) -> str:
        """A digest of the pairs (each image's identity, `data.images.image_identity`, and its caption)."""
        import hashlib

        from multimeditron.data.images import image_identity

        digest = hashlib.blake2b(digest_size=16)
        for image, caption, folder in zip(self.images, self.captions, self.folders):
            digest.update(image_identity(image, folder) + caption.encode() + b"\0")
        return digest.hexdigest()


def _caption_of(row: dict[str, Any], column: str | None) -> str | None:
    if column is not None:
        text = row.get(column)
    elif row.get("text"):
        text = row["text"]
    else:
        turns = row.get("conversations") or []
        text = next((t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "assistant"), None)
    if not isinstance(text, str):
        return None
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, "")
    return text.strip() or None


def _tables(path: str) -> dict[str | None, Any]:
    from multimeditron.config import DatasetEntry
    from multimeditron.data.report import DataError
    from multimeditron.data.sources import load_source, split_names

    try:
        names = split_names(path)
        if names:
            return {n: load_source(DatasetEntry(path, split=n), n) for n in names}
        return {None: load_source(DatasetEntry(path), "train")}
    except DataError as error:
        raise AdaptDataError(f"data.paths: {path}: {error}") from error


def load_caption_pairs(section: CaptionDataSection, seed: int = 0) -> dict[str, CaptionSplit]:
    """train / val (carved from train when absent) / test image-caption pairs of every dataset, filtered by
    modality; a row without an image or a caption is an error naming it (nothing is dropped silently), and every
    image is checked by `section.on_bad_image` (left-out pairs listed in each split's `refused`)."""
    from multimeditron.data.bad_images import ImageScreen
    from multimeditron.data.splits import TableImages, canonical_split, carve_validation, split_column_rows

    if not section.paths:
        raise AdaptDataError("data.paths: name at least one dataset of image-caption pairs")
    parts: dict[str, dict[str, list]] = {}
    for path in section.paths:
        for table_split, source in _tables(path).items():
            table = source.dataset
            columns = table.column_names
            image_column = section.image_column or ("image" if "image" in columns else "modalities")
            if image_column not in columns:
                raise AdaptDataError(f"{path}: no image column {image_column!r}; its columns: {columns}")
            caption_columns = [c for c in (section.caption_column, "text", "conversations") if c and c in columns]
            if section.caption_column and section.caption_column not in columns or not caption_columns:
                raise AdaptDataError(f"{path}: no caption column {section.caption_column or 'text'!r} and no "
                                     f"`conversations`; its columns: {columns}")
            has_modality = section.modality_column in columns
            if section.modalities and not has_modality:
                raise AdaptDataError(f"data.modalities: {path} has no {section.modality_column!r} column")
            meta = table.select_columns(caption_columns + ([section.modality_column] if has_modality else []))
            if table_split is not None:
                split = canonical_split(table_split)
                row_splits = {split: np.arange(len(table))} if split else {}
            elif section.split_column in columns:
                row_splits = split_column_rows(table[section.split_column], section.split_column, path)
            else:
                row_splits = {"train": np.arange(len(table))}
            for split, rows in row_splits.items():
                rows = rows[:section.max_samples] if section.max_samples else rows
                kept, captions, modalities = [], [], []
                for r in rows.tolist():
                    row = meta[int(r)]
                    modality = row.get(section.modality_column) if has_modality else None
                    if section.modalities and modality not in section.modalities:
                        continue
                    text = _caption_of(row, section.caption_column)
                    if text is None:
                        raise AdaptDataError(f"{path} ({split}) row {r}: no caption (neither `text` nor an "
                                             f"assistant turn)")
                    kept.append(r)
                    captions.append(text)
                    modalities.append(None if modality is None else str(modality))
                part = parts.setdefault(split, {"images": [], "captions": [], "modalities": [], "folders": [],
                                                "refused": []})
                images = FirstImages(TableImages(table, image_column, np.asarray(kept, dtype=np.int64)))
                screen = ImageScreen(source.folder or Path(path), section.on_bad_image)
                good = screen.rows(split, images)
                part["refused"] += screen.finish(f"{path} ({split})")
                if len(good) != len(kept):
                    kept = [kept[i] for i in good]
                    captions, modalities = [captions[i] for i in good], [modalities[i] for i in good]
                    images = FirstImages(TableImages(table, image_column, np.asarray(kept, dtype=np.int64)))
                part["images"].append(images)
                part["captions"] += captions
                part["modalities"] += modalities
                part["folders"] += [source.folder or Path(path)] * len(kept)
    splits = {name: CaptionSplit(_Chained(p["images"]), p["captions"], p["modalities"], p["folders"], p["refused"])
              for name, p in parts.items()}
    if "train" not in splits or not len(splits["train"]):
        raise AdaptDataError(f"data: no training pairs in {section.paths}"
                             + (f" for modalities {section.modalities}" if section.modalities else ""))
    if "val" not in splits:
        train = splits["train"]
        kept, carved = carve_validation(len(train), section.val_fraction, seed)
        splits["val"] = _take(train, carved)
        splits["train"] = _take(train, kept)
        splits["train"].refused = train.refused
    return splits


class _Chained(Sequence):
    """Several image sequences read as one."""

    def __init__(self, parts: list[Sequence[Any]]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


class _Taken(Sequence):
    def __init__(self, values: Sequence[Any], rows: np.ndarray) -> None:
        self.values, self.rows = values, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.values[int(self.rows[index])]


def _take(split: CaptionSplit, rows: np.ndarray) -> CaptionSplit:
    return CaptionSplit(_Taken(split.images, rows), [split.captions[i] for i in rows],
                        [split.modalities[i] for i in rows], [split.folders[i] for i in rows])


class CaptionDataset(CanvasDataset):
    """Pairs -> {"pixel_values": canvas, "input_ids": caption tokens}; captions are tokenized once, up front."""

    def __init__(self, split: CaptionSplit, size: int, tokens: torch.Tensor) -> None:
        folder = split.folders[0] if split.folders and len(set(split.folders)) == 1 else None
        images = split.images if folder is not None or not split.folders else _Resolved(split)
        super().__init__(images, size, folder)
        self.tokens = tokens

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": super().__getitem__(index)["pixel_values"], "input_ids": self.tokens[index],
                "labels": torch.tensor(index)}


class _Resolved(Sequence):
    """Pairs from several datasets: a relative image path made absolute against its own dataset's folder."""

    def __init__(self, split: CaptionSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        value, folder = self.split.images[index], self.split.folders[index]
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        if isinstance(value, dict) and not value.get("bytes") and value.get("path") and folder is not None:
            return {"bytes": None, "path": str(Path(folder) / value["path"])}
        return value


# ---- model --------------------------------------------------------------------------------------------------------
def _tower_of(expert: VisionExpert, where: str = "expert.spec") -> nn.Module:
    if not hasattr(expert, "model_cfg") or not hasattr(expert, "visual"):
        raise AdaptationError(f"{where}: contrastive training needs an OpenCLIP vision tower (biomedclip, or clip "
                              f"with the open_clip backend); {expert.expert_id} is a {type(expert).__name__}")
    return expert.visual


def text_source(spec: ExpertSpec, tiny: bool, section: ContrastiveSection) -> tuple[str, str | None]:
    """(open_clip model name / hf-hub id of the text tower and tokenizer, its weights) for `spec`: the recipe's,
    else an adapted folder's own text tower, else the family's checkpoint (BiomedCLIP's hub repository; a CLIP hub
    repository, or the open_clip model the expert names with its checkpoint file or tag)."""
    from multimeditron.experts.adapted import is_adapted_checkpoint, read_adapted_record
    from multimeditron.experts.families.biomedclip import BIOMEDCLIP_HUB_ID
    from multimeditron.experts.families.clip import DEFAULT_OPEN_CLIP_MODEL

    checkpoint = spec.checkpoint
    if section.text is not None:
        return section.text, section.text_pretrained
    if is_adapted_checkpoint(checkpoint) and (Path(checkpoint) / TEXT_FILE).is_file():
        recorded = read_adapted_record(checkpoint).get("provenance", {}).get("text")
        return recorded or (TINY_TEXT if tiny else DEFAULT_OPEN_CLIP_MODEL), str(Path(checkpoint) / TEXT_FILE)
    if tiny:
        return TINY_TEXT, section.text_pretrained
    if checkpoint and checkpoint.startswith("hf-hub:"):
        return checkpoint, section.text_pretrained
    if spec.id == "biomedclip":
        return BIOMEDCLIP_HUB_ID, section.text_pretrained
    return str(spec.options.get("model", DEFAULT_OPEN_CLIP_MODEL)), section.text_pretrained or checkpoint


def build_clip_model(expert: VisionExpert, spec: ExpertSpec, tiny: bool,
                     section: ContrastiveSection) -> tuple[nn.Module, Any, int, tuple[str, str | None]]:
    """(open_clip model whose `visual` is the expert's tower, tokenizer, context length, text source)."""
    import open_clip

    tower = _tower_of(expert)
    embed_dim = int(expert.model_cfg["embed_dim"])
    source, weights = text_source(spec, tiny, section)
    weight_file = weights if weights and Path(weights).expanduser().is_file() else None
    if source == TINY_TEXT:
        if weights and weight_file is None:
            raise AdaptationError(f"contrastive.text_pretrained: {weights} is not a file (the tiny text tower "
                                  f"loads only a {TEXT_FILE})")
        clip = open_clip.CLIP(embed_dim, {"width": 32, "layers": 1, "head_width": 16, "image_size": 32,
                                          "patch_size": 16}, dict(TINY_TEXT_CFG))
        tokenizer = open_clip.get_tokenizer(TINY_TOKENIZER)
    else:
        clip = open_clip.create_model(source, pretrained=None if weight_file else weights)
        tokenizer = open_clip.get_tokenizer(source)
    clip.visual = tower  # the expert's own module: what trains is what the registry loads
    if weight_file is not None:
        _load_text_tower(clip, weight_file)
    context = int(section.context_length or getattr(clip, "context_length", 77))
    with torch.no_grad():
        width = clip.encode_text(tokenizer(["x"], context_length=context)).shape[-1]
    if width != embed_dim:
        raise AdaptationError(f"contrastive.text: the text tower of {source} embeds into {width} dimensions, the "
                              f"expert {expert.expert_id}'s tower into {embed_dim}; pair it with its own CLIP model")
    return clip, tokenizer, context, (source, weights)


def text_state(clip: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items() if not k.startswith("visual.")}


def _load_text_tower(clip: nn.Module, file: str) -> None:
    from multimeditron.experts.checkpoints import load_weight_file

    state = {k: v for k, v in load_weight_file(file).items() if not k.startswith("visual.")}
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("visual.")]
    if missing or unexpected:
        raise AdaptationError(f"contrastive.text_pretrained: {file} does not match the text tower: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")


class ContrastiveObjective(nn.Module):
    """open_clip's model and `ClipLoss` as the engine's model: `forward(pixel_values, input_ids)` -> {"loss",
    "logits": [image embedding | text embedding] (normalised), which the metrics split}. Under several processes
    the training loss sees the embeddings of every process (open_clip's gather_with_grad)."""

    def __init__(self, clip: nn.Module, expert: VisionExpert) -> None:
        super().__init__()
        self.clip = clip
        self._expert = (expert,)  # its preprocessing only; its tower is clip.visual (one copy of the weights)

    def embed(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.clip.encode_image(self._expert[0].preprocess(pixel_values), normalize=True)
        return image.float(), self.clip.encode_text(input_ids, normalize=True).float()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`labels` (the pairs' indices) only make the engine gather the embeddings for the metrics."""
        from open_clip import ClipLoss

        image, text = self.embed(pixel_values, input_ids)
        # Training: every process's embeddings enter the loss; evaluation: each batch on its own.
        distributed = self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
        loss_fn = ClipLoss(local_loss=distributed, gather_with_grad=distributed,
                           rank=torch.distributed.get_rank() if distributed else 0,
                           world_size=torch.distributed.get_world_size() if distributed else 1)
        # open_clip clamps the learned temperature at 100 (its training loop, after each step)
        scale = self.clip.logit_scale.clamp(max=math.log(100)).exp()
        return {"loss": loss_fn(image, text, scale), "logits": torch.cat([image, text], dim=-1)}


def param_groups(objective: ContrastiveObjective, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on gains, biases, norms, embeddings of rank < 2 and the logit scale."""
    decay, plain = [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (plain if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# ---- evaluation ---------------------------------------------------------------------------------------------------
def retrieval_metrics(image: np.ndarray, text: np.ndarray, captions: Sequence[str],
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Image->text and text->image recall@k over one split (normalised embeddings); an item counts as found when
    any item with the same caption ranks within k. `chance_r1` is a random ranking's expected recall@1."""
    n = len(captions)
    if n == 0:
        return {}
    labels = np.unique(np.asarray(captions), return_inverse=True)[1]
    same = labels[:, None] == labels[None, :]
    sim = image @ text.T
    out: dict[str, float] = {}
    for name, scores in (("i2t", sim), ("t2i", sim.T)):
        order = np.argsort(-scores, axis=1, kind="stable")
        first = np.argmax(np.take_along_axis(same, order, axis=1), axis=1)
        for k in ks:
            out[f"{name}_r{k}"] = float((first < k).mean())
    out["mean_r1"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
    out["chance_r1"] = float(same.sum(axis=1).mean() / n)
    return out


def _metrics_fn(captions: Sequence[str]):
    def compute(prediction: Any) -> dict[str, float]:
        embeddings = np.asarray(prediction.predictions, dtype=np.float32)
        half = embeddings.shape[1] // 2
        metrics = retrieval_metrics(embeddings[:, :half], embeddings[:, half:], captions)
        return {**metrics, "score": metrics["mean_r1"]}
    return compute


@torch.no_grad()
def evaluate_split(objective: ContrastiveObjective, dataset: CaptionDataset, split: CaptionSplit, tokenizer: Any,
                   context: int, template: str, batch_size: int = 64) -> dict[str, Any]:
    """Retrieval recall@k and, when the pairs carry modalities, zero-shot modality accuracy (one process)."""
    was_training = objective.training
    objective.eval()
    device = next(objective.parameters()).device
    images, texts = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        image, text = objective.embed(batch["pixel_values"].to(device), batch["input_ids"].to(device))
        images.append(image.cpu())
        texts.append(text.cpu())
    image_emb, text_emb = torch.cat(images).numpy(), torch.cat(texts).numpy()
    metrics: dict[str, Any] = retrieval_metrics(image_emb, text_emb, split.captions)
    classes = sorted({m for m in split.modalities if m is not None})
    if len(classes) > 1 and None not in split.modalities:
        prompts = tokenizer([template.format(c) for c in classes], context_length=context).to(device)
        class_emb = objective.clip.encode_text(prompts, normalize=True).float().cpu().numpy()
        predicted = (image_emb @ class_emb.T).argmax(axis=1)
        truth = np.array([classes.index(m) for m in split.modalities])
        metrics.update({"zero_shot_accuracy": float((predicted == truth).mean()), "zero_shot_classes": classes,
                        "zero_shot_chance": float(np.bincount(truth).max() / len(truth))})
    objective.train(was_training)
    return metrics


# ---- the run ------------------------------------------------------------------------------------------------------
def prepare_contrastive(recipe: ContrastiveRecipe) -> tuple[ContrastiveObjective, VisionExpert, ExpertSpec, Any,
                                                               int, tuple[str, str | None]]:
    from multimeditron.adaptation.experts import load_expert, spec_text

    seed = int(recipe.training_arguments()["seed"])
    expert, spec = load_expert(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny, seed=seed)
    torch.manual_seed(seed)  # the tiny text tower's initialisation
    clip, tokenizer, context, source = build_clip_model(expert, spec, recipe.expert.tiny, recipe.contrastive)
    clip.requires_grad_(True)
    if not recipe.contrastive.train_vision:
        clip.visual.requires_grad_(False)
    if not recipe.contrastive.train_text:
        for name, p in clip.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                p.requires_grad_(False)
    return ContrastiveObjective(clip, expert), expert, spec, tokenizer, context, source


def _datasets(splits: dict[str, CaptionSplit], size: int, tokenizer: Any, context: int) -> dict[str, CaptionDataset]:
    return {name: CaptionDataset(split, size, tokenizer(split.captions, context_length=context))
            for name, split in splits.items()}


def train_contrastive(recipe: ContrastiveRecipe, splits: dict[str, CaptionSplit], *, processes: int = 1,
                      callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train on the engine, keep the best epoch by val mean recall@1 in `OUT/best/`; returns the run's record
    (held-out metrics before and after, history), also written as `OUT/results.json` on the main process."""
    from multimeditron.experts.adapted import save_adapted_expert
    from multimeditron.training.arguments import training_arguments

    args = training_arguments(recipe.training_arguments(processes))
    objective, expert, spec, tokenizer, context, (source, weights) = prepare_contrastive(recipe)
    data = _datasets(splits, expert.image_size, tokenizer, context)
    held_out = [s for s in ("val", "test") if s in data]
    template = recipe.contrastive.zero_shot_template
    before = {s: evaluate_split(objective, data[s], splits[s], tokenizer, context, template) for s in held_out} \
        if recipe.contrastive.eval_before else {}
    groups = param_groups(objective, args.weight_decay)
    trainer = train_objective(objective, data["train"], args, groups, recipe.schedule, eval_dataset=data["val"],
                              compute_metrics=_metrics_fn(splits["val"].captions),
                              resume=args.resume_from_checkpoint, callbacks=callbacks, log_name="train-expert")
    history = epoch_history(trainer.state.log_history)
    best = max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None
    after = {s: evaluate_split(objective, data[s], splits[s], tokenizer, context, template) for s in held_out}
    record = {"command": "train-expert", "objective": "clip", "name": recipe.expert_name(), "text": source,
              "text_pretrained": weights, "context_length": context, "epoch": best,
              "pairs": {s: len(p) for s, p in splits.items()}, "before": before, "after": after,
              "recipe": recipe.to_dict(), "history": history,
              "refused": [r for p in splits.values() for r in p.refused]}
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        provenance = {"objective": "clip", "name": recipe.expert_name(), "text": source, "context_length": context,
                      "data": recipe.data.paths, "modalities": recipe.data.modalities, "epoch": best,
                      "val": after.get("val")}
        save_adapted_expert(expert, spec, out / "best", provenance)
        save_file(text_state(objective.clip), str(out / "best" / TEXT_FILE))
        (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def contrastive_plan(recipe: ContrastiveRecipe, splits: dict[str, CaptionSplit], processes: int = 1) -> str:
    from multimeditron.adaptation.plan import format_plan

    objective, expert, _, _, context, (source, weights) = prepare_contrastive(recipe)
    groups = param_groups(objective, float(recipe.training_arguments(processes)["weight_decay"]))
    sizes = ", ".join(f"{s} {len(p)}" for s, p in splits.items())
    modalities = sorted({m for p in splits.values() for m in p.modalities if m is not None})
    lines = [f"data: {', '.join(recipe.data.paths)}: image-caption pairs {sizes}; modalities "
             f"{modalities or '(no modality column)'}",
             f"objective: clip (open_clip ClipLoss); text tower {source}"
             + (f" from {weights}" if weights else "") + f", context {context} tokens; vision trains "
             f"{recipe.contrastive.train_vision}, text trains {recipe.contrastive.train_text}; best epoch by val "
             f"mean recall@1; expert name {recipe.expert_name()!r}"]
    return format_plan("train-expert", recipe, lines, expert, groups,
                       ["checkpoint-*/ (resumable)", f"best/ (adapted expert + {TEXT_FILE})", "results.json"],
                       processes)
