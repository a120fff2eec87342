"""Inference speed of a predictor on this machine's CPU."""

from __future__ import annotations

import time

import torch

from pneumolab.inference.predictor import Backend


def ms_per_image(backend: Backend, pixels: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time per image (ms) of scoring ``pixels`` as one batch, after one warm-up."""
    backend(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend(pixels)
        times.append(time.perf_counter() - started)
    return 1000.0 * sorted(times)[len(times) // 2] / len(pixels)
