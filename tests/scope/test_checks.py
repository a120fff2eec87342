"""Sanity checks before the network: size, aspect ratio, empty, constant, framed and inverted
images."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import xray_like
from pneumolab.data.imageio import load_image, resize_square
from pneumolab.scope.checks import (
    BRIGHT_FRAME,
    MAX_ASPECT,
    MAX_BRIGHT_FRAME_SHARE,
    MAX_FRAME_SHARE,
    MIN_POLARITY,
    MIN_SIDE,
    ScopeChecks,
    frame_bands,
    frame_share,
    image_sanity,
)

RNG = np.random.default_rng(0)
XRAY_LIKE = RNG.integers(20, 180, (64, 64), dtype=np.uint8)
XRAY_LIKE[:, 26:38] += 50  # the spine and mediastinum: brighter than the lungs beside them


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


def test_no_reason_holds_the_separator_a_csv_cell_joins_reasons_by():
    """ "image too small (30x40 px; at least 32 px...)" split into two reasons in a CSV."""
    from pneumolab.inference.results_file import LIST_SEPARATOR

    reasons = (
        image_sanity(30, 40, XRAY_LIKE).reasons + image_sanity(900, 60, 255 - XRAY_LIKE).reasons
    )
    assert len(reasons) == 3 and not any(LIST_SEPARATOR in reason for reason in reasons)


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


def test_a_negative_is_out_of_scope():
    (reason,) = image_sanity(512, 512, 255 - XRAY_LIKE).reasons
    assert (
        reason.startswith("middle darker than its sides: a negative")
        and f"< {MIN_POLARITY:g}" in reason
    )


def test_real_xrays_pass_and_their_negatives_do_not(shared_data):
    """A negative's black collimation band turns white: it is a bright frame too (IM-0133)."""
    paths = sorted((shared_data / "train" / "NORMAL").iterdir())[:10]
    paths += sorted((shared_data / "train" / "PNEUMONIA").iterdir())[:10]
    for path in paths:
        pixels = resize_square(load_image(path, size_hint=160), 160)
        assert image_sanity(224, 224, pixels).reasons == (), path
        reasons = image_sanity(224, 224, 255 - pixels).reasons
        assert "a negative" in reasons[-1] and len(reasons) <= 2, (path, reasons)


def _tinted_copies(tmp_path, shared_data):
    """A shared NORMAL X-ray as magenta (JPEG, PNG, PIL, 0..1 float array), and gray as RGB."""
    from PIL import Image

    source = next(iter(sorted((shared_data / "val" / "NORMAL").glob("*.jpeg"))))
    gray = np.asarray(Image.open(source).convert("L"))
    magenta = np.stack([gray, np.zeros_like(gray), gray], -1)
    for suffix in (".jpeg", ".png"):
        Image.fromarray(magenta).save(tmp_path / f"magenta{suffix}")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_rgb.jpeg")
    return [
        tmp_path / "magenta.jpeg",
        tmp_path / "magenta.png",
        Image.fromarray(magenta),
        magenta.astype(np.float32) / 255,
    ], tmp_path / "gray_rgb.jpeg"


def test_a_colour_image_is_out_of_scope_and_a_gray_one_stored_as_rgb_is_not(tmp_path, shared_data):
    """A magenta copy of a NORMAL X-ray was scored 0.62, PNEUMONIA, in scope (the original:
    0.05); an X-ray has no colour."""
    from pneumolab.inference.inputs import prepare_image

    tinted, gray_rgb = _tinted_copies(tmp_path, shared_data)
    for image in tinted:
        reasons = prepare_image(image, 64)[1].reasons
        assert len(reasons) == 1 and reasons[0].startswith("colour image: 8"), (image, reasons)
    assert prepare_image(gray_rgb, 64)[1].reasons == ()
    flat = np.full((64, 64), 128, np.uint8)  # "constant image" either way
    coloured = [" ".join(image_sanity(64, 64, flat, share).reasons) for share in (0.05, 0.5)]
    assert "colour image" not in coloured[0] and "colour image: 50%" in coloured[1]


