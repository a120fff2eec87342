"""Tests for pneumolab.data.imageio: any image mode to 8-bit grayscale, EXIF, draft, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumolab.data.formats import jpeg_variant
from pneumolab.data.imageio import (
    array_to_image,
    image_to_grayscale,
    load_image,
    resize_square,
    source_size,
    to_grayscale,
)
from pneumolab.errors import ImageLoadError

EXIF_ORIENTATION = 0x0112


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _stored(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and size of the file as stored (file closed again)."""
    with Image.open(path) as image:
        return image.mode, image.size


def _assert_gray(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert isinstance(image, Image.Image)
    assert image.mode == "L"
    assert image.size == size
    return np.asarray(image)


# --- modes -----------------------------------------------------------------------------------


def test_load_l_png_is_lossless(tmp_path: Path) -> None:
    pixels = _noise(12, 20)
    path = tmp_path / "gray.png"
    Image.fromarray(pixels).save(path)
    out = _assert_gray(load_image(path), (20, 12))
    np.testing.assert_array_equal(out, pixels)


def test_load_l_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "IM-0001-0001.jpeg"
    Image.new("L", (16, 8), 128).save(path, quality=95)
    out = _assert_gray(load_image(path), (16, 8))
    assert abs(int(out.mean()) - 128) <= 2


def test_load_rgb(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    rgb = Image.new("RGB", (10, 6), (255, 0, 0))
    rgb.save(path)
    out = _assert_gray(load_image(path), (10, 6))
    expected = np.asarray(rgb.convert("L"))[0, 0]  # ITU-R 601 luma of pure red: 76
    assert out[0, 0] == expected
    assert abs(int(expected) - 76) <= 1


def test_load_rgb_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "rgb.jpg"
    Image.new("RGB", (10, 6), (90, 90, 90)).save(path, quality=95)
    out = _assert_gray(load_image(path), (10, 6))
    assert abs(int(out.mean()) - 90) <= 2


def test_load_rgba_composites_alpha_on_black(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 200, 200, 255)  # opaque
    rgba[0, 1] = (200, 200, 200, 0)  # fully transparent: black background shows
    rgba[0, 2] = (200, 200, 200, 128)  # half transparent: about half the value
    rgba[0, 3] = (255, 255, 255, 0)
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = _assert_gray(load_image(path), (4, 4))
    assert out[0, 0] == 200
    assert out[0, 1] == 0
    assert out[0, 3] == 0
    assert abs(int(out[0, 2]) - 100) <= 2


def test_load_la_composites_alpha_on_black(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    la = Image.new("LA", (3, 2), (180, 255))
    la.putpixel((1, 0), (180, 0))
    la.save(path)
    assert _stored(path)[0] == "LA"
    out = _assert_gray(load_image(path), (3, 2))
    assert out[0, 0] == 180
    assert out[0, 1] == 0


def test_load_palette(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (5, 3), 0)
    image.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putpixel((1, 1), 1)
    image.putpixel((2, 1), 2)
    image.save(path)
    assert _stored(path)[0] == "P"
    out = _assert_gray(load_image(path), (5, 3))
    assert out[0, 0] == 0
    assert out[1, 1] == 255
    assert abs(int(out[1, 2]) - 29) <= 1  # luma of pure blue


def test_load_palette_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette_t.png"
    image = Image.new("P", (4, 2), 1)
    image.putpalette([255, 255, 255, 128, 128, 128] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.save(path, transparency=0)  # index 0 (white) is transparent
    out = _assert_gray(load_image(path), (4, 2))
    assert out[0, 0] == 0
    assert out[0, 1] == 128


def test_load_bilevel(tmp_path: Path) -> None:
    path = tmp_path / "bilevel.png"
    image = Image.new("1", (8, 4), 0)
    image.putpixel((3, 2), 1)
    image.save(path)
    assert _stored(path)[0] == "1"
    out = _assert_gray(load_image(path), (8, 4))
    assert out[2, 3] == 255
    assert out[0, 0] == 0
    assert set(np.unique(out)) == {0, 255}


def test_load_16_bit_png_rescaled(tmp_path: Path) -> None:
    path = tmp_path / "sixteen.png"
    pixels = np.array([[1000, 2000, 3000], [4000, 20000, 40000]], dtype=np.uint16)
    Image.fromarray(pixels).save(path)
    assert _stored(path)[0].startswith("I")
    out = _assert_gray(load_image(path), (3, 2))
    assert out.dtype == np.uint8
    assert out[0, 0] == 0  # min -> 0
    assert out[1, 2] == 255  # max -> 255
    expected = np.round((pixels - 1000.0) * 255.0 / 39000.0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_load_16_bit_constant_image_is_black(tmp_path: Path) -> None:
    path = tmp_path / "flat16.png"
    Image.fromarray(np.full((3, 3), 5000, dtype=np.uint16)).save(path)
    out = _assert_gray(load_image(path), (3, 3))
    assert not out.any()


GREY_OF_MODE = [
    ("L", 77, 77),
    ("RGB", (200, 100, 50), 124),  # 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    ("RGBA", (200, 100, 50, 255), 124),
    ("LA", (90, 255), 90),
    ("P", (255, 0, 0), 76),  # red: 0.299 * 255
    ("1", 1, 255),
    ("CMYK", (0, 255, 255, 0), 76),  # red
    # high bit depths are stretched over their own range: a flat image is black
    ("I", 1000, 0),
    ("F", 2.5, 0),
    ("I;16", 1000, 0),
]
"""(mode, fill colour, the grey it becomes)"""


@pytest.mark.parametrize(("mode", "colour", "grey"), GREY_OF_MODE, ids=[c[0] for c in GREY_OF_MODE])
def test_to_grayscale_any_mode(mode: str, colour, grey: int) -> None:
    if mode == "P":
        image = Image.new("RGB", (6, 5), colour).convert("P")  # red is in the web palette
    else:
        image = Image.new(mode, (6, 5), colour)
    assert image.mode == mode
    out = to_grayscale(image)
    assert out.mode == "L"
    assert out.size == (6, 5)
    assert (np.asarray(out) == grey).all()


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16N"])
def test_16_bit_modes_of_either_byte_order_are_rescaled(tmp_path: Path, mode: str) -> None:
    """A big-endian 16-bit TIFF opens as I;16B, whose extrema Pillow does not read:
    ``predict(Image.open(...))`` failed with Pillow's 'image has wrong mode'."""
    dtype = ">u2" if mode == "I;16B" else "<u2"
    values = np.array([[100, 200], [1100, 4095]], dtype=dtype)
    image = Image.frombuffer(mode, (2, 2), values.tobytes(), "raw", mode, 0, 1)
    assert np.asarray(image).astype(int).tolist() == values.astype(int).tolist()
    out = np.asarray(to_grayscale(image))
    assert out.tolist() == [[0, round(100 * 255 / 3995)], [round(1000 * 255 / 3995), 255]]


def test_to_grayscale_float_rescaled() -> None:
    image = Image.fromarray(np.array([[-1.0, 0.0], [0.5, 3.0]], dtype=np.float32))
    assert image.mode == "F"
    out = np.asarray(to_grayscale(image))
    assert out[0, 0] == 0
    assert out[1, 1] == 255


# --- EXIF orientation and size_hint -----------------------------------------------------------


def _jpeg_with_orientation(path: Path, size: tuple[int, int], orientation: int) -> Path:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image = Image.new("L", size, 0)
    # A bright block in the top-left corner to follow the rotation.
    image.paste(255, (0, 0, size[0] // 4, size[1] // 4))
    image.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = _jpeg_with_orientation(tmp_path / "rotated.jpeg", (40, 24), 6)
    assert _stored(path)[1] == (40, 24)
    out = _assert_gray(load_image(path), (24, 40))  # width and height swapped
    # Orientation 6: stored image must be rotated 90° clockwise; top-left goes to top-right.
    assert out[:5, -5:].mean() > 200
    assert out[:5, :5].mean() < 50


def test_exif_orientation_1_unchanged(tmp_path: Path) -> None:
    path = _jpeg_with_orientation(tmp_path / "upright.jpeg", (40, 24), 1)
    out = _assert_gray(load_image(path), (40, 24))
    assert out[:5, :5].mean() > 200


def test_size_hint_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "large.jpeg"
    Image.new("L", (2000, 1600), 100).save(path, quality=75)
    full = load_image(path)
    assert full.size == (2000, 1600)
    for hint in (224, 256, 500):
        image = load_image(path, size_hint=hint)
        assert image.mode == "L"
        width, height = image.size
        assert width >= hint and height >= hint, (hint, image.size)
        assert width < 2000 and height < 1600, (hint, image.size)
        assert width * 1600 == height * 2000  # aspect ratio kept (power-of-two DCT scale)
    assert load_image(path, size_hint=224).size == (500, 400)


def test_size_hint_larger_than_image_keeps_full_size(tmp_path: Path) -> None:
    path = tmp_path / "small.jpeg"
    Image.new("L", (300, 200), 100).save(path)
    assert load_image(path, size_hint=512).size == (300, 200)


def test_size_hint_ignored_for_png(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("L", (640, 480), 100).save(path)
    assert load_image(path, size_hint=64).size == (640, 480)


def test_size_hint_with_exif_rotation(tmp_path: Path) -> None:
    path = _jpeg_with_orientation(tmp_path / "large_rotated.jpeg", (2000, 1600), 6)
    width, height = load_image(path, size_hint=224).size
    assert height > width
    assert min(width, height) >= 224
    assert max(width, height) < 2000


def test_a_reduced_decode_keeps_the_files_own_size(tmp_path: Path) -> None:
    path = tmp_path / "large.jpeg"
    Image.new("L", (2000, 1600), 100).save(path)
    image = load_image(path, size_hint=224)
    assert image.size == (500, 400) and source_size(image) == (2000, 1600)
    assert source_size(image.resize((8, 8))) == (8, 8)  # changed since: its own size
    turned = _jpeg_with_orientation(tmp_path / "turned.jpeg", (2000, 1600), 6)
    assert source_size(load_image(turned, size_hint=224)) == (1600, 2000)


BROKEN_EXIF = (  # an orientation of 6, then an ASCII entry whose offset runs past the block
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x01\t\x00\x02\x00\x00\x00)\x00\x00\x00&"
    b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00" + b"x" * 40 + b"\x00\x00"
)


def test_an_unparsable_exif_block_leaves_the_image_as_stored(tmp_path: Path, caplog) -> None:
    path = tmp_path / "odd.jpeg"
    Image.new("L", (50, 40), 0).save(path, exif=BROKEN_EXIF)
    assert _assert_gray(load_image(path), (50, 40)).max() < 10
    assert f"{path}: EXIF orientation unreadable" in caplog.text


def test_size_hint_on_rgb_jpeg_gives_gray(tmp_path: Path) -> None:
    path = tmp_path / "large_rgb.jpeg"
    Image.new("RGB", (1200, 1000), (60, 60, 60)).save(path)
    image = load_image(path, size_hint=128)
    assert image.mode == "L"
    assert min(image.size) >= 128
    assert abs(int(np.asarray(image).mean()) - 60) <= 2


# --- resize_square ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "target"), [((40, 24), 16), ((10, 30), 64), ((32, 32), 32)])
def test_resize_square(size: tuple[int, int], target: int) -> None:
    image = Image.fromarray(_noise(size[1], size[0]))
    out = resize_square(image, target)
    assert isinstance(out, np.ndarray)
    assert out.shape == (target, target)
    assert out.dtype == np.uint8


def test_resize_square_same_size_is_identity() -> None:
    pixels = _noise(8, 8)
    np.testing.assert_array_equal(resize_square(Image.fromarray(pixels), 8), pixels)


def test_resize_square_keeps_constant_value() -> None:
    out = resize_square(Image.new("L", (50, 30), 77), 16)
    assert (out == 77).all()


# --- array_to_image --------------------------------------------------------------------------


def test_array_to_image_uint8_taken_as_is() -> None:
    pixels = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    image = array_to_image(pixels)
    assert image.mode == "L"
    assert image.size == (2, 2)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_array_to_image_uint16_rescaled() -> None:
    pixels = np.array([[100, 200], [300, 60000]], dtype=np.uint16)
    out = np.asarray(array_to_image(pixels))
    assert out.dtype == np.uint8
    assert out[0, 0] == 0
    assert out[1, 1] == 255
    assert out[0, 1] == round(100 * 255 / 59900)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_to_image_float_rescaled(dtype: type) -> None:
    pixels = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=dtype)
    out = np.asarray(array_to_image(pixels))
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])


def test_array_to_image_constant_float_outside_0_1_is_black() -> None:
    out = np.asarray(array_to_image(np.full((3, 4), 1.7)))
    assert out.shape == (3, 4)
    assert not out.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_float_array_in_0_1_is_the_8_bit_image_it_came_from(dtype: type) -> None:
    """``pixels / 255`` (or torchvision's ToTensor) gives back the 8-bit pixels, not a
    stretch of their own range: a low-contrast X-ray stays low-contrast, as its file reads."""
    pixels = np.random.default_rng(0).integers(40, 180, (16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(array_to_image(pixels.astype(dtype) / 255), pixels)
    assert np.asarray(array_to_image(np.full((3, 4), 0.7))).tolist() == [[178] * 4] * 3
    normalised = (pixels - 100.0) / 50  # values below 0: min..max, as before
    assert np.asarray(array_to_image(normalised)).max() == 255


def test_array_to_image_three_channels() -> None:
    pixels = np.zeros((5, 7, 3), dtype=np.float32)
    pixels[..., 0] = 0.3
    pixels[1, 2] = (0.9, 0.9, 0.9)
    image = array_to_image(pixels)
    assert image.mode == "L"
    assert image.size == (7, 5)
    out = np.asarray(image)  # luma of values in 0..1, mapped from 0..1
    assert out[1, 2] == 229  # 0.9 x 255 = 229.5, less the float error of the weights
    assert out[0, 0] == round(0.3 * 0.299 * 255)


@pytest.mark.parametrize("alpha", [0, 128, 255])
def test_an_rgba_array_is_composited_on_black_as_the_pil_image_is(alpha: int) -> None:
    """The array dropped its alpha while the PIL image was composited on black: one transparent
    image scored 0.05 as an array and 0.999 (and out of scope) as a PIL image."""
    gray = np.random.default_rng(0).integers(0, 256, (6, 8), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, alpha)])
    from_pil = np.asarray(image_to_grayscale(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(np.asarray(array_to_image(rgba)), from_pil)
    as_float = np.asarray(array_to_image(rgba / 255.0))  # alpha 0..1: the same compositing
    assert np.abs(as_float.astype(int) - from_pil).max() <= 1


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.float64])
def test_opaque_rgba_arrays_of_8_bit_pixels_in_any_dtype_are_the_image(dtype: type) -> None:
    """Alpha was scaled by the dtype's range: 255 in an int64 array became 3e-17, and the
    X-ray came out black (0.999, out of scope)."""
    gray = np.random.default_rng(0).integers(0, 256, (6, 8), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)]).astype(dtype)
    alone = np.asarray(array_to_image(gray.astype(dtype)))  # the same pixels without alpha
    np.testing.assert_array_equal(np.asarray(array_to_image(rgba)), alone)


def test_array_to_image_four_channels_opaque_alpha() -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.float64)
    pixels[0, 0, :3] = 1.0
    pixels[..., 3] = 5.0
    out = np.asarray(array_to_image(pixels))
    np.testing.assert_array_equal(out, [[255, 0], [0, 0]])


def test_array_to_image_single_channel() -> None:
    pixels = np.array([[[10], [20]], [[30], [40]]], dtype=np.uint8)
    out = np.asarray(array_to_image(pixels))
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, pixels[..., 0])

    wide = np.array([[[0], [1000]]], dtype=np.uint16)
    np.testing.assert_array_equal(np.asarray(array_to_image(wide)), [[0, 255]])


