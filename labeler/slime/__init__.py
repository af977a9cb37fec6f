"""SLiMe fitting: annotated images in, an embedding set out."""
