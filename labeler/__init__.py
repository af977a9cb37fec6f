"""labeler: batch dataset labeling with Stable Diffusion attention (DiffSeg, SLiMe)."""

__version__ = "0.1.0"
