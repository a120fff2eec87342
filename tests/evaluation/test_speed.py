"""ms_per_image: median wall time per image of one batch, after a warm-up call."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pneumolab.evaluation.speed import ms_per_image


def test_time_per_image_is_the_batch_time_over_its_size():
    calls = []

    def backend(pixels: torch.Tensor) -> np.ndarray:
        calls.append(len(pixels))
        time.sleep(0.02)
        return np.zeros(len(pixels))

    ms = ms_per_image(backend, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), repeats=3)
    assert calls == [4, 4, 4, 4]  # one warm-up, three timed
    assert ms >= 20 / 4  # a sleep lasts at least its time: 20 ms per batch of 4
    assert ms == pytest.approx(5, rel=2)  # and not wildly more on a busy machine