def test_the_colour_verdict_does_not_depend_on_how_the_pixels_arrive(tmp_path, shared_data):
    """Noisy pixels (±45 a channel, not colour) were flagged from a float or 16-bit array, sampled pixel by
    pixel, and passed from a file or uint8 array, averaged: every input is now judged alike."""
    from PIL import Image

    from pneumolab.inference.inputs import prepare_image

    source = next(iter(sorted((shared_data / "val" / "NORMAL").glob("*.jpeg"))))
    gray = np.asarray(Image.open(source).convert("L")).astype(np.int16)
    noise = np.random.default_rng(0).integers(-45, 46, (*gray.shape, 3))
    rgb = np.clip(gray[..., None] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "noisy.png")
    inputs = [
        tmp_path / "noisy.png",
        Image.fromarray(rgb),
        rgb,
        rgb / 255.0,
        rgb.astype(np.uint16) * 257,
    ]
    verdicts = {" ".join(prepare_image(image, 64)[1].reasons) for image in inputs}
    assert verdicts == {""}, verdicts


def test_colour_is_measured_where_a_prediction_reads_it_not_in_training(tmp_path):
    """Training decoded 16-bit colour PNGs and RGB DICOMs twice as slowly for a measure it never
    reads; a prediction's decode still records it."""
    import cv2

    from pneumolab.data.colour import colour_share_of
    from pneumolab.data.imageio import load_image

    magenta = np.zeros((64, 64, 3), np.uint16)
    magenta[..., 0] = magenta[..., 2] = np.linspace(0, 65535, 64, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "wide.png"), magenta[..., ::-1])  # BGR
    assert colour_share_of(load_image(tmp_path / "wide.png")) == 0.0  # not measured
    assert colour_share_of(load_image(tmp_path / "wide.png", colour=True)) > 0.5


SIDE = 160


def framed(pixels: np.ndarray, share: float, value: int, rows: bool = True, cols: bool = True):
    """``pixels`` inside bands of ``share`` of the framed side (top and bottom with ``rows``,
    left and right with ``cols``), resized to SIDE px as a prediction resizes a file."""
    pad = [round(share * side / (1 - 2 * share)) for side in pixels.shape]
    widths = ((pad[0],) * 2 if rows else (0, 0), (pad[1],) * 2 if cols else (0, 0))
    return resize_square(Image.fromarray(np.pad(pixels, widths, constant_values=value)), SIDE)


def chest(seed: int = 0, mean: float = 110) -> np.ndarray:
    return xray_like(np.random.default_rng(seed), mean, 30, (224, 224))


def widths(pixels: np.ndarray) -> tuple[float, ...]:
    return tuple(band.share for band in frame_bands(pixels))


@pytest.mark.parametrize("value", [0, 128, 255])
@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.3])
def test_a_uniform_frame_of_any_gray_and_width_is_measured(value, share):
    bands = frame_bands(framed(chest(), share, value))
    assert [band.share for band in bands] == pytest.approx([share] * 4, abs=1.5 / SIDE), bands
    assert {band.level for band in bands} == {value}
    assert frame_share(bands) == pytest.approx(1 - (1 - 2 * share) ** 2, abs=4 / SIDE)
    assert frame_share(bands, bright=True) == (frame_share(bands) if value >= BRIGHT_FRAME else 0.0)
    top_bottom = widths(framed(chest(), share, value, cols=False))
    assert top_bottom[:2] == (0.0, 0.0)
    assert top_bottom[2:] == pytest.approx((share,) * 2, abs=1.5 / SIDE)


@pytest.mark.parametrize("mean", [40, 110, 200])
def test_an_unframed_xray_like_image_has_no_frame(mean):
    for seed in range(5):
        pixels = resize_square(Image.fromarray(chest(seed, mean)), SIDE)
        assert widths(pixels) == (0.0, 0.0, 0.0, 0.0)
        assert image_sanity(224, 224, pixels).reasons == ()


