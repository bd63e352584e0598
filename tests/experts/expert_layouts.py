"""Writers of tiny checkpoints in each family's ORIGINAL published layout, from a source model with random weights.

Each `write_*` returns (checkpoint path, reference) where reference(normalised pixels) gives the source model's
patch tokens. `mutate` sees the layout's innermost weight dict before it is saved (to add or remove keys).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

TINY = dict(embed_dim=32, depth=2, num_heads=2)
Mutate = Callable[[dict], None]
Reference = Callable[[torch.Tensor], torch.Tensor]


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with noise of a useful size.

    Default inits (LayerNorm = 1/0, layer scale = 1e-5) would let a wrongly loaded block go unnoticed, because
    its contribution to the output would be tiny; here every tensor moves the features.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            is_norm_weight = name.endswith("weight") and p.ndim == 1
            p.copy_(noise + (1.0 if is_norm_weight else 0.0))
    return module.eval()


def normalise(canvas: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (canvas - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _noop(_: dict) -> None:
    return None


def timm_source(name: str, img_size: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **TINY, **kwargs)
    return randomize_(model, seed)


def timm_patch_reference(model: torch.nn.Module) -> Reference:
    return lambda x: model.forward_features(x)[:, model.num_prefix_tokens:]


# --- RETFound MAE: {"model": full MAE state dict (encoder + decoder_* + mask_token), "optimizer", "args", ...}
def write_retfound_mae(tmp: Path, mutate: Mutate = _noop, img_size: int = 32) -> tuple[str, Reference]:
    src = timm_source("vit_large_patch16_224", img_size)
    sd = dict(src.state_dict())
    d = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.randn(1, 1, d)
    sd["decoder_embed.weight"] = torch.randn(16, d)
    sd["decoder_embed.bias"] = torch.randn(16)
    sd["decoder_pos_embed"] = torch.randn(1, sd["pos_embed"].shape[1], 16)
    sd["decoder_blocks.0.norm1.weight"] = torch.randn(16)
    sd["decoder_norm.weight"] = torch.randn(16)
    sd["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 16)
    mutate(sd)
    path = tmp / "RETFound_mae_natureCFP.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_large_patch16", lr=1e-4)},
               path)
    return str(path), timm_patch_reference(src)


# --- Meta DINOv2 layout (inverse of timm's _convert_dinov2)
def timm_to_meta_dinov2(sd: dict, swiglu: bool, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if swiglu:
            k = k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    d = sd["cls_token"].shape[-1]
    if "reg_token" in sd:
        # Meta embeds the class token's position; timm folds it into cls_token for register models.
        cls_pos = torch.randn(1, 1, d, generator=g)
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = sd["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    out["mask_token"] = torch.zeros(1, d)
    return out


def write_meta_dinov2(tmp: Path, model_name: str, mutate: Mutate = _noop, img_size: int = 28) -> tuple[str, Reference]:
    src = timm_source(model_name, img_size)
    meta = timm_to_meta_dinov2(dict(src.state_dict()), swiglu="giant" in model_name)
    mutate(meta)
    path = tmp / f"{model_name}_pretrain.pth"
    torch.save(meta, path)
    return str(path), timm_patch_reference(src)


# --- RETFound DINOv2: DINOv2 training state {"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}, ...}
def write_retfound_dinov2(tmp: Path, mutate: Mutate = _noop, img_size: int = 28) -> tuple[str, Reference]:
    src = timm_source("vit_large_patch14_dinov2", img_size)
    meta = timm_to_meta_dinov2(dict(src.state_dict()), swiglu=False)
    teacher = {f"backbone.{k}": v for k, v in meta.items()}
    teacher.update({"dino_head.mlp.0.weight": torch.randn(64, 32), "dino_head.last_layer.weight": torch.randn(8, 64),
                    "ibot_head.mlp.0.weight": torch.randn(64, 32)})
    mutate(teacher)
    student = {k: v + 1.0 for k, v in teacher.items()}  # a different network: must not be the one loaded
    path = tmp / "RETFound_dinov2_meh.pth"
    torch.save({"teacher": teacher, "student": student, "iteration": 12500,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return str(path), timm_patch_reference(src)


# --- Meta DINOv3 layout (inverse of timm's eva checkpoint_filter_fn)
def timm_to_meta_dinov3(sd: dict, swiglu: bool, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if k.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if swiglu:
            k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    for k in [k for k in sd if k.endswith("attn.q_bias")]:
        q, v = sd[k], sd[k.replace("q_bias", "v_bias")]
        base = k.removesuffix("q_bias")
        # Meta keeps one qkv bias whose k part is masked out (so its value is irrelevant).
        out[base + "qkv.bias"] = torch.cat([q, torch.randn(q.shape, generator=g), v])
        out[base + "qkv.bias_mask"] = torch.cat([torch.ones_like(q), torch.zeros_like(q), torch.ones_like(v)])
    d = sd["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, d)
    out["rope_embed.periods"] = torch.rand(8, generator=g) * 100
    return out


def write_meta_dinov3(tmp: Path, model_name: str, mutate: Mutate = _noop, img_size: int = 32,
                      qkv_bias: bool = True) -> tuple[str, Reference]:
    src = timm_source(model_name, img_size, qkv_bias=qkv_bias, global_pool="token")
    meta = timm_to_meta_dinov3(dict(src.state_dict()), swiglu="huge" in model_name or "7b" in model_name)
    if "7b" in model_name:
        d = meta["cls_token"].shape[-1]
        meta["local_cls_norm.weight"], meta["local_cls_norm.bias"] = torch.randn(d), torch.randn(d)
    mutate(meta)
    path = tmp / f"{model_name}_pretrain_lvd1689m.pth"
    torch.save(meta, path)
    return str(path), timm_patch_reference(src)


# --- MerMED-FM training checkpoint: {"student": module.backbone.*/module.head.*, "teacher": backbone.*/head.*, ...}
def write_mermed(tmp: Path, mutate: Mutate = _noop, img_size: int = 32,
                 with_teacher: bool = True) -> tuple[str, Reference]:
    src = timm_source("vit_base_patch16_224", img_size)
    backbone = dict(src.state_dict())
    d = backbone["cls_token"].shape[-1]
    heads = {"head.mlp.0.weight": torch.randn(64, d), "head.mlp.0.bias": torch.randn(64),
             "head.last_layer.weight_g": torch.randn(8, 1), "head.last_layer.weight_v": torch.randn(8, 64)}
    teacher = {f"backbone.{k}": v for k, v in backbone.items()} | heads
    teacher["backbone.masked_embed"] = torch.zeros(1, d)
    student = {f"module.{k}": v + 1.0 for k, v in teacher.items()}
    checkpoint = {"student": student, "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
                  "args": argparse.Namespace(arch="vit_base", patch_size=16, out_dim=8192),
                  "fp16_scaler": {"scale": 1024.0}}
    if with_teacher:
        mutate(teacher)
        checkpoint["teacher"] = teacher
    else:
        student = {f"module.{k}": v for k, v in teacher.items()}  # the student is now the source network
        mutate(student)
        checkpoint["student"] = student
    path = tmp / "MerMED_FM.pth"
    torch.save(checkpoint, path)
    return str(path), timm_patch_reference(src)


# --- RETFound-Green: plain timm state dict
def write_retfound_green(tmp: Path, mutate: Mutate = _noop, img_size: int = 28) -> tuple[str, Reference]:
    src = timm_source("vit_small_patch14_reg4_dinov2", img_size)
    sd = dict(src.state_dict())
    mutate(sd)
    path = tmp / "retfoundgreen_statedict.pth"
    torch.save(sd, path)
    return str(path), timm_patch_reference(src)


# --- BiomedCLIP: open_clip folder (open_clip_pytorch_model.bin + open_clip_config.json), HF text tower included
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_biomedclip(tmp: Path, mutate: Mutate = _noop, img_size: int = 32,
                     embed_dim: int = 16) -> tuple[str, Reference, Callable]:
    trunk = timm_source("vit_base_patch16_224", img_size)
    proj = torch.randn(embed_dim, trunk.num_features) * 0.2
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd["visual.head.proj.weight"] = proj
    sd.update({"text.transformer.embeddings.word_embeddings.weight": torch.randn(30, 8),
               "text.transformer.encoder.layer.0.attention.self.query.weight": torch.randn(8, 8),
               "text.proj.0.weight": torch.randn(8, 8), "text.proj.2.weight": torch.randn(embed_dim, 8),
               "logit_scale": torch.tensor(4.6)})
    mutate(sd)
    folder = tmp / "biomedclip"
    folder.mkdir()
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG))
    embedding = lambda x: trunk(x) @ proj.T
    return str(folder), timm_patch_reference(trunk), embedding


# --- OpenCLIP CLIP: full CLIP state dict (vision + text tower) in open_clip_pytorch_model.bin
def open_clip_source(seed: int = 0, image_size: int = 28) -> torch.nn.Module:
    from open_clip.model import CLIP

    model = CLIP(embed_dim=16,
                 vision_cfg=dict(image_size=image_size, patch_size=14, width=32, layers=2, head_width=16),
                 text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    return randomize_(model, seed)


def write_open_clip(tmp: Path, mutate: Mutate = _noop, image_size: int = 28) -> tuple[str, torch.nn.Module]:
    src = open_clip_source(image_size=image_size)
    sd = dict(src.state_dict())
    mutate(sd)
    path = tmp / "open_clip_pytorch_model.bin"
    torch.save(sd, path)
    return str(path), src


def open_clip_tokens(src: torch.nn.Module, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Reference tokens [cls, patches] straight from OpenCLIP's modules."""
    visual = src.visual
    h = visual._embeds(x)
    blocks = visual.transformer.resblocks
    for blk in blocks[: len(blocks) + layer + 1]:
        h = blk(h) if visual.transformer.batch_first else blk(h.transpose(0, 1)).transpose(0, 1)
    return visual.ln_post(h) if layer == -1 else h


# --- HF CLIP: CLIPModel.save_pretrained folder
def hf_clip_source(seed: int = 0, image_size: int = 28) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14),
        projection_dim=16,
    )
    return randomize_(CLIPModel(cfg), seed)


def write_hf_clip(tmp: Path, mutate: Mutate = _noop, image_size: int = 28) -> tuple[str, torch.nn.Module]:
    from safetensors.torch import load_file, save_file

    src = hf_clip_source(image_size=image_size)
    folder = tmp / "hf-clip"
    src.save_pretrained(folder)
    sd = load_file(folder / "model.safetensors")
    mutate(sd)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder), src
