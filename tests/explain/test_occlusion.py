"""Border occlusion: a model reading the chest passes, one reading a corner marker is flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumolab.data.transforms import normalize_intensity
from pneumolab.explain.occlusion import border_occlusion, occlusions

SIZE = 40


@pytest.fixture
def images() -> tuple[torch.Tensor, np.ndarray]:
    """Random 40 px images whose class shows both in the centre and in a top-left marker."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    pixels = rng.integers(40, 120, (40, 1, SIZE, SIZE)).astype(np.uint8)
    pixels[labels == 1, :, 14:26, 14:26] += 60  # the "opacity"
    pixels[labels == 1, :, :3, :3] = 255  # the "marker"
    return torch.from_numpy(pixels), labels


def centre_reader(pixels: torch.Tensor) -> np.ndarray:
    return pixels[..., 14:26, 14:26].float().mean(dim=(1, 2, 3)).numpy()


def corner_reader(pixels: torch.Tensor) -> np.ndarray:
    """A shortcut: the model's output depends on the top-left 10% corner alone."""
    return pixels[..., :4, :4].float().mean(dim=(1, 2, 3)).numpy()


def test_occlusions_split_the_image_into_its_band_and_the_rest(images):
    pixels, _ = images
    black, only = occlusions(pixels, 4)
    assert torch.equal(black + only, pixels)
    assert (black[..., :4, :] == 0).all() and (
        black[..., 4:-4, 4:-4] == pixels[..., 4:-4, 4:-4]
    ).all()
    assert (only[..., 4:-4, 4:-4] == 0).all() and torch.equal(only[..., :4, :], pixels[..., :4, :])


def test_a_model_reading_the_chest_is_not_flagged(images):
    result = border_occlusion(centre_reader, *images, "none")
    assert result.band_px == 4 and result.clean_roc_auc == 1.0
    assert result.border_black_roc_auc == 1.0 and result.border_only_roc_auc == 0.5
    assert not result.flagged


def test_a_model_reading_a_corner_marker_is_flagged(images):
    """Its Grad-CAM at a 5 x 5 map had most heat near the centre, and was not flagged."""
    result = border_occlusion(corner_reader, *images, "none")
    assert result.clean_roc_auc == 1.0 and result.border_only_roc_auc == 1.0
    assert result.border_black_roc_auc == 0.5 and result.flagged


def test_one_class_is_refused(images):
    pixels, labels = images
    with pytest.raises(ValueError, match="both classes"):
        border_occlusion(centre_reader, pixels[:20], labels[:20], "none")


@pytest.mark.parametrize("intensity", ["equalize", "clahe"])
def test_the_band_is_blacked_out_in_the_image_the_model_sees(images, intensity):
    """The band was blacked out before intensity normalisation, which then remapped the whole
    image around the new black: equalisation moved the chest of 20 NORMAL images by 28.9 grey
    levels on average, so the AUC loss mixed the border with the chest's grey levels."""
    pixels, labels = images
    seen: list[torch.Tensor] = []

    def recorder(normalised: torch.Tensor) -> np.ndarray:
        seen.append(normalised)
        return centre_reader(normalised)

    border_occlusion(recorder, pixels, labels, intensity)
    clean, black, only = seen
    assert torch.equal(clean, normalize_intensity(pixels, intensity))
    inside = (..., slice(4, -4), slice(4, -4))
    assert torch.equal(black[inside], clean[inside])  # the chest as the model sees it clean
    assert torch.equal(black + only, clean) and not black[..., :4, :].any()
