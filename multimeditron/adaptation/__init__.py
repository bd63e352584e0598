"""Adapting vision experts to medical images: fine-tuning (full, linear probe, LoRA, BitFit), RETFound-Green's
token reconstruction and segmentation decoders. Every trained expert is written as an adapted-expert folder
(`multimeditron.experts.adapted`) that the registry, and so a VLM stage config, loads as that expert.
"""
