"""NumPy intensity normalisation (the ONNX path's preprocessing) against torchvision's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pneumolab.choices import INTENSITIES
from pneumolab.data.intensity import (
    RECIPES,
    clahe_array,
    equalize_array,
    normalize_intensity_array,
)
from pneumolab.data.transforms import normalize_intensity

SHAPES = st.tuples(
    st.integers(1, 3), st.just(1), st.integers(1, 40), st.integers(1, 40)
)  # (N, 1, H, W)


@st.composite
def uint8_images(draw) -> np.ndarray:
    """Full-range noise, a few grey levels (steps of zero and equal-count ties) or one value."""
    shape = draw(SHAPES)
    levels = draw(st.sampled_from([256, 3, 2, 1]))
    values = draw(arrays(np.uint8, shape, elements=st.integers(0, levels - 1)))
    scale = draw(st.integers(1, 255 // max(levels - 1, 1)))
    return (values * scale).astype(np.uint8) + draw(st.integers(0, 255 - (levels - 1) * scale))


@settings(max_examples=300)
@given(uint8_images(), st.sampled_from(["none", "equalize", "clahe"]))
def test_numpy_path_gives_the_torch_path_model_input_bit_for_bit(pixels, method):
    expected = (normalize_intensity(torch.from_numpy(pixels), method).float() / 255.0).numpy()
    got = normalize_intensity_array(pixels, method) / np.float32(255)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_equalize_spreads_a_dark_image_and_keeps_a_flat_one():
    dark = np.repeat(np.arange(64, dtype=np.uint8), 16).reshape(1, 1, 32, 32)
    assert equalize_array(dark).max() > 200
    flat = np.full((2, 1, 5, 5), 77, dtype=np.uint8)
    np.testing.assert_array_equal(equalize_array(flat), flat)


def test_clahe_works_per_image_and_keeps_a_flat_image_flat():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 1, 40, 40), dtype=np.uint8)
    batch[1] //= 8  # a dark image: equalised on its own, whatever its neighbours in the batch
    out = clahe_array(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    for image, expected in zip(batch, out, strict=True):
        np.testing.assert_array_equal(clahe_array(image[None]), expected[None])
    assert out[1].max() > 4 * batch[1].max() // 2  # local contrast stretched
    flat = np.full((1, 1, 32, 32), 77, dtype=np.uint8)
    assert np.unique(clahe_array(flat)).size == 1


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown intensity normalisation 'wavelet'"):
        normalize_intensity_array(np.zeros((1, 1, 4, 4), np.uint8), "wavelet")


def test_the_written_recipes_reproduce_the_methods():
    """An ONNX export's metadata states each method in OpenCV / PIL terms for other runtimes:
    followed as written, they give pneumolab's pixels."""
    import cv2
    from PIL import Image, ImageOps

    plane = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)
    call = RECIPES["clahe"].removesuffix(" on each image")
    assert np.array_equal(eval(call, {"cv2": cv2})(plane), clahe_array(plane))
    assert RECIPES["equalize"].endswith("(PIL ImageOps.equalize)")
    equalized = np.asarray(ImageOps.equalize(Image.fromarray(plane)))
    assert np.array_equal(equalized, equalize_array(plane))
    assert set(RECIPES) == set(INTENSITIES)
