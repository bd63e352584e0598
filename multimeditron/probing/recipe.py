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

    def __post_init__(self) -> None:
        for name in ("k", "shots"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty list of numbers >= 1, got {getattr(self, name)}")
        if not self.protocols:
            raise ValueError("protocols: name at least one of " + ", ".join(PROTOCOL_NAMES))
        if self.draws < 1 or self.linear_epochs < 1 or self.bootstrap < 0:
            raise ValueError("draws and linear_epochs must be >= 1, bootstrap >= 0")


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
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

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
