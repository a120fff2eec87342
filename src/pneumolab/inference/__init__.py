"""Inference: load a finished run and predict on files, PIL images or arrays."""
