"""Faust stream processors; the pure pipeline functions live in ``streams.pipeline``."""
