"""Segmentation methods: one module per method."""
