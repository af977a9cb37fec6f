"""Loading Stable Diffusion components: real checkpoints and the seeded `tiny` model."""
