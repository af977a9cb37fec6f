"""The calibrated `tiny` model: a seeded Stable Diffusion small enough for CPUs and tests.

``model.py`` builds it (diffusers layout, cached), ``calibration.py`` sets the weights that give
its features meaning (docs/tiny-model.md), ``start.py`` is where fine-tuning from it starts.
Production code (``--model tiny``, the demo) imports these; the scenery that only tests and
benchmarks use (synthetic worlds, scores) lives in :mod:`labeler.testing`.
"""
