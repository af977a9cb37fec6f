"""Build the segmenter a job asks for, on an already loaded backbone."""

from __future__ import annotations

from labeler.config import JobConfig


def build_segmenter(config: JobConfig, device: str | None = None):
    """Load the model and the method once (a worker calls this at start-up).

    Returns:
        an object following :class:`labeler.methods.base.Segmenter`.
    """
    from labeler.models.backbone import load_backbone

    if config.method == "diffseg":
        from labeler.methods.diffseg.algorithm import DiffSegOptions
        from labeler.methods.diffseg.segmenter import DiffSeg

        settings = config.diffseg
        backbone = load_backbone(config.model_name, device=device or config.device, dtype=config.dtype)
        options = DiffSegOptions(
            kl_threshold=settings.kl_threshold,
            iterations=settings.iterations,
            grid_points=settings.grid_points,
            weights=settings.weights,
        )
        return DiffSeg(
            backbone,
            options,
            timestep=settings.timestep,
            max_label_side=settings.max_label_side,
            antialias=settings.antialias,
        )
    if config.method == "slime":
        from labeler.methods.slime.algorithm import SlimeOptions
        from labeler.methods.slime.embedding_set import EmbeddingSet
        from labeler.methods.slime.segmenter import Slime

        embedding_set = EmbeddingSet.load(config.embeddings)
        options = SlimeOptions.from_mapping({**embedding_set.inference, **config.slime.options})
        model = config.model or embedding_set.model
        backbone = load_backbone(model, device=device or config.device, dtype=config.dtype)
        return Slime(backbone, embedding_set, options, seed=config.seed)
    if config.method == "diffews":
        from labeler.methods.diffews import factory

        return factory.build(config, device)
    raise ValueError(f"method {config.method!r} is not available in this version")
