"""Scores kept by model and input, so that a comparison scores each distinct input once per
network: an ensemble's members are the same networks as the single runs beside it, and under
the shift protocol they see the same shifted pixels.

The key is the network (its run folder, backend and device) and a digest of the uint8 pixels, so
a hit returns exactly what scoring again would return; an ensemble member fed the ensemble's
larger images is resized first and keyed on what it really sees.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pneumolab.inference.scores import Scorer, Scores

log = logging.getLogger(__name__)


def pixels_digest(pixels: Any) -> tuple[tuple[int, ...], str, bytes]:
    """Shape, dtype and a 128-bit BLAKE2 digest of uint8 ``(N, 1, S, S)`` pixels."""
    planes = np.ascontiguousarray(np.asarray(pixels))
    digest = hashlib.blake2b(planes.data, digest_size=16).digest()
    return planes.shape, str(planes.dtype), digest


class ScoreCache:
    """Memoises single networks' :class:`~pneumolab.inference.scores.Scores` (pass it to
    :meth:`Predictor.from_run <pneumolab.inference.predictor.Predictor.from_run>`). Keep one for
    the length of a comparison; time scoring inside :meth:`bypassed`, as a repeated batch
    costs nothing here."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, Any], Scores] = {}
        self._bypassed = False
        self.hits = 0
        self.misses = 0

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        """Within this block every wrapped scorer scores anew, uncounted and unstored."""
        self._bypassed = True
        try:
            yield
        finally:
            self._bypassed = False

    def wrap(self, scorer: Scorer, network: str) -> Scorer:
        """``scorer``, answered from the cache for pixels ``network`` has already scored."""

        def cached(pixels: Any) -> Scores:
            if self._bypassed:
                return scorer(pixels)
            key = (network, pixels_digest(pixels))
            if key in self._scores:
                self.hits += 1
            else:
                self.misses += 1
                self._scores[key] = scorer(pixels)
            return copy.deepcopy(self._scores[key])  # callers may write to theirs

        return cached

    def log_use(self) -> None:
        """Log how many scoring passes were answered from the cache."""
        total = self.hits + self.misses
        log.info("scoring passes answered from the cache: %d of %d", self.hits, total)
