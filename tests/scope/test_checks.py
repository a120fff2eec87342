"""Sanity checks before the network: size, aspect ratio, empty and constant images."""

from __future__ import annotations

import numpy as np
import pytest

from pneumolab.scope.checks import MAX_ASPECT, MIN_SIDE, ScopeChecks, image_sanity

RNG = np.random.default_rng(0)
XRAY_LIKE = RNG.integers(20, 230, (64, 64), dtype=np.uint8)


def test_an_ordinary_image_passes():
    assert image_sanity(1500, 1200, XRAY_LIKE) == ScopeChecks()


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (1, 1, "too small"),
        (MIN_SIDE - 1, 500, "too small"),
        (4000, 3, "aspect ratio"),
        (int(500 * MAX_ASPECT) + 1, 500, "aspect ratio"),
    ],
)
def test_tiny_and_strip_images_are_out_of_scope(width, height, message):
    reasons = image_sanity(width, height, XRAY_LIKE).reasons
    assert any(message in reason for reason in reasons), reasons


def test_the_widest_real_kermany_shape_stays_in_scope():
    assert image_sanity(445, 140, XRAY_LIKE).reasons == ()  # 3.2:1, in the original train split


@pytest.mark.parametrize(
    ("value", "kind"), [(0, "empty image"), (128, "constant"), (255, "constant")]
)
def test_uniform_images_are_out_of_scope(value, kind):
    pixels = np.full((64, 64), value, dtype=np.uint8)
    pixels[0, 0] = 255 - value  # one odd pixel does not make an image
    (reason,) = image_sanity(512, 512, pixels).reasons
    assert reason.startswith(kind)


def test_checks_add_up():
    a = ScopeChecks(("a",), ("w",), {"Modality": "CT"})
    b = ScopeChecks(("b",), (), {"ViewPosition": "PA"})
    assert a + b == ScopeChecks(("a", "b"), ("w",), {"Modality": "CT", "ViewPosition": "PA"})
