"""Linear heads on frozen features, DINOv2-style: many learning rates x {CLS, CLS + mean patch} x {last 1, last 4
layers}, all trained together on the cached features in one loop, the best head chosen on val.

Features are standardised with the training split's statistics so that one learning-rate grid fits every expert
(their output scales differ by orders of magnitude; `standardise=False` keeps them raw, as DINOv2-on-radiology).
SGD with momentum 0.9 and a cosine schedule; cross-entropy (multi-class) or binary cross-entropy per label
(multi-label); `one_logit`: a binary task as one logit + BCE (DINOv2-on-radiology's `linear.py`). `retrain`: the
chosen (features, learning rate) is trained again on train + val before the test score (DINOv2-on-radiology,
paper A.1). Experts without intermediate layers get heads on their global embedding only, and the result says so.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from multimeditron.probing.embed import Embeddings
from multimeditron.probing.fast_metrics import fast_metrics
from multimeditron.probing.metrics import classification_metrics, selection_score
from multimeditron.probing.protocols.common import ProbeInputs, ProbeResult

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def feature_sets(embeddings: Embeddings, layer_counts: tuple[int, ...] = (1, 4)) -> dict[str, np.ndarray]:
    """Named inputs of the linear heads: `cls_last{n}` (class tokens of the last n blocks, concatenated) with or
    without `+patch` (the last block's mean patch token); `pooled` when the expert has no layers."""
    if embeddings.cls_layers is None:
        return {"pooled": embeddings.pooled}
    available = embeddings.cls_layers.shape[1]
    out: dict[str, np.ndarray] = {}
    for n in sorted({min(n, available) for n in layer_counts}):
        cls = embeddings.cls_layers[:, -n:].reshape(len(embeddings), -1)
        out[f"cls_last{n}"] = cls
        out[f"cls_last{n}+patch"] = np.concatenate([cls, embeddings.patch_mean], axis=1)
    return out


def _standardise(train: np.ndarray, *others: np.ndarray, standardise: bool = True) -> list[torch.Tensor]:
    if not standardise:
        return [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in (train, *others)]
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]


def _train_heads(features: dict[str, torch.Tensor], y: torch.Tensor, learning_rates: tuple[float, ...], n_out: int,
                 multilabel: bool, epochs: int, batch_size: int, weight_decay: float, seed: int,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, biases) per feature set, each holding one head per learning rate: (n_lr, D, n_out), (n_lr, 1,
    n_out). One weight tensor per feature set holds the heads of every learning rate, trained by SGD with momentum
    written out, so that each slice moves with its own rate (a few large matmuls instead of one per head).
    `n_out` 1 on one-label data: one logit + BCE."""
    torch.manual_seed(seed)
    lrs = torch.tensor(learning_rates, dtype=torch.float32).view(-1, 1, 1)
    weights = {name: (torch.randn(len(learning_rates), x.shape[1], n_out) * 0.01).requires_grad_()
               for name, x in features.items()}
    biases = {name: torch.zeros(len(learning_rates), 1, n_out, requires_grad=True) for name in features}
    params = [*weights.values(), *biases.values()]
    velocity = [torch.zeros_like(p) for p in params]
    n = len(y)
    steps = epochs * max(1, -(-n // batch_size))
    step = 0
    generator = torch.Generator().manual_seed(seed)

    def loss_of(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # the sum over heads of each head's mean loss: heads are independent, so each gets its own gradient
        if multilabel:
            target = y[rows].float().expand_as(out)
            return F.binary_cross_entropy_with_logits(out, target, reduction="sum") / (len(rows) * out.shape[-1])
        if n_out == 1:
            target = y[rows].float().view(1, -1, 1).expand_as(out)
            return F.binary_cross_entropy_with_logits(out, target, reduction="sum") / len(rows)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y[rows].long().repeat(out.shape[0]),
                               reduction="sum") / len(rows)

    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            loss = sum(loss_of(torch.matmul(x[rows].unsqueeze(0), weights[name]) + biases[name], rows)
                       for name, x in features.items())
            for p in params:
                p.grad = None
            loss.backward()
            scale = 0.5 * (1 + np.cos(np.pi * step / steps))
            with torch.no_grad():
                for p, v in zip(params, velocity):
                    g = p.grad + weight_decay * p if weight_decay else p.grad
                    v.mul_(0.9).add_(g)
                    p.sub_(lrs * scale * v)
            step += 1
    return weights, biases


def _probabilities(out: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Head outputs (..., n_out) -> class probabilities; one logit -> (1 - p, p)."""
    if multilabel:
        return torch.sigmoid(out)
    if out.shape[-1] == 1:
        p = torch.sigmoid(out)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(out, dim=-1)


