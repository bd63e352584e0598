"""One probe run: experts x protocols on one data set -> a result dict (and, with an output folder, its files).

Per expert: embed each split once (or read the cache), aggregate images per study/patient, run each protocol
(hyperparameters on val only, test once), add bootstrap intervals to the test metrics; then compare experts pairwise
with a paired bootstrap on the same test rows.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimeditron.data.intensity import IntensityWindow
from multimeditron.data.labelled_images import LabelledImages
from multimeditron.data.splits import SPLITS
from multimeditron.dtypes import dtype_name
from multimeditron.experts.base import VisionExpert
from multimeditron.probing.bootstrap import bootstrap_metrics, paired_bootstrap, per_label_metrics
from multimeditron.probing.cache import cache_key, load_cached, save_cached
from multimeditron.probing.embed import Embeddings, aggregate, embed
from multimeditron.probing.protocols import PROTOCOLS, Labelled, ProbeInputs, ProbeResult
from multimeditron.probing.protocols.fewshot import SHOTS
from multimeditron.probing.protocols.knn import KS
from multimeditron.probing.specs import weights_digest


@dataclass
class ProbeSettings:
    protocols: tuple[str, ...] = ("knn", "linear", "logreg", "fewshot")
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    n_layers: int = 4
    cache_dir: Path | None = None  # None: no cache
    window: IntensityWindow | None = None
    bootstrap: int = 1000  # resamples; 0 = no intervals
    seed: int = 0
    ordinal: bool = False
    select_metric: str = "auroc"
    ks: tuple[int, ...] = KS
    shots: tuple[int, ...] = SHOTS
    draws: int = 5
    linear_epochs: int = 100
    protocol_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra kwargs per protocol
    paper_metrics: tuple[str, ...] = ()  # also report these papers' metric sets (`paper_metrics`)
    progress: bool | None = None
    log: Any = print  # where progress lines go
    stats: dict[str, Any] = field(default_factory=dict)  # filled in: embedding time, cache hits

    def __post_init__(self) -> None:
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown protocol(s) {unknown}; valid: {sorted(PROTOCOLS)} or all")


def embedding_fields(expert: VisionExpert, data: LabelledImages, split: str, settings: ProbeSettings,
                     digest: str) -> dict[str, Any]:
    """Everything the embeddings of one split depend on: the cache key's content."""
    return {"weights": digest, "class": f"{type(expert).__module__}.{type(expert).__qualname__}",
            "expert_id": expert.expert_id, "image_size": expert.image_size, "mean": list(expert.mean),
            "std": list(expert.std), "pool": getattr(expert, "cls_pool", None), "layers": settings.n_layers,
            "dtype": dtype_name(settings.dtype), "window": settings.window.describe() if settings.window else None,
            "split": split, "data": data.fingerprint(split)}


def embed_splits(expert: VisionExpert, data: LabelledImages, settings: ProbeSettings,
                 name: str = "expert") -> dict[str, Embeddings]:
    """Every split's embeddings, from the cache when it holds exactly these, else computed (and cached)."""
    digest = weights_digest(expert) if settings.cache_dir is not None else ""
    out = {}
    for split in SPLITS:
        images = data.splits[split].images
        fields = embedding_fields(expert, data, split, settings, digest)
        key = cache_key(fields)
        cached = load_cached(settings.cache_dir, key, len(images)) if settings.cache_dir is not None else None
        started = time.perf_counter()
        if cached is None:
            cached = embed(expert, images, folder=data.folder, window=settings.window,
                           batch_size=settings.batch_size, num_workers=settings.num_workers, device=settings.device,
                           dtype=settings.dtype, n_layers=settings.n_layers, progress=settings.progress,
                           desc=f"{name} {split}")
            if settings.cache_dir is not None:
                save_cached(settings.cache_dir, key, cached, fields)
            settings.stats.setdefault("computed", []).append((name, split, len(images)))
        else:
            settings.stats.setdefault("cache_hits", []).append((name, split, len(images)))
        settings.stats.setdefault("embed_seconds", {}).setdefault(name, 0.0)
        settings.stats["embed_seconds"][name] += time.perf_counter() - started
        out[split] = cached
    return out


def probe_inputs(data: LabelledImages, embeddings: dict[str, Embeddings], ordinal: bool = False) -> ProbeInputs:
    """Labelled embeddings per split, one row per study/patient when the data groups images."""
    labelled = {}
    for split in SPLITS:
        part = data.splits[split]
        emb, labels, groups = aggregate(embeddings[split], part.labels, part.groups)
        labelled[split] = Labelled(emb, labels, groups)
    return ProbeInputs(labelled["train"], labelled["val"], labelled["test"], len(data.classes), data.multilabel,
                       ordinal)


def run_protocol(name: str, inputs: ProbeInputs, settings: ProbeSettings,
                 classes: list[str] | None = None) -> ProbeResult:
    common = {"select_metric": settings.select_metric}
    options = {"knn": {"ks": settings.ks}, "linear": {"epochs": settings.linear_epochs, "seed": settings.seed},
               "logreg": {}, "fewshot": {"shots": settings.shots, "draws": settings.draws, "seed": settings.seed}}
    result = PROTOCOLS[name](inputs, **common, **options[name], **settings.protocol_options.get(name, {}))
    if settings.bootstrap and result.test_scores is not None:
        result.test = bootstrap_metrics(result.test_labels, result.test_scores, n_resamples=settings.bootstrap,
                                        seed=settings.seed, **inputs.metric_kwargs())
    if inputs.multilabel and result.test_scores is not None:
        names = classes or [str(c) for c in range(inputs.n_classes)]
        result.per_label = per_label_metrics(result.test_labels, result.test_scores, names,
                                             n_resamples=settings.bootstrap, seed=settings.seed)
    if settings.paper_metrics and result.test_scores is not None:
        from multimeditron.probing.paper_metrics import paper_metric_set

        result.paper_metrics = {"test": [paper_metric_set(s, result.test_labels, result.test_scores,
                                                          multilabel=inputs.multilabel, classes=classes)
                                         for s in settings.paper_metrics]}
    return result


