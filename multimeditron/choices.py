"""The closed sets of names that the run config (`multimeditron.config`), the model config, the builders and the
training stages share, written once: `Literal` types for the config's validation, tuples for messages and checks."""
from __future__ import annotations

from typing import Literal, get_args

Fusion = Literal["none", "avg", "cat", "attn"]
Projection = Literal["shared", "per_expert"]
Router = Literal["uniform", "learned", "pretrained"]
ProjectorType = Literal["mlp2x_gelu", "linear", "mlp3x_gelu"]  # mlp3x_gelu: the published projector
ImageGeometry = Literal["pad", "center_crop"]  # center_crop: the published (CLIP processor) geometry
# The `attn` fusion's layer: `residual` (this toolkit's: LayerNorms, zero-initialised output, a residual) or
# `published` (the published MultiMeditron cross-attention, computed exactly as it was).
AttnVariant = Literal["residual", "published"]

# The training stages by name; what each one trains is `multimeditron.training.stages.STAGE_PARTS`.
Stage = Literal["alignment", "vision_alignment", "end2end", "full", "lm_only"]

FUSIONS: tuple[str, ...] = get_args(Fusion)
PROJECTIONS: tuple[str, ...] = get_args(Projection)
ROUTERS: tuple[str, ...] = get_args(Router)
PROJECTOR_TYPES: tuple[str, ...] = get_args(ProjectorType)
IMAGE_GEOMETRIES: tuple[str, ...] = get_args(ImageGeometry)
ATTN_VARIANTS: tuple[str, ...] = get_args(AttnVariant)
STAGES: tuple[str, ...] = get_args(Stage)

# The image placeholder in the data's text, unless a dataset, the config or the saved processor says otherwise.
DEFAULT_ATTACHMENT_TOKEN = "<|image|>"

# The published MultiMeditron toolkit's names, read by the config and checkpoint converters: its fusion methods, and
# its gate (a ResNet-50 over the experts in their order, fed the CLIP-processed image).
PUBLISHED_FUSIONS = {"cross_attn": "attn", "weighted_average": "avg", "sequence_append": "cat"}
PUBLISHED_GATE_ARCH = "resnet50"