def test_a_marker_burnt_into_the_band_leaves_it_a_band():
    pixels = np.pad(chest(), 40)
    pixels[5:12, 100:104] = 255  # an "R" in the top band: 4 of 304 pixels of a line
    top = widths(resize_square(Image.fromarray(pixels), SIDE))[2]
    assert top == pytest.approx(40 / 304, abs=1.5 / SIDE)


def frame_reason_of(pixels: np.ndarray, width: int = 300, height: int = 300) -> str:
    (reason,) = image_sanity(width, height, pixels).reasons
    return reason


@pytest.mark.parametrize(("value", "share", "covered"), [(0, 0.2, (61, 64)), (255, 0.1, (33, 36))])
def test_a_wide_frame_is_out_of_scope_and_says_to_crop_it(value, share, covered):
    found = re.fullmatch(
        r"framed image: a uniform (bright )?frame covers (\d+)% of the image \(at most "
        r"(\d+)% expected\): crop it to the chest, .*",
        frame_reason_of(framed(chest(), share, value)),
    )
    assert found and covered[0] <= int(found[2]) <= covered[1], found  # less the resize's blend
    limit = MAX_BRIGHT_FRAME_SHARE if value else MAX_FRAME_SHARE
    assert (bool(found[1]), int(found[3])) == (value > 0, round(100 * limit))
    letterbox = frame_reason_of(framed(chest(), 0.2, value, cols=False), 224, 320)
    assert re.search(r"frame covers 3[89]% of the image", letterbox), letterbox  # 40%


def test_a_black_frame_the_augmentation_trains_on_stays_in_scope():
    """The `acquisition` augmentation's widest field of view is a black frame of about 31% of
    the area: a black frame of 10% of each side (36%) was out of scope at the first limit
    (25%) though the default model keeps its operating point there (specificity 0.979)."""
    assert image_sanity(300, 300, framed(chest(), 0.1, 0)).reasons == ()


def test_a_narrow_black_frame_as_real_collimation_has_stays_in_scope():
    """The shared X-rays have black bands of up to 12.5% of a side (20% of the area)."""
    assert image_sanity(250, 250, framed(chest(), 0.05, 0)).reasons == ()
    assert image_sanity(224, 280, framed(chest(), 0.1, 0, cols=False)).reasons == ()


def test_a_narrow_white_frame_is_out_of_scope_and_a_white_line_is_not():
    """White letterbox bars of 10% of the height cut the default model's sensitivity; the
    shared X-rays have bright bands of at most 2 px of 160."""
    reason = frame_reason_of(framed(chest(), 0.05, 255, cols=False), 224, 250)
    assert reason.startswith("framed image: a uniform bright frame covers 9% of the image")
    assert image_sanity(224, 226, framed(chest(), 0.005, 255, cols=False)).reasons == ()


def test_the_audit_groups_framed_images_under_one_kind():
    from pneumolab.evaluation.audit import reason_kind

    assert reason_kind(frame_reason_of(framed(chest(), 0.3, 0))) == "framed image"
    assert reason_kind(frame_reason_of(framed(chest(), 0.3, 255))) == "framed image"


def test_a_framed_negative_is_told_a_negative_and_a_framed_xray_is_not():
    """Polarity is judged inside the frame: the frame moves the chest off its fixed bands."""
    xray = framed(chest(), 0.2, 0)
    assert not any("a negative" in r for r in image_sanity(300, 300, xray).reasons)
    negative = image_sanity(300, 300, framed(255 - chest(), 0.2, 0)).reasons
    assert len(negative) == 2 and "a negative" in negative[1], negative


def test_a_frame_with_almost_nothing_inside_is_told_a_frame_only():
    pixels = np.zeros((160, 160), np.uint8)
    pixels[50:110, 77:84] = 200  # 7 px wide: polarity has no central band to read there
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice"
        (reason,) = image_sanity(160, 160, pixels).reasons
    assert reason.startswith("framed image: a uniform frame covers")
