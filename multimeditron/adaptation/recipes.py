"""The typed configuration of `finetune`, `adapt` and `segment` (the same schema style as `train`'s: YAML, `--set`,
environment variables, unknown keys refused with their dotted path), each setting's default written here once.

Every recipe has an `expert`, a `data` section, its method's section, a `schedule` (warmup in epochs, cosine to
`min_lr`) and `training_args` (HF `TrainingArguments`: epochs, batch, learning rate, precision, DeepSpeed/FSDP,
`report_to`, checkpoints). `training_arguments()` gives the values the engine runs with: the command's defaults,
then the user's keys, then the rules that depend on the launch (RETFound's `blr x global batch / 256`, bf16 on CUDA).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from multimeditron.adaptation.engine import Schedule
from multimeditron.adaptation.peft_methods import Adaptation, LoraSection
from multimeditron.config import (
    ConfigError,
    check_training_args,
    parse_section,
    read_config_mapping,
    written_keys,
)
from multimeditron.data.bad_images import BadImagePolicy
from multimeditron.probing.metrics import SelectionMetric
from multimeditron.probing.recipe import LabelledDataSection
from multimeditron.threads import check_threads

Balance = Literal["none", "weights", "sampler"]
Pool = Literal["token", "avg", "avg_all"]
# linear / unet: this toolkit's decoders (BatchNorm before the 1x1 conv; a U-Net with a full-resolution stage on
# the image's pixels); dinov2_linear / dinov2_unet: DINOv2-on-radiology's (`eval/segmentation/utils.py`), which read
# the expert's tokens only.
Decoder = Literal["linear", "unet", "dinov2_linear", "dinov2_unet"]
Transform = Literal["canvas", "timm"]
SmoothingApplies = Literal["always", "mixing"]
SegmentLoss = Literal["ce+dice", "dice"]
PaperMetricSet = Literal["retfound", "dinov2_radiology", "retfound_green"]

# The engine's own settings for every expert command: one log line per epoch, a checkpoint per epoch (the newest
# kept, plus the best when one is selected), no gradient clipping unless asked (RETFound's fine-tuning has none),
# the expert half's datasets hand tensors straight to the model.
ENGINE_DEFAULTS: dict[str, Any] = {"seed": 0, "max_grad_norm": 0.0, "logging_strategy": "epoch", "save_strategy": "epoch",
                                   "save_total_limit": 1, "report_to": "none", "remove_unused_columns": False,
                                   "dataloader_num_workers": 0, "logging_nan_inf_filter": False}
# Commands that choose their best epoch on val: evaluated each epoch, the best model loaded at the end.
SELECTION_DEFAULTS: dict[str, Any] = {"eval_strategy": "epoch", "load_best_model_at_end": True,
                                      "metric_for_best_model": "score", "greater_is_better": True}
# The engine owns the schedule (`schedule` section) and the best-epoch metric; these keys would contradict it.
ENGINE_OWNED = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "metric_for_best_model",
                "greater_is_better")


@dataclass
class ExpertSection:
    spec: str | dict[str, Any] | None = None  # required to train: a SPEC string (`ID[:CHECKPOINT]`, `timm:NAME`, an adapted folder, `DIR#i`) or a mapping
    tiny: bool = False  # the family's tiny architecture (smoke runs)


@dataclass
class UnlabelledSource:
    """One unlabelled image source of a multi-source run (`adapt --objective mermed`): a modality of MerMED-FM."""
    path: str  # a folder of images (searched recursively) or a table, DICOM files included
    image_column: str | None = None
    normalization: str | None = None  # a MerMED-FM modality (chest_xray, ct, oct, ...): its mean/std; None: the expert's
    mean: list[float] | None = None  # explicit per-channel mean (with std), instead of `normalization`
    std: list[float] | None = None
    intensity: str | None = None  # CT/MR window: ct, mri, range:LOW,HIGH or percentile:LOW,HIGH (as `probe`)
    weight: float = 1.0  # share of the drawn images (relative to the other sources), whatever the source's size
    name: str | None = None  # the modality label the memory bank gates by; None: `normalization`, else the path

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        if self.intensity is not None:
            from multimeditron.data.intensity import parse_window

            parse_window(self.intensity)


@dataclass
class UnlabelledDataSection:
    path: str | None = None  # any folder of images (searched recursively) or a table (`image` column / MultiMediset rows)
    image_column: str | None = None
    sources: list[UnlabelledSource] = field(default_factory=list)  # several sources instead of `path` (mermed)
    on_bad_image: BadImagePolicy = "error"  # a file that cannot be read as an image: stop (error) or leave it out (skip)

    def __post_init__(self) -> None:
        if (self.path is None) == (not self.sources):
            raise ValueError("data: give either `path` or a list of `sources`")


@dataclass
class SegmentationDataSection:
    path: str  # ROOT/{train,val,test}/{images,masks}/, ROOT/{images,masks}/ or a table
    image_column: str = "image"
    mask_column: str = "mask"
    split_column: str = "split"
    on_bad_image: BadImagePolicy = "error"  # an image or mask that cannot be read: stop (error) or leave the pair out
    ignore_index: int | None = 255  # mask pixels left out of the loss and the metrics (VOC's 255); None: none
    palette: list[list[int]] | None = None  # RGB colour masks: the colour of class i at position i

    def __post_init__(self) -> None:
        if self.palette is not None and (len(self.palette) < 2 or any(
                len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in self.palette)):
            raise ValueError("palette must list at least two [R, G, B] colours of 0-255, background first, got "
                             f"{self.palette}")


@dataclass
class TimmTransformSection:
    """timm's `create_transform` (training) and Resize + CenterCrop (evaluation), as RETFound's
    `util/datasets.py::build_transform` calls them; used when `finetune.transform` is `timm`."""
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment policy (None: off)
    re_prob: float = 0.25  # random erasing probability (0: off)
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random resized crop area (timm's default)
    color_jitter: float | None = None  # RETFound passes None; timm skips colour jitter when RandAugment is on
    crop_pct: float | None = None  # evaluation: resize to size / crop_pct, centre crop; None: RETFound's rule
    # (224 / 256 up to 224 px, else 1)

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {self.scale}")
        if not 0 <= self.re_prob <= 1:
            raise ValueError(f"re_prob must lie in [0, 1], got {self.re_prob}")


@dataclass
class FinetuneSection:
    adaptation: Adaptation = "finetune"  # finetune: everything trains; lp: the head; lora: adapters; bitfit: biases
    pool: Pool | None = None  # the global output the head reads; None: the family's
    blr: float = 5e-3  # base rate: learning_rate = blr x global batch / 256 unless training_args.learning_rate
    layer_decay: float = 0.65  # finetune only; 1 = one rate for the whole expert
    drop_path: float = 0.2  # not for lp
    label_smoothing: float = 0.1
    # always: the loss smooths its targets; mixing: only timm's Mixup does (RETFound: `--smoothing` reaches Mixup
    # only, its loss is a plain CrossEntropyLoss, so without mixup/cutmix nothing is smoothed)
    smoothing_applies: SmoothingApplies = "always"
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    balance: Balance = "none"  # weights: inverse-frequency class weights; sampler: balanced batches
    augment: bool = True  # canvas: random resized crop (scale 0.5-1) + horizontal flip; timm: its train transform
    transform: Transform = "canvas"  # canvas: the VLM's letterbox canvas; timm: RETFound's timm transforms
    timm: TimmTransformSection = field(default_factory=TimmTransformSection)
    # The expert's (backbone's, LoRA's) peak rate when it differs from the head's (training_args.learning_rate):
    # its groups run at backbone_lr / learning_rate x their layer-decay scale (DINOv2-on-radiology: SGD with a
    # head rate and a backbone rate). None: one rate.
    backbone_lr: float | None = None
    select_metric: SelectionMetric = "retfound"  # what the best epoch maximises on val
    paper_metrics: PaperMetricSet | None = None  # also report this paper's metric set (named in the results)
    bootstrap: int = 1000  # resamples of the test set for the 95% intervals of the test metrics (0: none)
    lora: LoraSection = field(default_factory=LoraSection)

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.backbone_lr is not None and self.backbone_lr < 0:
            raise ValueError(f"backbone_lr must be >= 0, got {self.backbone_lr}")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def loss_smoothing(self) -> float:
        """The smoothing of the loss on unmixed batches."""
        return self.label_smoothing if self.smoothing_applies == "always" else 0.0


@dataclass
class TokenReconstructionSection:
    noise: float = 0.2  # Gaussian pixel noise std, as a fraction of each image's per-channel std (0: none)
    mask_max: float = 1 / 3  # each image masks a fraction U(0, mask_max) of its patch embeddings (0: none)
    layerscale_init: float = 1e-5  # the residual projector's LayerScale start
    drop_path: float = 0.0  # stochastic depth of the trained copy
    augment: bool = False  # augment the clean image (`augmentation` says how)
    augmentation: Literal["crop_flip", "retfound_green"] = "crop_flip"  # crop_flip: random resized crop + flip;
    # retfound_green: RETFound-Green's `data.py::get_default_training_transforms`
    mask_sampling: Literal["count", "bernoulli"] = "count"  # count: exactly floor(f x patches) patches;
    # bernoulli: each patch masked with probability f (RETFound-Green's notebook)
    clean_last: bool = False  # the last sample of each batch neither noised nor masked (RETFound-Green)
    mask_token: Literal["learned", "zero"] = "learned"  # zero: a constant zero token outside the optimiser
    # (RETFound-Green's corruption token is an nn.Parameter of zeros never handed to AdamW)

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if not 0 <= self.mask_max < 1:
            raise ValueError(f"mask_max must lie in [0, 1), got {self.mask_max}")


@dataclass
class MermedSection:
    """MerMED-FM's memory-augmented self-distillation; defaults from the published command (README of
    yangzhou12/MerMED, `main_mermed.py` argparse), see `adaptation/self_distillation.py`."""
    blr: float = 5e-5  # base rate: learning_rate = blr x global batch / 256 unless training_args.learning_rate
    weight_decay_end: float = 0.4  # cosine from training_args.weight_decay (0.04) to this
    layer_decay: float = 0.8
    drop_path: float = 0.1  # the student's; the teacher has none
    momentum_teacher: float = 0.9995  # EMA momentum, cosine to 1
    out_dim: int = 131072  # memory bank entries (the prototypes the views are scored against)
    partition_size: int = 16384  # random partitions of the bank each step
    bottleneck_dim: int = 256  # projection head output (L2-normalised)
    hidden_dim: int = 2048
    head_layers: int = 3
    use_bn_in_head: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 10.0
    global_crops_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    local_crops_number: int = 10
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.2])
    local_crop_size: int | None = None  # None: 96/224 of the expert's input, rounded to whole patches
    solarization: float = 0.0  # MerMED removed DINO's solarisation (0.2 on the second global crop)
    export: Literal["teacher", "student"] = "teacher"  # the released MerMED-FM model is the EMA teacher

    def __post_init__(self) -> None:
        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = (list(getattr(self, name)) + [0.0, 0.0])[:2]
            if len(getattr(self, name)) != 2 or not 0 < low <= high <= 1:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high <= 1, got {getattr(self, name)}")
        if self.out_dim < 1 or not 1 <= self.partition_size <= self.out_dim:
            raise ValueError(f"partition_size must lie in [1, out_dim={self.out_dim}], got {self.partition_size}")
        if self.local_crops_number < 0 or self.head_layers < 1:
            raise ValueError("local_crops_number must be >= 0 and head_layers >= 1")
        if not 0 <= self.momentum_teacher <= 1 or min(self.student_temp, self.teacher_temp,
                                                        self.warmup_teacher_temp) <= 0:
            raise ValueError("momentum_teacher must lie in [0, 1] and the temperatures be > 0")


# MerMED-FM's README command for the engine's own keys (`adapt --objective mermed`): filled in below the user's
# `training_args` and `schedule` keys. DDP buffers are not broadcast: the memory bank is kept equal on every rank by
# its all-gather (broadcasting it would send out_dim x 256 floats each step).
MERMED_TRAINING_DEFAULTS: dict[str, Any] = {"output_dir": "runs/mermed", "num_train_epochs": 100,
                                            "per_device_train_batch_size": 128, "weight_decay": 0.04,
                                            "max_grad_norm": 1.0, "ddp_broadcast_buffers": False}
MERMED_SCHEDULE = {"warmup_epochs": 10.0, "min_lr": 1e-6}


@dataclass
class SegmentSection:
    decoder: Decoder = "linear"
    num_classes: int | None = None  # None: the largest class id in the train masks + 1 (ignore_index left out)
    dice_weight: float = 1.0  # loss = cross-entropy + dice_weight x Dice loss
    # ce+dice: the above; dice: Dice loss only, as monai's DiceLoss(softmax=True, to_onehot_y=True) that
    # DINOv2-on-radiology trains with (background included, per image and class, smoothing 1e-5)
    loss: SegmentLoss = "ce+dice"
    paper_metrics: Literal["dinov2_radiology"] | None = None  # also torchmetrics-style Dice/Jaccard (background
    # pixels ignored), named in segmentation.json
    overlays: int = 4  # test cases drawn as PNGs


@dataclass
class _Recipe:
    """What every trained expert command shares; subclasses add `expert`, `data` and their method's section."""
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {}
    SELECTS_BEST: ClassVar[bool] = True
    # CPU threads of torch and the BLAS/OpenMP pools (None: torch's default)
    threads: int | None = field(default=None, kw_only=True)

    @classmethod
    def engine_training_defaults(cls) -> dict[str, Any]:
        """The TrainingArguments values of this command before the user's `training_args`."""
        return {**ENGINE_DEFAULTS, **(SELECTION_DEFAULTS if cls.SELECTS_BEST else {}), **cls.TRAINING_DEFAULTS}

    def training_arguments(self, processes: int = 1) -> dict[str, Any]:
        """The TrainingArguments values this run uses, for a launch of `processes` processes."""
        values = {**self.engine_training_defaults(), **self.method_training_defaults(), **self.training_args}
        if "per_device_eval_batch_size" not in self.training_args:
            values["per_device_eval_batch_size"] = values["per_device_train_batch_size"]
        if "bf16" not in self.training_args and "fp16" not in self.training_args:
            import torch

            values["bf16"] = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.deepspeed is not None:
            values["deepspeed"] = self.deepspeed
        blr = self.base_learning_rate()
        if blr is not None and "learning_rate" not in self.training_args:
            # the linear scaling rule (RETFound's and MerMED's): absolute lr = blr x global batch / 256
            values["learning_rate"] = blr * self.global_batch(processes) / 256
        return values

    def method_training_defaults(self) -> dict[str, Any]:
        """TrainingArguments values that depend on the recipe's own keys (an objective's engine values): above the
        command's defaults, below the user's `training_args`, which keeps only what the user wrote."""
        return {}

    def base_learning_rate(self) -> float | None:
        """The method's `blr`, when its learning rate scales with the global batch; None: a fixed rate."""
        return None

    def global_batch(self, processes: int = 1) -> int:
        values = {**self.TRAINING_DEFAULTS, **self.method_training_defaults(), **self.training_args}
        return (int(values["per_device_train_batch_size"]) * int(values.get("gradient_accumulation_steps", 1))
                * max(1, processes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fill_defaults(self) -> None:
        """Defaults that depend on other keys (a method's own engine values), applied once after parsing."""


@dataclass
class FinetuneRecipe(_Recipe):
    data: LabelledDataSection
    expert: ExpertSection = field(default_factory=ExpertSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    schedule: Schedule = field(default_factory=lambda: Schedule(warmup_epochs=10.0))
    training_args: dict[str, Any] = field(default_factory=dict)
    deepspeed: str | None = None  # a DeepSpeed JSON (ZeRO); FSDP goes in training_args
    # RETFound's `main_finetune.py`: 50 epochs, weight decay 0.05; batch 16 as RETFound_MAE's README (rmaphoh/
    # RETFound's train.sh: 24). The faithful recipe: cookbook/experts/retfound_finetune_cfp.yaml.
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"output_dir": "runs/finetune", "num_train_epochs": 50,
                                                   "per_device_train_batch_size": 16, "weight_decay": 0.05}

    def base_learning_rate(self) -> float | None:
        return self.finetune.blr


@dataclass
class AdaptRecipe(_Recipe):
    data: UnlabelledDataSection
    expert: ExpertSection = field(default_factory=ExpertSection)
    objective: Literal["token-reconstruction", "mermed"] = "token-reconstruction"
    token_reconstruction: TokenReconstructionSection = field(default_factory=TokenReconstructionSection)
    mermed: MermedSection = field(default_factory=MermedSection)
    schedule: Schedule = field(default_factory=lambda: Schedule(warmup_epochs=1.0))
    training_args: dict[str, Any] = field(default_factory=dict)
    deepspeed: str | None = None
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"output_dir": "runs/adapt", "num_train_epochs": 10,
                                                   "per_device_train_batch_size": 32, "learning_rate": 5e-5,
                                                   "weight_decay": 0.05}
    SELECTS_BEST: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.data.sources and self.objective != "mermed":
            raise ValueError("data.sources: several sources are for --objective mermed; token reconstruction "
                             "takes one data.path")

    def method_training_defaults(self) -> dict[str, Any]:
        """`mermed` runs with MerMED-FM's engine values wherever the user wrote none."""
        return dict(MERMED_TRAINING_DEFAULTS) if self.objective == "mermed" else {}

    def fill_defaults(self) -> None:
        """`mermed` runs with MerMED-FM's schedule wherever the user wrote none."""
        if self.objective != "mermed":
            return
        written = written_keys(self.schedule)
        self.schedule = Schedule(**{k: getattr(self.schedule, k) if k in written else v
                                    for k, v in MERMED_SCHEDULE.items()})

    def base_learning_rate(self) -> float | None:
        return self.mermed.blr if self.objective == "mermed" else None


@dataclass
class SegmentRecipe(_Recipe):
    data: SegmentationDataSection
    expert: ExpertSection = field(default_factory=ExpertSection)
    segment: SegmentSection = field(default_factory=SegmentSection)
    schedule: Schedule = field(default_factory=lambda: Schedule(warmup_epochs=1.0))
    training_args: dict[str, Any] = field(default_factory=dict)
    deepspeed: str | None = None
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"output_dir": "runs/segment", "num_train_epochs": 20,
                                                   "per_device_train_batch_size": 16, "learning_rate": 1e-3,
                                                   "weight_decay": 1e-4}


