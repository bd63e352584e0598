"""The `pretrained` router's classifier: a timm image classifier (e.g. the published ResNet-50 gate) whose class
probabilities are summed into expert probabilities through a configured class -> expert list, and its checkpoint
reader (the published `GatingNetwork` folder, a raw torchvision/timm state dict, a hub id)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multimeditron.experts.base import CLIP_MEAN, CLIP_STD
from multimeditron.experts.checkpoints import (
    load_state_dict_checked,
    read_checkpoint,
    resolve_companion_file,
    strip_prefix,
    unwrap_state_dict,
)

# The published gate (`GatingNetwork`) stores a torchvision ResNet-50 under `resnet.`; timm's ResNets use the same
# parameter names, so its weights load once the prefix is gone.
PUBLISHED_PREFIX = "resnet."
PUBLISHED_MODEL_TYPE = "gating_network"


@dataclass
class GateClassifierSpec:
    """What the `pretrained` router is built from (stored in the model config as `router_classifier`).

    class_to_expert: for each class of the classifier, in order, the index of the expert it routes to (several
        classes may share an expert: their probabilities add up); every expert must receive at least one class.
    checkpoint: its weights (the published `GatingNetwork` folder, a .safetensors/.pth state dict, or a hub id);
        None = random weights (tests, or a saved model whose weights come with it).
    arch: the timm model name (`resnet50` = the published gate); options: keyword arguments of timm.create_model.
    image_size, mean, std: its input (the canvas is resized to image_size, then normalised; the published gate read
        the CLIP-normalised 224-px image of its experts).
    trainable_stages: the training stages in which the classifier learns (published: only `full`); frozen, it
        also keeps its BatchNorm statistics (eval mode).
    """

    class_to_expert: list[int]
    checkpoint: str | None = None
    arch: str = "resnet50"
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    trainable_stages: list[str] = field(default_factory=lambda: ["full"])

    @classmethod
    def from_dict(cls, data: dict[str, Any], num_experts: int, where: str = "router_classifier") -> GateClassifierSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping with class_to_expert, checkpoint, arch, ...")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; valid keys: {sorted(known)}")
        if "class_to_expert" not in data:
            raise ValueError(f"{where}.class_to_expert: required (for each classifier class, the expert it routes to) "
                             f"unless checkpoint is a train-gate folder that maps its classes to experts by name")
        spec = cls(**data)
        mapping = spec.class_to_expert
        if not isinstance(mapping, list) or not mapping or not all(isinstance(i, int) for i in mapping):
            raise ValueError(f"{where}.class_to_expert: expected a non-empty list of expert indices, got {mapping!r}")
        outside = [i for i in mapping if not 0 <= i < num_experts]
        if outside:
            raise ValueError(f"{where}.class_to_expert: one expert index (0..{num_experts - 1}) per class of the "
                             f"classifier; {outside} outside the {num_experts} experts")
        unused = sorted(set(range(num_experts)) - set(mapping))
        if unused:
            raise ValueError(f"{where}.class_to_expert: experts {unused} receive no class and would never run; map a "
                             f"class to each expert")
        import timm

        if not timm.is_model(spec.arch):
            raise ValueError(f"{where}.arch: {spec.arch!r} is not a timm model name (the published gate: resnet50)")
        if spec.image_size < 1 or len(spec.mean) != 3 or len(spec.std) != 3:
            raise ValueError(f"{where}: image_size must be positive and mean/std have 3 values")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a gate folder written by `multimeditron train-gate` records beside its weights, read when the config leaves it
# out: the classifier's architecture and input, and its class -> expert mapping by names (`class_experts`).
GATE_RECORD_KEYS = ("arch", "options", "image_size", "mean", "std")


def read_gate_record(checkpoint: str | None) -> dict[str, Any] | None:
    """The `config.json` of a local gate folder (the published `GatingNetwork` layout, or `train-gate`'s, which adds
    `arch`, `image_size`, `mean`, `std` and `class_experts`), else None."""
    from pathlib import Path

    if not checkpoint or not Path(checkpoint).expanduser().is_dir():
        return None
    config_file = Path(checkpoint).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    try:
        record = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not valid JSON ({error})") from error
    return record if isinstance(record, dict) and record.get("model_type") == PUBLISHED_MODEL_TYPE else None


def expert_name(expert: Any) -> str:
    """The name a gate's `class_experts` calls an expert by: the `name` an adapted-expert folder records (written by
    `train-expert`), else the expert's registry id."""
    from multimeditron.experts.adapted import is_adapted_checkpoint, read_adapted_record
    from multimeditron.experts.base import ExpertSpec

    spec = ExpertSpec.from_dict(expert)
    if is_adapted_checkpoint(spec.checkpoint):
        name = read_adapted_record(spec.checkpoint).get("provenance", {}).get("name")
        if name:
            return str(name)
    return spec.id


