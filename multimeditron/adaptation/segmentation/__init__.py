"""Segmentation on a frozen expert (DINOv2-on-radiology's protocol): a linear decoder on the patch grid or a
U-Net-style decoder fed by 4 intermediate blocks, trained on image + mask pairs, scored by per-class Dice and
Jaccard."""