RecipeT = typing.TypeVar("RecipeT", bound=_Recipe)


def load_recipe(cls: type[RecipeT], path: str | None = None, values: list[tuple[str, Any, str]] | None = None,
                overrides: list[str] | None = None) -> RecipeT:
    """A recipe from a YAML file (or none), command-line values and `--set` overrides, validated in one pass: the
    schema, then `training_args` against TrainingArguments, then the rules between sections."""
    import os
    from pathlib import Path

    data = read_config_mapping(path, overrides, values)
    if path is not None and isinstance(data.get("deepspeed"), str) and not os.path.isabs(data["deepspeed"]):
        data["deepspeed"] = str((Path(path).parent / data["deepspeed"]).resolve())  # relative to the YAML
    recipe = parse_section(cls, data)
    recipe.fill_defaults()
    owned = sorted(set(recipe.training_args) & set(ENGINE_OWNED))
    if owned:
        raise ConfigError(f"training_args.{owned[0]}: set by the expert engine (the `schedule` section sets warmup "
                          f"and the cosine floor; the best epoch is chosen by the method's select metric)")
    check_training_args({k: v for k, v in recipe.training_arguments().items() if k != "deepspeed"})
    _check_rules(recipe)
    return recipe


def _check_rules(recipe: _Recipe) -> None:
    epochs = float(recipe.training_arguments()["num_train_epochs"])
    try:
        check_threads(recipe.threads)
    except ValueError as error:
        raise ConfigError(f"threads: {error}") from None
    if recipe.schedule.warmup_epochs < 0 or (recipe.schedule.min_lr or 0.0) < 0:
        raise ConfigError("schedule: warmup_epochs and min_lr must be >= 0")
    if recipe.schedule.warmup_epochs > epochs > 0:
        raise ConfigError(f"schedule.warmup_epochs: {recipe.schedule.warmup_epochs:g} warm-up epochs are longer than "
                          f"the run ({epochs:g}, training_args.num_train_epochs): it would never reach its learning "
                          f"rate; shorten the warm-up (--warmup-epochs)")
    cooldown = recipe.schedule.cooldown_epochs
    if cooldown < 0 or (epochs > 0 and recipe.schedule.warmup_epochs + cooldown > epochs):
        raise ConfigError(f"schedule.cooldown_epochs: {cooldown:g} must be >= 0 and leave room for the warm-up "
                          f"({recipe.schedule.warmup_epochs:g}) within the run ({epochs:g} epochs)")
    if isinstance(recipe, FinetuneRecipe):
        method = recipe.finetune
        if method.mixing and len(recipe.data.label_columns) > 1:
            raise ConfigError("finetune.mixup / finetune.cutmix: they mix class ids and do not apply to multi-label "
                              "data (several data.label_columns)")
        if method.balance == "sampler" and len(recipe.data.label_columns) > 1:
            raise ConfigError("finetune.balance: sampler needs one class per image; multi-label data takes weights")
        if method.mixing and int(recipe.training_arguments()["per_device_train_batch_size"]) % 2:
            raise ConfigError("training_args.per_device_train_batch_size: mixup/cutmix mix pairs within a batch, "
                              "so it must be even")


