"""Scenery for tests and benchmarks: synthetic worlds with known regions, and method scores on
them. Nothing in the rest of ``labeler`` imports this package.
"""
