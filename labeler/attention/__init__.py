"""Reading and changing the attention of a diffusers UNet through attention processors.

- :mod:`~labeler.attention.processor`: the base of every processor (Q/K/V projection, the
  fused and explicit attention kernels, output projection); a new processor is a subclass.
- :mod:`~labeler.attention.hooks`: installs a set of processors once per segmenter, restores
  the UNet's own.
- :mod:`~labeler.attention.layers`: attention layers by role and resolution, layer selectors.
- :mod:`~labeler.attention.capture`: explicit, head-averaged attention probabilities handed
  to a sink (DiffSeg, the tiny model's checks). A method's own processors live in its package
  (``methods/slime/capture.py``, ``methods/diffews/attention.py``).
"""
