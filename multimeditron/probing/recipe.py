"""The typed configuration of `probe` (the same schema style as every other command: YAML, `--set`, environment
variables, unknown keys refused with their dotted path), each default written here once, and the labelled-image
data section that `finetune` shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from multimeditron.data.bad_images import BadImagePolicy
from multimeditron.probing.metrics import SelectionMetric
from multimeditron.probing.protocols.fewshot import SHOTS
from multimeditron.probing.protocols.knn import KS
from multimeditron.probing.protocols.linear import LEARNING_RATES
from multimeditron.probing.protocols.logreg import C_GRID

PaperMetricSet = Literal["retfound", "dinov2_radiology", "retfound_green"]

Protocol = Literal["knn", "linear", "logreg", "fewshot"]
PROTOCOL_NAMES: tuple[str, ...] = ("knn", "linear", "logreg", "fewshot")


@dataclass
class LabelledDataSection:
    path: str  # an image folder ROOT/{train,val,test}/<class>/ or a parquet/arrow/save_to_disk table
    image_column: str | None = None
    label_columns: list[str] = field(default_factory=list)  # several: multi-label, each 0/1
    split_column: str = "split"
    val_fraction: float = 0.2  # of train, carved into val when there is none
    on_bad_image: BadImagePolicy = "error"  # a file that cannot be read as an image: stop (error) or leave it out (skip)
    allow_overlap: bool = False  # accept a patient/study with images in two splits (otherwise refused)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


@dataclass
class ProbeDataSection(LabelledDataSection):
    intensity: str | None = None  # ct, mri, range:LOW,HIGH or percentile:LOW,HIGH
    ordinal: bool = False  # graded classes: quadratic-weighted kappa

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.intensity is not None:
            from multimeditron.data.intensity import parse_window

            parse_window(self.intensity)  # a wrong window is refused here, before any image is embedded


@dataclass
class ProtocolSection:
    protocols: list[Protocol] = field(default_factory=lambda: list(PROTOCOL_NAMES))
    k: list[int] = field(default_factory=lambda: list(KS))  # kNN grid, capped at the training size
    shots: list[int] = field(default_factory=lambda: list(SHOTS))  # few-shot N per class
    draws: int = 5  # few-shot random draws per N
    linear_epochs: int = 100
    select_metric: SelectionMetric = "auroc"  # what hyperparameters maximise on val
    bootstrap: int = 1000  # resamples for the test intervals (0: none)
    seed: int = 0
    # The papers' variants (defaults: this toolkit's protocols; cookbook/experts/ sets the papers' values):
    knn_softmax_over: Literal["k", "max_k"] = "k"  # max_k: DINOv2's kNN weights, softmax over the grid's top k
    mlknn_count_self: bool = False  # ML-kNN training rows count themselves (DINOv2-on-radiology's MLkNN)
    linear_lrs: list[float] = field(default_factory=lambda: list(LEARNING_RATES))
    linear_batch_size: int = 256
    linear_standardise: bool = True  # False: raw features (DINOv2-on-radiology)
    one_logit: bool = False  # binary tasks as one logit + BCE in the linear heads (DINOv2-on-radiology)
    retrain_on_trainval: bool = False  # linear / logreg: the chosen setting retrained on train + val before test
    c_grid: list[float] = field(default_factory=lambda: list(C_GRID))  # logreg; one value: fixed C
    logreg_max_iter: int = 1000
    fewshot_sampling: Literal["per_class", "systematic"] = "per_class"  # systematic: N in total, one draw
    fewshot_head: Literal["logreg", "linear"] = "logreg"
    paper_metrics: list[PaperMetricSet] = field(default_factory=list)  # also these papers' metric sets

    def protocol_options(self) -> dict[str, dict[str, Any]]:
        """Each protocol's keyword arguments from this section (beyond select_metric, k, shots, draws, seed)."""
        linear = {"learning_rates": tuple(self.linear_lrs), "batch_size": self.linear_batch_size,
                  "standardise": self.linear_standardise, "one_logit": self.one_logit}
        return {"knn": {"softmax_over": self.knn_softmax_over, "mlknn_count_self": self.mlknn_count_self},
                "linear": {**linear, "retrain": self.retrain_on_trainval},
                "logreg": {"c_grid": tuple(self.c_grid), "max_iter": self.logreg_max_iter,
                           "retrain": self.retrain_on_trainval},
                "fewshot": {"sampling": self.fewshot_sampling, "head": self.fewshot_head,
                            "linear_options": {**linear, "epochs": self.linear_epochs}}}

    def __post_init__(self) -> None:
        for name in ("k", "shots"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty list of numbers >= 1, got {getattr(self, name)}")
        if not self.protocols:
            raise ValueError("protocols: name at least one of " + ", ".join(PROTOCOL_NAMES))
        if self.draws < 1 or self.linear_epochs < 1 or self.bootstrap < 0:
            raise ValueError("draws and linear_epochs must be >= 1, bootstrap >= 0")
        for name in ("linear_lrs", "c_grid"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {values}")
        if self.linear_batch_size < 1 or self.logreg_max_iter < 1:
            raise ValueError("linear_batch_size and logreg_max_iter must be >= 1")


@dataclass
class EmbeddingSection:
    batch_size: int = 64
    workers: int = 0  # image-decoding worker processes
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "float32"  # a name of multimeditron.dtypes.DTYPES (float32, bfloat16, bf16, fp16, ...)
    cache: bool = True  # reuse embeddings computed before (keyed by weights, input, data)
    cache_dir: str | None = None  # None: OUT/cache, or ~/.cache/multimeditron/probe without an output folder

    def __post_init__(self) -> None:
        from multimeditron.dtypes import dtype_name

        if self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {self.batch_size} / {self.workers}")
        self.dtype = dtype_name(self.dtype)


@dataclass
class ProbeRecipe:
    data: ProbeDataSection
    experts: list[str | dict[str, Any]] = field(default_factory=list)  # SPEC strings or mappings
    tiny: bool = False  # every expert's tiny architecture (smoke runs)
    probe: ProtocolSection = field(default_factory=ProtocolSection)
    embedding: EmbeddingSection = field(default_factory=EmbeddingSection)
    out: str | None = None  # results.json/.csv/.md and plots/ (None: print only)
    threads: int | None = None  # CPU threads of torch and the BLAS/OpenMP pools (None: torch's default)

    def __post_init__(self) -> None:
        from multimeditron.threads import check_threads

        try:
            check_threads(self.threads)
        except ValueError as error:
            raise ValueError(f"threads {error}") from None

    def cache_folder(self) -> Path | None:
        if not self.embedding.cache:
            return None
        if self.embedding.cache_dir:
            return Path(self.embedding.cache_dir)
        return Path(self.out) / "cache" if self.out else Path.home() / ".cache/multimeditron/probe"


def protocol_list(text: str) -> list[str]:
    """`--protocol`: `all`, or a comma-separated list of protocol names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    return list(PROTOCOL_NAMES) if names == ["all"] else names
