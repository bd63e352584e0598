"""`train-expert --objective clip`: contrastive image-text training of a CLIP-family expert (the published
`scripts/expert_model_train.py`, `biomed_train.py`, `train_clip.py`) with open_clip's model and `ClipLoss`, on the
engine, from image-caption pairs: MultiMediset caption rows (`text`), conversation rows (the image and the first
assistant turn) or any table with an image and a caption column, one modality or all at once.

The expert is built by the registry (`biomedclip`, `clip` with the open_clip backend, their checkpoints or an
adapted folder); its OpenCLIP vision tower becomes the `visual` of an open_clip model whose text tower (and
tokenizer, logit scale) comes from the family's checkpoint (`contrastive.text`), so the expert trains in the very
module layout the registry loads. Evaluation on the held-out split: image->text and text->image recall@k (a
retrieval counts as correct when it finds any item with the same caption) and zero-shot classification of the
modality column; the best epoch by val mean recall@1 goes to `OUT/best/`, an adapted-expert folder (`expert.json`
+ `expert.safetensors`) with the text tower beside it (`contrastive_text.safetensors`, open_clip key names).

Parts: `recipe` (the typed recipe), `data` (pairs), `model` (open_clip model and loss), `evaluation` (recall@k,
zero-shot), `train` (the run and its plan).
"""
from multimeditron.adaptation.contrastive.data import CaptionDataset, CaptionSplit, load_caption_pairs
from multimeditron.adaptation.contrastive.evaluation import evaluate_split, retrieval_metrics
from multimeditron.adaptation.contrastive.model import (
           ContrastiveObjective,
           build_clip_model,
           param_groups,
           text_source,
           text_state,
)
from multimeditron.adaptation.contrastive.recipe import (
           TEXT_FILE,
           CaptionDataSection,
           ContrastiveRecipe,
           ContrastiveSection,
)
from multimeditron.adaptation.contrastive.train import contrastive_plan, prepare_contrastive, train_contrastive

__all__ = ["CaptionDataSection", "CaptionDataset", "CaptionSplit", "ContrastiveObjective", "ContrastiveRecipe",
           "ContrastiveSection", "TEXT_FILE", "build_clip_model", "contrastive_plan", "evaluate_split",
           "load_caption_pairs", "param_groups", "prepare_contrastive", "retrieval_metrics", "text_source",
           "text_state", "train_contrastive"]
