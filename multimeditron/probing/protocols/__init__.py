"""Probing protocols on frozen embeddings: kNN, linear heads, logistic regression, few-shot."""
from multimeditron.probing.protocols.common import Labelled, ProbeInputs, ProbeResult
from multimeditron.probing.protocols.fewshot import fewshot_probe
from multimeditron.probing.protocols.knn import knn_probe
from multimeditron.probing.protocols.linear import linear_probe
from multimeditron.probing.protocols.logreg import logreg_probe

PROTOCOLS = {"knn": knn_probe, "linear": linear_probe, "logreg": logreg_probe, "fewshot": fewshot_probe}

__all__ = ["PROTOCOLS", "Labelled", "ProbeInputs", "ProbeResult", "fewshot_probe", "knn_probe", "linear_probe",
           "logreg_probe"]