def test_array_to_image_uint8_rgb_taken_as_is() -> None:
    pixels = np.full((4, 4, 3), 120, dtype=np.uint8)
    pixels[0, 0] = 150
    out = np.asarray(array_to_image(pixels))
    assert out[0, 0] == 150
    assert out[1, 1] == 120


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (2, 3, 2), (1, 2, 3, 3)])
def test_array_to_image_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageLoadError, match="shape"):
        array_to_image(np.zeros(shape, dtype=np.uint8))


# --- errors ----------------------------------------------------------------------------------


def _real_jpeg_bytes() -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(_noise(64, 64, seed=1)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_text_file_renamed_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "not_really_an_image.jpeg"
    path.write_text("this is a text file, not an X-ray\n")
    with pytest.raises(ImageLoadError, match=r"not_really_an_image\.jpeg") as info:
        load_image(path)
    assert "not an image" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")  # it said "not an image file of an accepted format"
    with pytest.raises(ImageLoadError, match=r"empty\.jpeg: empty file \(0 bytes\)"):
        load_image(path)


@pytest.mark.parametrize("size_hint", [None, 16])
def test_truncated_jpeg(tmp_path: Path, size_hint: int | None) -> None:
    data = _real_jpeg_bytes()
    path = tmp_path / "person7_bacteria_1.jpeg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"person7_bacteria_1\.jpeg") as info:
        load_image(path, size_hint=size_hint)
    assert "truncated" in str(info.value)


@pytest.mark.parametrize("size_hint", [None, 16, 4])
@pytest.mark.parametrize("kept", [0.5, 0.95])
def test_a_jpeg_cut_short_but_closed_with_its_end_marker_is_refused(tmp_path, size_hint, kept):
    """Decoded without a word, its lower part the decoder's flat grey: a copy interrupted and
    then finished, scored as a whole X-ray (at any decoding scale; cut inside its last row of
    blocks too, where the bottom row is grey only at its right end)."""
    data = _real_jpeg_bytes()
    path = tmp_path / "person7_bacteria_1.jpeg"
    path.write_bytes(data[: int(len(data) * kept)] + b"\xff\xd9")
    with pytest.raises(
        ImageLoadError,
        match=r"person7_bacteria_1\.jpeg: truncated or corrupt JPEG \(Corrupt JPEG data: premature",
    ):
        load_image(path, size_hint=size_hint)


def test_a_progressive_jpeg_cut_short_is_refused(tmp_path):
    """Its earlier scans leave a coarse image, not the grey: it passed every check."""
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(_noise(64, 64, seed=4)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    path = tmp_path / "progressive.jpeg"
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with pytest.raises(ImageLoadError, match=r"progressive\.jpeg: truncated or corrupt JPEG"):
        load_image(path, size_hint=16)
    path.write_bytes(data)
    assert load_image(path, size_hint=16).mode == "L"


def test_a_grey_padded_jpeg_with_a_harmless_decoder_warning_loads(tmp_path):
    """libjpeg warns of extraneous bytes or an unknown JFIF revision in whole files: only its
    "premature end" says the data ended early."""
    pixels = _noise(64, 64, seed=3)
    pixels[40:] = 128
    path = tmp_path / "padded.jpeg"
    Image.fromarray(pixels).save(path, quality=90)
    data = path.read_bytes()
    assert data[6:11] == b"JFIF\x00"
    path.write_bytes(data[:11] + b"\x02\x01" + data[13:])  # "unknown JFIF revision number 2.01"
    assert load_image(path).mode == "L"


@pytest.mark.parametrize("bottom", [0, 128])
@pytest.mark.parametrize("progressive", [False, True])
def test_a_whole_jpeg_with_a_flat_bottom_band_loads(tmp_path, bottom, progressive):
    """Black padding under an X-ray is common, and so is grey: a whole file decodes its flat
    blocks to exactly the grey a cut one is filled with (the pixels alone refused it)."""
    pixels = _noise(64, 64, seed=2)
    pixels[40:] = bottom
    path = tmp_path / "whole.jpeg"
    Image.fromarray(pixels).save(path, quality=90, progressive=progressive)
    for hint in (None, 16):
        assert load_image(path, size_hint=hint).mode == "L"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpeg"
    with pytest.raises(ImageLoadError, match=r"gone\.jpeg") as info:
        load_image(path)
    assert "not found" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.jpeg"
    path.mkdir()
    with pytest.raises(ImageLoadError, match=r"folder\.jpeg"):
        load_image(path)


def test_image_over_max_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (20, 10), 0).save(path)
    with pytest.raises(ImageLoadError, match=r"big\.png") as info:
        load_image(path, max_pixels=100)
    message = str(info.value)
    assert "20x10" in message
    assert "decompression bomb" in message


def test_image_over_the_decoders_own_limit_names_it(tmp_path: Path) -> None:
    """Over Pillow's own limit the refusal quoted Pillow's text, naming no file and no limit a
    user could find, then Pillow's limit (178,956,970 pixels) instead of the caller's; the
    header alone is enough to refuse it (nothing is decoded)."""
    from corpus import png_header_only

    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(14_000, 14_000))
    with pytest.raises(
        ImageLoadError,
        match=r"huge\.png: 196,000,000 pixels is over the limit of 50,000,000 pixels.*raise the",
    ):
        load_image(path)
    with pytest.raises(ImageLoadError, match="over the limit of 150,000,000 pixels"):
        load_image(path, max_pixels=150_000_000)


