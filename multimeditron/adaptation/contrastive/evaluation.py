"""Held-out evaluation of a contrastive expert: image->text and text->image recall@k (an item counts as found when
any item with the same caption ranks within k) and zero-shot classification of the modality column."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from multimeditron.adaptation.contrastive.data import CaptionDataset, CaptionSplit
from multimeditron.adaptation.contrastive.model import ContrastiveObjective
from multimeditron.adaptation.contrastive.recipe import RECALL_KS


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


def recall_metrics_fn(captions: Sequence[str]):
    """The engine's `compute_metrics` over the gathered [image | text] embeddings: recall@k, `score` = mean recall@1."""
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
