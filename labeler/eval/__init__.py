"""Evaluation of labeler outputs against ground truth (``labeler eval``)."""