def test_a_limit_raised_above_the_decoders_own_is_the_one_that_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow refused an image over twice its MAX_IMAGE_PIXELS while opening it, whatever
    ``max_pixels`` a user had raised on purpose (here Pillow's limit is made small)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = tmp_path / "large.png"
    Image.new("L", (60, 60), 128).save(path)  # 3,600 pixels: over Pillow's 2,000
    assert load_image(path, max_pixels=5_000).size == (60, 60)
    assert Image.MAX_IMAGE_PIXELS == 2_501  # raised, never lowered
    with pytest.raises(ImageLoadError, match="over the limit of 3,000 pixels"):
        load_image(path, max_pixels=3_000)
    assert Image.MAX_IMAGE_PIXELS == 2_501


def test_image_at_max_pixels_accepted(tmp_path: Path) -> None:
    path = tmp_path / "edge.png"
    Image.new("L", (10, 10), 0).save(path)
    assert load_image(path, max_pixels=100).size == (10, 10)


def test_error_accepts_str_path(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nope\.png"):
        load_image(str(tmp_path / "nope.png"))


def test_a_pil_image_is_oriented_as_its_file_is(tmp_path: Path) -> None:
    from pneumolab.inference.inputs import prepare_image

    path = _jpeg_with_orientation(tmp_path / "rotated.jpeg", (40, 24), 6)
    by_path, _ = prepare_image(path, 16)
    by_pil, _ = prepare_image(Image.open(path), 16)
    assert np.array_equal(by_pil, by_path) and by_path[0, :3, -3:].mean() > 200


def test_colour_becomes_the_same_gray_at_8_and_16_bits() -> None:
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    eight = np.asarray(array_to_image(colours))
    sixteen = np.asarray(array_to_image(colours.astype(np.uint16) * 257))
    assert eight.tolist() == [[0, 255, 76, 150]] and np.array_equal(sixteen, eight)


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_colour_png_keeps_its_low_bits(tmp_path: Path, channels: int) -> None:
    """Pillow cut each 16-bit sample to its high byte: a 12-bit X-ray saved as 16-bit RGB came
    out nearly black (gray levels 0..15), not rescaled like a 16-bit gray PNG."""
    import cv2

    ramp = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 4095 // (40 * 60 - 1)
    colour = np.repeat(ramp[..., None], channels, axis=-1)
    if channels == 4:
        colour[..., 3] = 65535  # opaque
    cv2.imwrite(str(tmp_path / "xray.png"), colour)
    cv2.imwrite(str(tmp_path / "gray.png"), ramp)
    image = np.asarray(load_image(tmp_path / "xray.png")).astype(int)
    assert image.min() == 0 and image.max() == 255
    np.testing.assert_allclose(image, np.asarray(load_image(tmp_path / "gray.png")), atol=1)


def test_a_uint64_array_near_its_top_is_rescaled() -> None:
    """Values of 2**63 and more with a small range: subtracting the minimum overflowed an int64
    (OverflowError, not an ImageLoadError)."""
    top = 2**63
    image = array_to_image(np.array([[top, top + 1], [top + 2, top]], dtype=np.uint64))
    assert np.asarray(image).tolist() == [[0, 128], [255, 0]]


def test_a_full_range_int16_array_is_rescaled_without_wrapping() -> None:
    """Subtracting the minimum in int16 wrapped round (a first fix of the uint64 case did)."""
    image = array_to_image(np.array([[-32768, 0], [16000, 32000]], dtype=np.int16))
    assert np.asarray(image).tolist() == [[0, 129], [192, 255]]


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (Image.fromarray(np.full((4, 4), np.nan, np.float32)), "mode F and size 4x4: holds NaN"),
        (Image.fromarray(np.full((4, 4), np.inf, np.float32)), "holds NaN or infinite values"),
        (Image.new("L", (0, 0)), "mode L and size 0x0: empty"),
        (Image.new("LAB", (4, 4)), "mode LAB and size 4x4: no grayscale conversion"),
        (Image.new("La", (4, 4)), "mode La and size 4x4: no grayscale conversion"),
    ],
)
def test_a_pil_image_is_checked_as_arrays_are(image: Image.Image, problem: str) -> None:
    """A NaN float image scored as a black one (p = 0.999), an empty one was scored, and
    modes without a grayscale raised Pillow's ValueError: each is now an ImageLoadError."""
    with pytest.raises(ImageLoadError, match=re.escape(problem)):
        image_to_grayscale(image)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((4, 4), complex), "array of dtype complex128: not pixel values"),
        (np.zeros((4, 4), object), "array of dtype object: not pixel values"),
        (np.zeros((3, 8, 8)), "expected (H, W), (1, H, W) or (H, W, 1|3|4)"),
    ],
)
def test_arrays_that_hold_no_pixel_values_are_refused(array: np.ndarray, problem: str) -> None:
    with pytest.raises(ImageLoadError, match=re.escape(problem)):
        array_to_image(array)


