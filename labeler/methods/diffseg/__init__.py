"""DiffSeg (CVPR 2024): zero-shot segments from Stable Diffusion self-attention.

``algorithm`` is the pure aggregation, KL merging and labeling (no model code);
``segmenter`` drives the model. ``labels_from_attention`` is the public pure entry point.
"""

from labeler.methods.diffseg.algorithm import DiffSegOptions, labels_from_attention

__all__ = ["DiffSegOptions", "labels_from_attention"]