def probe(experts: list[tuple[str, VisionExpert]], data: LabelledImages, settings: ProbeSettings,
          out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every protocol for every expert; with `out_dir`, also write the reports and the plots."""
    from multimeditron.probing.report import write_reports

    runs: list[dict[str, Any]] = []
    kept: dict[tuple[str, str], ProbeResult] = {}
    sizes: dict[str, int] = {}
    for name, expert in experts:
        embeddings = embed_splits(expert, data, settings, name)
        inputs = probe_inputs(data, embeddings, settings.ordinal)
        sizes = {split: len(getattr(inputs, split)) for split in SPLITS}
        for protocol in settings.protocols:
            settings.log(f"[probe] {name}: {protocol}")
            result = run_protocol(protocol, inputs, settings, list(data.classes))
            kept[(name, protocol)] = result
            runs.append({"expert": name, **result.to_dict()})
    comparisons = compare(kept, [n for n, _ in experts], settings, data.multilabel)
    wilcoxon = wilcoxon_comparisons(kept, [n for n, _ in experts], settings)
    result = {"data": {"name": data.name, "classes": data.classes, "multilabel": data.multilabel,
                       "group_kind": data.group_kind, "rows": sizes,
                       "images": {s: len(data.splits[s]) for s in SPLITS}, "notes": data.notes},
              "refused": data.refused,
              "experts": [{"name": n, "describe": e.describe(), "layers": e.supports_layers} for n, e in experts],
              "settings": {"protocols": list(settings.protocols), "bootstrap": settings.bootstrap,
                           "seed": settings.seed, "select_metric": settings.select_metric,
                           "dtype": settings.dtype, "ordinal": settings.ordinal,
                           "window": settings.window.describe() if settings.window else None},
              "runs": runs, "comparisons": comparisons, **({"wilcoxon": wilcoxon} if wilcoxon else {})}
    if out_dir is not None:
        write_reports(result, out_dir)
        write_plots(kept, data, out_dir)
    return result


def compare(kept: dict[tuple[str, str], ProbeResult], names: list[str], settings: ProbeSettings,
            multilabel: bool) -> list[dict[str, Any]]:
    """Paired bootstrap of every pair of experts per protocol (not few-shot: its spread is over draws)."""
    out = []
    if not settings.bootstrap:
        return out
    for protocol in settings.protocols:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ra, rb = kept.get((a, protocol)), kept.get((b, protocol))
                if ra is None or rb is None or ra.test_scores is None or rb.test_scores is None:
                    continue
                metrics = paired_bootstrap(ra.test_labels, ra.test_scores, rb.test_scores,
                                           n_resamples=settings.bootstrap, seed=settings.seed,
                                           multilabel=multilabel, ordinal=settings.ordinal)
                out.append({"protocol": protocol, "a": a, "b": b, "metrics": metrics})
    return out


def wilcoxon_comparisons(kept: dict[tuple[str, str], ProbeResult], names: list[str],
                         settings: ProbeSettings) -> list[dict[str, Any]]:
    """RETFound-Green's comparison, with its metric set on: per protocol, pair of experts and class, scipy's Wilcoxon
    signed-rank test on the two experts' bootstrap AUROCs (the same resampled rows for both)."""
    from multimeditron.probing.bootstrap import wilcoxon_comparison

    out = []
    if "retfound_green" not in settings.paper_metrics:
        return out

    def resamples(result: ProbeResult | None) -> dict[str, list[float]] | None:
        sets = (result.paper_metrics.get("test", []) if result is not None else [])
        found = [s["metrics"]["bootstrap_aurocs"] for s in sets if s["set"] == "retfound_green"]
        return found[0] if found else None

    for protocol in settings.protocols:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ra, rb = resamples(kept.get((a, protocol))), resamples(kept.get((b, protocol)))
                if ra is None or rb is None:
                    continue
                per_class = {c: wilcoxon_comparison(ra[c], rb[c]) for c in ra if c in rb and ra[c] and
                             len(ra[c]) == len(rb[c])}
                out.append({"protocol": protocol, "a": a, "b": b, "test": "wilcoxon signed-rank on bootstrap "
                            "AUROCs (RETFound-Green)", "per_class": per_class})
    return out


def write_plots(kept: dict[tuple[str, str], ProbeResult], data: LabelledImages, out_dir: str | Path) -> list[Path]:
    from multimeditron.probing.plots import confusion_png, roc_png

    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: set[str] = set()
    for (name, protocol), result in kept.items():
        if result.test_scores is None:
            continue
        base = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{name}_{protocol}")
        stem = next(f"{base}{f'_{i}' if i else ''}" for i in range(len(kept) + 1)
                    if f"{base}{f'_{i}' if i else ''}" not in stems)  # names that only differ in / or : stay apart
        stems.add(stem)
        title = f"{name} / {protocol} (test)"
        if not data.multilabel:
            written.append(confusion_png(result.test_labels, result.test_scores, data.classes,
                                         folder / f"{stem}_confusion.png", title))
        written.append(roc_png(result.test_labels, result.test_scores, data.classes, folder / f"{stem}_roc.png",
                               title, multilabel=data.multilabel))
    return written

