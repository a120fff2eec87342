"""The score cache: one scoring pass per network and distinct input, answered exactly."""

from __future__ import annotations

import numpy as np
import torch

from pneumolab.inference.score_cache import ScoreCache
from pneumolab.inference.scores import Scores


def _counting_scorer(calls: list[int]):
    def score(pixels) -> Scores:
        calls.append(len(pixels))
        planes = np.asarray(pixels, dtype=np.float64)
        return Scores(planes.mean(axis=(1, 2, 3)) / 255, planes.std(axis=(1, 2, 3)))

    return score


def _pixels(seed: int, n: int = 4, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def test_the_same_pixels_are_scored_once_per_network_whatever_their_container():
    cache, calls = ScoreCache(), []
    scorer = cache.wrap(_counting_scorer(calls), "run-a")
    pixels = _pixels(0)
    first = scorer(pixels)
    again = scorer(torch.from_numpy(pixels.copy()))  # a tensor of the same pixels
    assert calls == [4] and (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first.probability, again.probability)
    assert np.array_equal(first.ood, again.ood)


def test_other_pixels_or_another_network_are_scored_again():
    cache, calls = ScoreCache(), []
    a = cache.wrap(_counting_scorer(calls), "run-a")
    b = cache.wrap(_counting_scorer(calls), "run-b")
    pixels = _pixels(0)
    a(pixels)
    b(pixels)  # another network
    changed = pixels.copy()
    changed[2, 0, 3, 3] ^= 1  # one pixel of one image
    a(changed)
    a(pixels[:2])  # a part of a batch scored before
    a(pixels.reshape(4, 1, 4, 16))  # the same bytes in another shape
    assert calls == [4, 4, 4, 2, 4] and cache.hits == 0


def test_a_caller_writing_to_its_scores_leaves_the_cache_intact():
    cache, calls = ScoreCache(), []
    scorer = cache.wrap(_counting_scorer(calls), "run-a")
    pixels = _pixels(1)
    expected = scorer(pixels).probability.copy()
    scorer(pixels).probability[:] = -1
    assert np.array_equal(scorer(pixels).probability, expected) and calls == [4]


def test_a_bypassed_cache_scores_anew_without_counting_or_storing():
    cache, calls = ScoreCache(), []
    scorer = cache.wrap(_counting_scorer(calls), "run-a")
    pixels = _pixels(2)
    scorer(pixels)
    with cache.bypassed():
        scorer(pixels)  # what a timing needs: the work done again
        scorer(_pixels(3))
    scorer(_pixels(3))  # not stored while bypassed
    assert calls == [4, 4, 4, 4] and (cache.hits, cache.misses) == (0, 2)
    scorer(pixels)
    assert cache.hits == 1 and len(calls) == 4