def test_an_animated_png_is_refused_not_scored_by_its_first_frame(tmp_path: Path) -> None:
    """Only the first frame of an animated PNG was read, without a word; a multi-frame DICOM
    is refused, and so is this now. A plain PNG still loads."""
    from corpus import animated_png

    path = tmp_path / "cine.png"
    path.write_bytes(animated_png())
    with pytest.raises(ImageLoadError, match=r"cine\.png: animated PNG \(2 frames\)"):
        load_image(path)
    Image.open(path).save(tmp_path / "still.png")  # its first frame alone
    assert load_image(tmp_path / "still.png").size == (40, 30)


def test_a_decoders_message_of_several_lines_is_told_in_one() -> None:
    """pydicom's "Unable to decode as exceptions were raised by all available plugins:\\n
    pillow: ..." reached the CLI and the HTTP API's one-line ``detail`` with its line breaks."""
    from pneumolab.data.imageio import reading

    with pytest.raises(ImageLoadError) as caught, reading(Path("x.dcm"), "DICOM", 100):
        raise RuntimeError("Unable to decode as exceptions were raised by:\n  pillow: broken")
    assert str(caught.value) == (
        "x.dcm: corrupt or undecodable DICOM (RuntimeError: Unable to decode as exceptions were "
        "raised by: pillow: broken)"
    )


