"""Evaluating vision experts on labelled images: embeddings (cached), kNN / linear / logistic / few-shot probes,
metrics with bootstrap intervals, reports. The same functions serve `multimeditron probe` and notebooks:

    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.probing import embed, knn_probe, parse_spec, build_probe_expert

(The labelled image sets themselves are the data layer's: `multimeditron.data.labelled_images`.)
"""
from multimeditron.probing.bootstrap import bootstrap_metrics, paired_bootstrap
from multimeditron.probing.embed import Embeddings, aggregate, embed
from multimeditron.probing.metrics import classification_metrics
from multimeditron.probing.protocols import (
    Labelled,
    ProbeInputs,
    ProbeResult,
    fewshot_probe,
    knn_probe,
    linear_probe,
    logreg_probe,
)
from multimeditron.probing.report import markdown_table, write_reports
from multimeditron.probing.run import ProbeSettings, embed_splits, probe, probe_inputs
from multimeditron.probing.specs import build_probe_expert, parse_spec

__all__ = [
    "Embeddings", "Labelled", "ProbeInputs", "ProbeResult", "ProbeSettings", "aggregate",
    "bootstrap_metrics", "build_probe_expert", "classification_metrics", "embed", "embed_splits", "fewshot_probe",
    "knn_probe", "linear_probe", "logreg_probe", "markdown_table", "paired_bootstrap", "parse_spec", "probe",
    "probe_inputs", "write_reports",
]
