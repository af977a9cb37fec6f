"""Capturing attention probabilities through diffusers attention processors."""