def _jpeg_frame(marker: int, precision: int) -> bytes:
    """A JPEG start, an APP0 segment, then a one-component frame header of ``marker``."""
    app0 = b"\xff\xe0" + (16).to_bytes(2, "big") + b"JFIF\0" + bytes(9)
    frame = bytes([0xFF, marker]) + (11).to_bytes(2, "big") + bytes([precision])
    frame += (64).to_bytes(2, "big") * 2 + bytes([1, 1, 0x11, 0])
    return b"\xff\xd8" + app0 + frame + b"\xff\xd9"


@pytest.mark.parametrize(
    ("marker", "precision", "kind"),
    [
        (0xC1, 12, "12-bit JPEG"),
        (0xC3, 16, "lossless JPEG"),
        (0xCB, 8, "lossless JPEG"),
        (0xF7, 8, "JPEG-LS"),
    ],
)
def test_a_jpeg_pillow_cannot_decode_is_named_by_its_kind(tmp_path, marker, precision, kind):
    """A 12-bit or lossless JPEG (CR/DX exports) was "not an image file of an accepted
    format" or "corrupt": it is a valid file of a kind Pillow does not decode."""
    path = tmp_path / "x.jpeg"
    path.write_bytes(_jpeg_frame(marker, precision))
    with pytest.raises(ImageLoadError, match=rf"x\.jpeg: {kind}, which Pillow does not"):
        load_image(path)


