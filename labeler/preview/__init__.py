"""Visual preview of labeler outputs: overlays and a static HTML gallery (``labeler preview``)."""