def linear_probe(data: ProbeInputs, learning_rates: tuple[float, ...] = LEARNING_RATES, epochs: int = 100,
                 batch_size: int = 256, layer_counts: tuple[int, ...] = (1, 4), weight_decay: float = 0.0,
                 seed: int = 0, select_metric: str = "auroc", standardise: bool = True, one_logit: bool = False,
                 retrain: bool = False) -> ProbeResult:
    """Train every (features, learning rate) head at once; report the val-best head's test metrics (with
    `retrain`, of that head trained again on train + val)."""
    train_sets = feature_sets(data.train.embeddings, layer_counts)
    val_sets, test_sets = feature_sets(data.val.embeddings, layer_counts), feature_sets(data.test.embeddings,
                                                                                       layer_counts)
    notes = []
    if "pooled" in train_sets:
        notes.append("the expert gives no intermediate layers: heads on its global embedding only (no CLS/patch "
                     "or last-4 variants)")
    elif data.train.embeddings.cls_layers.shape[1] < max(layer_counts):
        notes.append(f"the expert has {data.train.embeddings.cls_layers.shape[1]} blocks cached: last "
                     f"{max(layer_counts)} = last {data.train.embeddings.cls_layers.shape[1]}")
    tensors = {name: _standardise(train_sets[name], val_sets[name], test_sets[name], standardise=standardise)
               for name in train_sets}
    n_out = 1 if one_logit and not data.multilabel and data.n_classes == 2 else data.n_classes
    y = torch.from_numpy(data.train.labels)
    weights, biases = _train_heads({name: x[0] for name, x in tensors.items()}, y, tuple(learning_rates), n_out,
                                   data.multilabel, epochs, batch_size, weight_decay, seed)
    kwargs = data.metric_kwargs()
    grid = {}
    with torch.no_grad():
        for name, x in tensors.items():
            val_probs = _probabilities(torch.matmul(x[1].unsqueeze(0), weights[name]) + biases[name],
                                       data.multilabel).numpy()
            for i, lr in enumerate(learning_rates):
                grid[(name, i)] = fast_metrics(data.val.labels, val_probs[i], **kwargs)
        name, index = max(grid, key=lambda key: selection_score(grid[key], select_metric))
        scores = _probabilities(torch.matmul(tensors[name][2], weights[name][index]) + biases[name][index],
                                data.multilabel).numpy()
    lr = learning_rates[index]
    if retrain:
        both = np.concatenate([train_sets[name], val_sets[name]])
        x_both, x_test = _standardise(both, test_sets[name], standardise=standardise)
        y_both = torch.from_numpy(np.concatenate([data.train.labels, data.val.labels]))
        w, b = _train_heads({name: x_both}, y_both, (lr,), n_out, data.multilabel, epochs, batch_size, weight_decay,
                            seed)
        with torch.no_grad():
            scores = _probabilities(torch.matmul(x_test, w[name][0]) + b[name][0], data.multilabel).numpy()
        notes.append("the chosen head was trained again on train + val before the test score")
    grid = {f"{n}|{learning_rates[i]:g}": m for (n, i), m in grid.items()}
    best = f"{name}|{lr:g}"
    chosen = {"features": name, "lr": float(lr), "epochs": epochs}
    if n_out == 1 and data.n_classes == 2 and not data.multilabel:
        chosen["head"] = "one logit + BCE"
    return ProbeResult("linear", chosen, grid[best], classification_metrics(data.test.labels, scores, **kwargs),
                       scores, data.test.labels, notes,
                       {"val_grid": {key: selection_score(m, select_metric)[0] for key, m in grid.items()}})