def complete_router_classifier(classifier: dict[str, Any], experts: list[Any],
                               where: str = "router_classifier") -> dict[str, Any]:
    """The one place where a gate's classes meet the model's experts by name.

    When `checkpoint` is a gate folder, the keys the config leaves out (`arch`, `image_size`, `mean`, `std`,
    `options`) come from its record, and its `class_experts` ({class name: expert name}) gives `class_to_expert`
    through the experts' names (`expert_name`). A class naming an expert the model does not have, an expert no class
    routes to, two experts of one name, or a `class_to_expert` that contradicts the names is a ValueError naming
    both sides. Returns the completed mapping (the input when there is no gate folder)."""
    record = read_gate_record(classifier.get("checkpoint"))
    if record is None:
        return classifier
    out = {**{k: record[k] for k in GATE_RECORD_KEYS if k in record and classifier.get(k) is None},
           **{k: v for k, v in classifier.items() if v is not None}}
    class_experts, names = record.get("class_experts"), record.get("class_names")
    if not class_experts:
        return out
    source = classifier["checkpoint"]
    if not isinstance(class_experts, dict) or not isinstance(names, list) or set(class_experts) != set(names):
        raise ValueError(f"{source}/config.json: class_experts must map each of class_names {names} to an expert "
                         f"name, got {class_experts!r}")
    expert_names = [expert_name(e) for e in experts]
    twice = sorted({n for n in expert_names if expert_names.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: experts {expert_names} share the name(s) {twice}, so the gate {source}'s "
                         f"class_experts {class_experts} cannot tell them apart; give each a `name` when training it "
                         f"(train-expert --name) or set class_to_expert by index")
    unknown = {c: e for c, e in class_experts.items() if e not in expert_names}
    if unknown:
        raise ValueError(f"{where}: the gate {source} routes {unknown} to expert(s) the model does not have; its "
                         f"experts are {expert_names}")
    unused = [n for n in expert_names if n not in class_experts.values()]
    if unused:
        raise ValueError(f"{where}: expert(s) {unused} receive no class of the gate {source} (class_experts "
                         f"{class_experts}) and would never run")
    derived = [expert_names.index(class_experts[c]) for c in names]
    given = classifier.get("class_to_expert")
    if given is not None and list(given) != derived:
        raise ValueError(f"{where}.class_to_expert: {given} contradicts the gate {source}'s class_experts "
                         f"{class_experts} over the experts {expert_names} (= {derived}); remove class_to_expert")
    out["class_to_expert"] = derived
    return out


class GateClassifier(nn.Module):
    """Canvas (B, 3, S, S) in [0, 1] -> expert probabilities (B, E): the classifier's softmax over its classes, each
    class's probability added to the expert `class_to_expert` names."""

    def __init__(self, spec: GateClassifierSpec, num_experts: int) -> None:
        super().__init__()
        import timm

        self.spec = spec
        self.model = timm.create_model(spec.arch, pretrained=False, num_classes=len(spec.class_to_expert),
                                       **spec.options)
        # (C, E) one-hot: class probabilities @ mapping = expert probabilities
        mapping = torch.zeros(len(spec.class_to_expert), num_experts)
        mapping[torch.arange(len(spec.class_to_expert)), torch.tensor(spec.class_to_expert)] = 1.0
        # Persistent buffers: from_pretrained builds on the meta device and fills only what the checkpoint holds.
        self.register_buffer("class_to_expert", mapping)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def logits(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas (B, 3, S, S) in [0, 1] -> class logits (B, C): resized to image_size, normalised, classified
        (`train-gate` trains through this, so a gate sees the same input in training and in the router)."""
        size = self.spec.image_size
        pixels = canvas.float()
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
        pixels = (pixels - self.mean.float()) / self.std.float()
        dtype = next(self.model.parameters()).dtype
        return self.model(pixels.to(dtype)).float()

    def class_probabilities(self, canvas: torch.Tensor) -> torch.Tensor:
        return self.logits(canvas).softmax(dim=-1)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        return self.class_probabilities(canvas) @ self.class_to_expert.float()

    def load_checkpoint(self, source: str) -> None:
        """Weights from the published gate's folder (`config.json` of `gating_network` + `model.safetensors` under
        `resnet.`), a raw state dict of the same network (the published legacy `.pth`) or a timm state dict."""
        config_file = resolve_companion_file(source, "config.json")
        if config_file is not None:
            stored = json.loads(config_file.read_text())
            classes = stored.get("num_classes")
            if stored.get("model_type") == PUBLISHED_MODEL_TYPE and classes != len(self.spec.class_to_expert):
                names = stored.get("class_names") or []
                raise ValueError(f"router_classifier.class_to_expert: the gate {source} has {classes} classes "
                                 f"{names}, but {len(self.spec.class_to_expert)} are mapped; give one expert index "
                                 f"per class, in the classifier's order")
        state, entry = unwrap_state_dict(read_checkpoint(source), source=source)
        if any(key.startswith(PUBLISHED_PREFIX) for key in state):
            state = strip_prefix(state, PUBLISHED_PREFIX)
        load_state_dict_checked(self.model, state, source, entry=entry)