def test_jpeg_variant_reads_the_frame_header_past_fill_bytes():
    assert jpeg_variant(_jpeg_frame(0xC0, 8)) is None
    assert jpeg_variant(_jpeg_frame(0xC2, 8)) is None
    head = _jpeg_frame(0xC1, 12)
    assert jpeg_variant(head[:2] + b"\xff" + head[2:]) == "12-bit JPEG"
    assert jpeg_variant(head[:12]) is None  # cut before the frame header


def test_a_loop_of_symbolic_links_is_named_as_such(tmp_path):
    """It was "corrupt or undecodable image (OSError: [Errno 40] Too many levels of symbolic
    links...)"."""
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(ImageLoadError, match=r"a\.jpg: a loop of symbolic links"):
        load_image(tmp_path / "a.jpg")


def test_a_jpeg_decoded_at_reduced_scale_keeps_its_gray_and_records_its_colour(tmp_path):
    """A colour JPEG is decoded as YCbCr to measure its colour: its gray must stay the plane
    libjpeg gives when asked for gray (the model's pixels did not change)."""
    from pneumolab.data.colour import colour_share_of

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    tinted = np.stack([gray, gray // 2, gray], -1)
    for name, rgb in (("gray", np.stack([gray] * 3, -1)), ("tinted", tinted)):
        Image.fromarray(rgb).save(tmp_path / f"{name}.jpeg", quality=90)
        with Image.open(tmp_path / f"{name}.jpeg") as opened:
            opened.draft("L", (100, 100))
            expected = np.asarray(opened.convert("L"))
        loaded = load_image(tmp_path / f"{name}.jpeg", size_hint=100, colour=True)
        assert np.array_equal(np.asarray(loaded), expected)
        share = colour_share_of(loaded)
        assert share == 0.0 if name == "gray" else share > 0.3, (name, share)
