"""Evaluating vision experts on labelled images: embeddings (cached), kNN / linear / logistic / few-shot probes,
metrics with bootstrap intervals, reports. The same functions serve `multimeditron probe` and notebooks:

    from multimeditron.probing import embed, knn_probe, load_probe_data, parse_spec, build_probe_expert
"""
from multimeditron.probing.bootstrap import bootstrap_metrics, paired_bootstrap
from multimeditron.probing.datasets import ProbeData, load_probe_data, read_image_folder, read_table
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
    "Embeddings", "Labelled", "ProbeData", "ProbeInputs", "ProbeResult", "ProbeSettings", "aggregate",
    "bootstrap_metrics", "build_probe_expert", "classification_metrics", "embed", "embed_splits", "fewshot_probe",
    "knn_probe", "linear_probe", "load_probe_data", "logreg_probe", "markdown_table", "paired_bootstrap",
    "parse_spec", "probe", "probe_inputs", "read_image_folder", "read_table", "write_reports",
]
