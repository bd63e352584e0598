"""The `train-expert --objective clip` recipe: its data, contrastive and training sections, with the published
scripts' defaults, and the file names and constants the other parts share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from multimeditron.adaptation.engine import Schedule
from multimeditron.adaptation.recipes import ExpertSection, _Recipe
from multimeditron.data.bad_images import BadImagePolicy

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
