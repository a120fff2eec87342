"""DICOM input: modality LUT, VOI window, MONOCHROME1, bit depths, detection and clear refusals."""

from __future__ import annotations

import logging
import re
import signal
import zlib
from pathlib import Path

import numpy as np
import pydicom.examples
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import get_decoder
from pydicom.uid import (
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from safetensors.torch import save_file

from conftest import fixed_threshold_meta
from pneumolab.data import dicom
from pneumolab.data.dicom import load_dicom
from pneumolab.data.imageio import load_image
from pneumolab.errors import ImageLoadError
from pneumolab.inference.inputs import expand_paths
from pneumolab.inference.predictor import Predictor
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir
from pneumolab.scope.dicom_header import dicom_file_checks


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
    **attributes,
) -> Path:
    """A DX DICOM file (Part 10, with preamble) holding ``pixels``, or no pixel data at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        DigitalXRayImageStorageForPresentation if pixels is not None else BasicTextSRStorage
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP_12BIT = np.arange(64, dtype=np.uint16).reshape(8, 8) * 65  # 0..4095


def write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_zeros(path: Path) -> Path:
    path.write_bytes(bytes(200))
    return path


def test_8bit_monochrome2_keeps_its_pixels(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = load_image(write_dicom(tmp_path / "a.dcm", pixels))
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), pixels)


def test_12bit_in_16_is_scaled_from_its_range_without_a_window(tmp_path):
    image = np.asarray(load_dicom(write_dicom(tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12)))
    assert image.dtype == np.uint8
    assert image[0, 0] == 0 and image[-1, -1] == 255
    assert np.all(np.diff(image.ravel().astype(int)) >= 0)


def test_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, photometric="MONOCHROME1", bits_stored=12)
    image = np.asarray(load_dicom(path))
    assert image.flat[RAMP_12BIT.argmax()] == 0  # the largest stored value is displayed dark
    assert image.flat[RAMP_12BIT.argmin()] == 255


@pytest.mark.parametrize(
    ("photometric", "shape", "largest_shown"),
    [
        ("MONOCHROME2", "INVERSE", 0),
        ("MONOCHROME1", "INVERSE", 0),
        ("MONOCHROME2", "IDENTITY", 255),
    ],
)
def test_a_presentation_lut_shape_inverse_is_shown_inverted_once(
    tmp_path, photometric, shape, largest_shown
):
    """MONOCHROME2 with Presentation LUT Shape INVERSE was shown as stored, and the scope gate
    called it a negative; MONOCHROME1 states INVERSE too (DX): one inversion, not two."""
    path = write_dicom(
        tmp_path / "a.dcm", RAMP_12BIT, photometric, bits_stored=12, PresentationLUTShape=shape
    )
    assert np.asarray(load_dicom(path)).flat[RAMP_12BIT.argmax()] == largest_shown


def test_pixel_padding_is_left_out_of_the_range_and_shown_black(tmp_path):
    """Padding (65535 in the bands outside the exposed field) set the top of the min..max
    stretch: the image came out nearly anti-correlated with what a viewer shows."""
    pixels = RAMP_12BIT.copy()
    pixels[:, :2] = 65535  # the side band
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=16, PixelPaddingValue=65535)
    image = np.asarray(load_dicom(path)).astype(int)
    inside = RAMP_12BIT[:, 2:]
    assert (image[:, :2] == 0).all()
    assert image[:, 2:].min() == 0 and image[:, 2:].max() == 255
    assert np.corrcoef(image[:, 2:].ravel(), inside.ravel())[0, 1] > 0.99


def test_window_clips_outside_and_maps_the_centre_to_mid_grey(tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, WindowCenter=2048, WindowWidth=1024
    )
    image = np.asarray(load_dicom(path)).ravel()
    raw = RAMP_12BIT.ravel()
    assert np.all(image[raw <= 1536] == 0)
    assert np.all(image[raw >= 2560] == 255)
    assert abs(int(image[np.abs(raw.astype(int) - 2048).argmin()]) - 128) <= 8


@pytest.mark.parametrize(("width", "first"), [(0, 0), ([0, 400], 0), (-5, -5)])
def test_a_window_of_width_below_one_is_ignored_with_a_warning(tmp_path, caplog, width, first):
    """pydicom refuses it (the standard asks for >= 1) and the image was refused as corrupt;
    a viewer shows it over its own range, and so does pneumolab now, saying so."""
    path = write_dicom(
        tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, WindowCenter=2048, WindowWidth=width
    )
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        image = np.asarray(load_dicom(path)).astype(int)
    assert image.min() == 0 and image.max() == 255
    assert np.corrcoef(image.ravel(), RAMP_12BIT.ravel())[0, 1] > 0.99
    assert f"{path}: DICOM Window Width {first} is no window" in caplog.text
    # and in every result's warnings (predict, serve, audit): the image is not shown as its
    # header asks
    (warning,) = dicom_file_checks(path).warnings
    assert warning.startswith(f"DICOM Window Width {first} is no window")


def test_a_window_centre_of_text_is_ignored_with_a_warning(tmp_path, caplog):
    """A broken modality wrote text as Window Center: the file was refused as "corrupt or
    undecodable DICOM (TypeError: unsupported operand type(s) for -=: 'str' and 'float')";
    it is shown over its own range, as a width below 1 is, saying so."""
    from corpus import dicom_with_text_window

    path = tmp_path / "text-window.dcm"
    path.write_bytes(dicom_with_text_window())
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        load_dicom(path)
    assert f"{path}: DICOM Window Center 'abcd' is not a number" in caplog.text
    (warning,) = dicom_file_checks(path).warnings
    assert warning.startswith("DICOM Window Center 'abcd' is not a number: shown over")


def test_rescale_is_applied_before_the_window(tmp_path):
    # stored r → 2r - 1000; the window [-100, 100] (rescaled units) is r in [450, 550]
    raw = np.array([[0, 449], [500, 551], [1000, 2000]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "a.dcm",
        raw,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=200,
    )
    image = np.asarray(load_dicom(path))
    assert image[0, 0] == image[0, 1] == 0
    assert image[1, 1] == image[2, 0] == image[2, 1] == 255
    assert abs(int(image[1, 0]) - 128) <= 2


def test_voi_lut_sequence_is_applied_over_its_output_range(tmp_path):
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new("LUTData", "US", [min(255, 2 * i) for i in range(256)])  # doubles, saturates
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT // 16, bits_stored=8, VOILUTSequence=[lut])
    raw = (RAMP_12BIT // 16).astype(int)
    assert np.array_equal(np.asarray(load_dicom(path)), np.minimum(255, 2 * raw))


def test_dicom_without_suffix_is_detected_by_its_preamble(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = write_dicom(tmp_path / "IM0001", pixels)
    assert np.array_equal(np.asarray(load_image(path)), pixels)
    (tmp_path / "notes").write_text("not an image")
    assert expand_paths(tmp_path) == [path]  # a PACS export's names: listed by their header


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_a_jpeg_or_png_named_dcm_is_read_as_what_it_is(tmp_path, image_format):
    """Archives name every export ``.dcm``; the HTTP API reads uploads by content, so files
    must be too (the CLI said "not a DICOM file" and training left the image out)."""
    from PIL import Image

    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "IM-0001-0001.dcm"
    Image.fromarray(pixels).save(path, format=image_format, quality=100)
    decoded = np.asarray(load_image(path)).astype(int)
    assert decoded.shape == (16, 16) and np.abs(decoded - pixels).max() <= 2


@pytest.mark.parametrize(
    ("descriptor", "data", "stated", "held"),
    [
        ([0, 0, 16], list(range(256)), "65,536", "256"),
        ([512, 0, 16], list(range(256)), "512", "256"),
        ([256, 0, 16], None, "256", "0"),
        ([256, 0, 16], bytes(200), "256", "100"),
    ],
)
def test_a_voi_lut_shorter_than_its_descriptor_is_refused_by_name(
    tmp_path, descriptor, data, stated, held
):
    """Descriptor 0 (65,536 entries) over a short table failed as "corrupt or undecodable
    DICOM (IndexError: index 256 is out of bounds...)"; a table without data, a TypeError."""
    lut = Dataset()
    lut.LUTDescriptor = descriptor
    if data is not None:
        lut.add_new("LUTData", "OW" if isinstance(data, bytes) else "US", data)
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, VOILUTSequence=[lut])
    message = rf"a\.dcm: corrupt VOI LUT: its LUTDescriptor states {stated} entries, its LUTData holds {held}$"
    with pytest.raises(ImageLoadError, match=message):
        load_dicom(path)


def test_a_malformed_voi_lut_is_refused_by_name(tmp_path):
    lut = Dataset()
    lut.LUTDescriptor = [256, 0]  # two values where the standard has three
    lut.add_new("LUTData", "US", list(range(256)))
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT // 16, bits_stored=8, VOILUTSequence=[lut])
    with pytest.raises(ImageLoadError, match=r"a\.dcm: VOI LUT without a three-value"):
        load_image(path)


def test_monochrome_with_three_samples_becomes_one_gray_plane(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8) + np.array([30, 60, 90], dtype=np.uint8)
    path = write_dicom(
        tmp_path / "a.dcm", pixels, SamplesPerPixel=3, PlanarConfiguration=0, Rows=8, Columns=8
    )
    image = load_image(path)
    assert image.mode == "L" and image.size == (8, 8)
    # stretched over 30..90 to planes 0, 128, 255, then luma-weighted: 0.587*128 + 0.114*255
    assert (np.asarray(image) == 104).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_dicom(p, None), "without pixel data"),
        (
            lambda p: write_dicom(p, np.zeros((2, 4, 4), dtype=np.uint8), NumberOfFrames=2),
            r"multi-frame DICOM \(2 frames\)",
        ),
        (
            lambda p: write_dicom(p, np.zeros((4, 4), dtype=np.uint8), PixelData=b""),
            "pixel data element is empty",
        ),
        (write_zeros, "not a DICOM file"),
        (write_empty, r"report\.dcm: empty file \(0 bytes\)$"),  # was "not a DICOM file"
        (  # was "truncated or corrupt DICOM: an image object ... without pixel data"
            lambda p: write_dicom(p, None, FloatPixelData=np.zeros(16, "<f4").tobytes()),
            r"floating-point pixels \(FloatPixelData",
        ),
    ],
    ids=["no-pixel-data", "multi-frame", "empty-pixel-data", "not-dicom", "empty", "float-pixels"],
)
def test_unusable_dicom_is_refused_by_name(tmp_path, make, message):
    path = make(tmp_path / "report.dcm")
    with pytest.raises(ImageLoadError, match=message) as error:
        load_image(path)
    assert "report.dcm" in str(error.value)


def test_compressed_syntax_without_a_decoder_says_what_to_install(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed")
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), dtype=np.uint16), bits_stored=12)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match=r"JPEG Lossless.*install one of.*pylibjpeg"):
        load_image(path)


def test_a_12_bit_jpeg_that_pillow_cannot_decode_says_what_to_install(tmp_path):
    """It was called 'corrupt or undecodable' with Pillow's message inside."""
    from pydicom.data import get_testdata_file

    if set(get_decoder(JPEGExtended12Bit).available_plugins) - {"pillow"}:
        pytest.skip("a 12-bit JPEG decoder is installed")
    with pytest.raises(ImageLoadError, match=r"12-bit JPEG Extended.*install one of.*pylibjpeg"):
        load_image(get_testdata_file("JPEG-lossy.dcm"))


@pytest.mark.parametrize("name", ["ct", "mr", "overlay", "rgb_color", "jpeg2k"])
def test_pydicom_example_images_load_as_grayscale(name):
    path = pydicom.examples.get_path(name)
    ds = dcmread(path, stop_before_pixels=True)
    if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        pytest.skip(f"no decoder installed for {ds.file_meta.TransferSyntaxUID.name}")
    image = load_image(path)
    assert image.mode == "L" and image.size == (ds.Columns, ds.Rows)
    assert np.asarray(image).std() > 10


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("palette_color", "PALETTE COLOR"),
        ("rt_dose", "multi-frame"),
        ("ybr_color", "multi-frame"),
        ("dicomdir", "without pixel data (Media Storage Directory Storage)"),
    ],
)
def test_pydicom_examples_that_are_not_one_radiograph_are_refused(name, message):
    with pytest.raises(ImageLoadError, match=re.escape(message)):
        load_image(pydicom.examples.get_path(name))


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_a_compressed_dicom_cut_short_is_called_truncated(tmp_path):
    """pydicom keeps the header of an encapsulated file cut inside its pixel data: it was
    called a DICOM without pixel data, not an image."""
    path = tmp_path / "cut.dcm"
    path.write_bytes(Path(pydicom.examples.get_path("jpeg2k")).read_bytes()[:-10])
    with pytest.raises(ImageLoadError, match=r"cut\.dcm: truncated or corrupt DICOM"):
        load_image(path)


def test_an_image_object_cut_off_in_its_header_is_called_truncated(tmp_path):
    """A copy stopped inside a long private element: pydicom read the header alone, and the
    radiograph was "DICOM without pixel data (Digital X-Ray Image Storage...), not an image"."""
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.add_new((0x0009, 0x1011), "OB", bytes(50_000))
    ds.save_as(path)
    path.write_bytes(path.read_bytes()[:30_000])
    with pytest.raises(ImageLoadError, match=r"a\.dcm: truncated or corrupt DICOM: an image"):
        load_image(path)


def test_pixel_limit_applies_to_dicom(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((16, 16), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(path, max_pixels=100)


def test_predictor_predicts_a_dicom_end_to_end(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    state = create_classifier("pneumolab_cnn_small", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, run.weights)
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", 32, 0.5))
    (tmp_path / "scans").mkdir()
    path = write_dicom(tmp_path / "scans" / "chest.dcm", RAMP_12BIT, bits_stored=12)
    predictor = Predictor.from_run(run.root)
    result = predictor.predict(path)
    assert result.source == str(path) and 0.0 <= result.probability <= 1.0
    same = predictor.predict(np.asarray(load_dicom(path)))
    assert result.probability == pytest.approx(same.probability, abs=1e-6)
    assert expand_paths([path.parent]) == [path]


def test_pixel_data_longer_than_its_header_says_is_refused(tmp_path):
    path = write_dicom(tmp_path / "lies.dcm", np.zeros((64, 64), np.uint8))
    ds = dcmread(path)
    ds.PixelData = bytes(64 * 64 * 50)  # 50 frames' worth behind a one-frame header
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match=r"lies\.dcm: 204,800 bytes of pixel data.*need 4,096"):
        load_image(path)


def test_pixel_data_shorter_than_its_header_says_is_called_truncated(tmp_path):
    """pydicom's own message came through: "The number of bytes of pixel data is less than
    expected (100 vs 4096 bytes) - the dataset may be corrupted, have an invalid group 0028
    element value, or the transfer syntax may be incorrect"."""
    path = write_dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint8))
    with_pixel_data(path, bytes(100))
    with pytest.raises(ImageLoadError) as error:
        load_image(path)
    assert str(error.value) == (
        f"{path}: truncated or corrupt DICOM: 100 bytes of pixel data where its 64x64 pixels "
        "need 4,096 (the file was cut short, or its header does not describe the data)"
    )


@pytest.mark.parametrize(
    ("syntax", "frame"),
    [(JPEGBaseline8Bit, b"\xff\xd8 not a JPEG " * 8), (RLELossless, bytes(8) + b"junk" * 8)],
    ids=["jpeg", "rle"],
)
def test_compressed_pixel_data_no_decoder_can_read_is_named_in_plain_words(tmp_path, syntax, frame):
    """pydicom's RuntimeError came through: "Unable to decode as exceptions were raised by all
    available plugins: pillow: cannot identify image file <_io.BytesIO object at 0x7f...>"."""
    path = write_dicom(tmp_path / "junk.dcm", np.zeros((8, 8), np.uint8))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds.save_as(path, enforce_file_format=True)
    if not get_decoder(syntax).is_available:
        pytest.skip(f"no decoder installed for {syntax.name}")
    with pytest.raises(ImageLoadError) as error:
        load_image(path)
    message = str(error.value)
    assert message.startswith(
        f"{path}: corrupt DICOM: its {syntax.name} pixel data cannot be decoded ("
    )
    assert "Unable to decode" not in message and " at 0x" not in message


def with_pixel_data(path: Path, data: bytes, **header: int) -> Path:
    """``path`` rewritten with ``data`` as its pixel data (and ``header`` values)."""
    ds = dcmread(path)
    ds.PixelData = data
    for name, value in header.items():
        setattr(ds, name, value)
    ds.save_as(path)
    return path


def test_trailing_zero_padding_short_of_a_row_is_stripped_and_named(tmp_path, caplog):
    caplog.set_level("WARNING")
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # rows of 128 bytes
    padded = write_dicom(tmp_path / "padded.dcm", pixels)
    with_pixel_data(padded, pixels.tobytes() + bytes(100))  # a vendor's trailing pad
    plain = write_dicom(tmp_path / "plain.dcm", pixels)
    assert np.array_equal(np.asarray(load_image(padded)), np.asarray(load_image(plain)))
    assert any(
        "padded.dcm" in r.getMessage() and "padding" in r.getMessage() for r in caplog.records
    )
    tiny = write_dicom(tmp_path / "tiny.dcm", np.full((1, 1), 7, np.uint8))
    assert np.asarray(load_image(with_pixel_data(tiny, b"\x07\x00"))).shape == (1, 1)


def test_decoding_threads_name_each_file_its_own_warnings(tmp_path, caplog):
    """Decoding threads each caught warnings in one process-wide ``catch_warnings``: with 4
    threads, 1 to 11 of 40 padding warnings were lost, and some named another file."""
    from concurrent.futures import ThreadPoolExecutor

    caplog.set_level("WARNING")
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # rows of 128 bytes
    padding = {tmp_path / f"w{i:02d}.dcm": 2 * (i + 1) for i in range(24)}
    for path, extra in padding.items():
        with_pixel_data(write_dicom(path, pixels), pixels.tobytes() + bytes(extra))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(load_image, padding))
    named = [r.getMessage() for r in caplog.records if r.name == dicom.__name__]
    assert sorted(named) == sorted(
        f"{path}: The pixel data is {pixels.nbytes + extra} bytes long, which indicates it "
        f"contains {extra} bytes of excess padding to be removed"
        for path, extra in padding.items()
    )


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        (bytes(200), {}),  # zeros, but more than a row: not padding
        (b"\x01" * 100, {}),  # short of a row, but data
        (b"", {"Columns": 60}),  # the header understates the columns: sheared if read
    ],
)
def test_trailing_bytes_that_are_not_padding_are_refused(tmp_path, extra, header):
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "lies.dcm", pixels)
    with_pixel_data(path, pixels.tobytes() + extra, **header)
    with pytest.raises(
        ImageLoadError, match=r"lies\.dcm: .* bytes of pixel data.*does not describe"
    ):
        load_image(path)


def test_a_deflated_dicom_with_bytes_after_its_stream_is_read_not_looped_on(tmp_path):
    """A black 3001 x 3001 image deflates to 9 kB plus the pad byte that makes its length
    even; the size check streamed the pad byte back to zlib forever (the stream's last call
    returned more than 1 MB, leaving it as unconsumed input): a few kB upload froze a server's
    decoding thread at full CPU. The check now stops at the stream's end."""
    path = write_dicom(
        tmp_path / "black.dcm",
        np.zeros((3001, 3001), np.uint8),
        syntax=DeflatedExplicitVRLittleEndian,
    )
    start = dicom.PART10_META_START + read_file_meta_info(path).FileMetaInformationGroupLength
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(path.read_bytes()[start:])
    if not inflater.unused_data:  # pydicom pads to an even length: the UID's length decides
        with path.open("ab") as f:
            f.write(b"\0")
    assert inflater.eof  # the case: a byte after the stream's end

    def hung(*args):
        raise AssertionError("the size check did not return within 20 s")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        dicom.check_inflated_size(path)
    finally:
        signal.alarm(0)
    assert np.asarray(load_image(path, max_pixels=10_000_000)).max() == 0


def test_the_header_checks_read_a_deflated_file_within_the_pixel_limit_given(tmp_path):
    """The header checks bounded a deflated file by the default limit, whatever the caller's:
    with --max-megapixels raised, a CT's file was read as an image but its 'Modality CT'
    reason was dropped."""
    pixels = np.zeros((16, 16), np.uint8)
    path = write_dicom(tmp_path / "ct.dcm", pixels, syntax=DeflatedExplicitVRLittleEndian)
    ds = dcmread(path)
    ds.Modality, ds.PixelData = "CT", bytes(20 << 20)  # 20 MB: over 16 MB + 6 x 10,000 px
    ds.Rows = ds.Columns = 2048
    ds.save_as(path)
    assert "Modality CT" in dicom_file_checks(path).reasons[0]
    assert dicom_file_checks(path, max_pixels=10_000).reasons == ()
    assert "Modality CT" in dicom_file_checks(path, max_pixels=20_000_000).reasons[0]


def test_a_deflated_dicom_is_read_and_one_that_inflates_too_far_is_refused_unread(
    tmp_path, monkeypatch
):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    small = write_dicom(tmp_path / "small.dcm", pixels, syntax=DeflatedExplicitVRLittleEndian)
    assert np.array_equal(np.asarray(load_image(small)), pixels)
    bomb = write_dicom(tmp_path / "bomb.dcm", pixels, syntax=DeflatedExplicitVRLittleEndian)
    ds = dcmread(bomb)
    ds.PixelData = bytes(20 << 20)  # 20 MB of zeros: a few kB once deflated
    ds.save_as(bomb)
    assert bomb.stat().st_size < 100_000

    def never(*args, **kwargs):
        raise AssertionError("pydicom inflated the file")

    monkeypatch.setattr(dicom.pydicom, "dcmread", never)  # refused while streaming, before it
    with pytest.raises(ImageLoadError, match=r"bomb\.dcm: deflated DICOM that inflates to more"):
        load_image(bomb, max_pixels=10_000)
    bounded = dicom.check_inflated_size
    monkeypatch.setattr(dicom, "check_inflated_size", lambda path, _: bounded(path, 10_000))
    assert dicom_file_checks(bomb).reasons == ()  # the header check does not inflate it either


def test_pydicoms_warnings_name_the_file_once(tmp_path, caplog, recwarn):
    """'Unknown encoding ISO_IR 999' came as a Python warning naming no file, once per read."""
    from pneumolab.scope.dicom_header import dicom_file_checks

    path = write_dicom(
        tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, SpecificCharacterSet="ISO_IR 999"
    )
    ds = dcmread(path)
    ds.PatientName = "M\u00fcller"
    ds.save_as(path, enforce_file_format=True)
    recwarn.clear()
    with caplog.at_level("WARNING", logger="pneumolab"):
        dicom_file_checks(path)
        load_image(path)
    named = [r.getMessage() for r in caplog.records if r.name.startswith("pneumolab")]
    assert named == [f"{path}: Unknown encoding 'ISO_IR 999' - using default encoding instead"]
    assert not [w for w in recwarn if "ISO_IR 999" in str(w.message)]


def jpeg_dicom(path: Path, jpeg_size: tuple[int, int], header_size: tuple[int, int]) -> Path:
    """A JPEG-baseline DICOM whose frame is a gray ``jpeg_size`` (rows, columns) JPEG and whose
    header states ``header_size``."""
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    frame = io.BytesIO()
    Image.fromarray(np.full(jpeg_size, 120, dtype=np.uint8)).save(frame, "JPEG")
    write_dicom(path, np.zeros(header_size, dtype=np.uint8))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_raised_pixel_limit_holds_for_a_jpeg_compressed_dicom(tmp_path, monkeypatch):
    """Pillow decodes the JPEG frame of such a file: its own limit refused it where max_pixels
    allowed it, unless a PNG or JPEG file had been loaded first in the process."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses over 2,000 pixels
    path = jpeg_dicom(tmp_path / "a.dcm", jpeg_size=(60, 60), header_size=(60, 60))
    assert load_image(path, max_pixels=5_000).size == (60, 60)


def test_a_compressed_frame_larger_than_its_header_says_is_refused_before_decoding(tmp_path):
    """Only the header's Rows and Columns were checked: a 1.7 MB file claiming 256 x 256 held
    a 10,500 x 10,500 JPEG that the decoder inflated (330 MB) before failing; --max-megapixels
    did not hold. The frame's own header is now read first."""
    path = jpeg_dicom(tmp_path / "liar.dcm", jpeg_size=(200, 300), header_size=(64, 64))
    with pytest.raises(ImageLoadError, match=r"liar\.dcm: 300x200 pixels is over the limit"):
        load_image(path, max_pixels=10_000)
    with pytest.raises(
        ImageLoadError, match=r"compressed image is 300x200 pixels, its header says 64x64"
    ):
        load_image(path)


def test_a_dicom_whose_only_image_is_its_icon_is_not_called_truncated(tmp_path):
    """The pixel data tag found in the icon made it 'truncated or corrupt'."""
    from pydicom.sequence import Sequence

    path = write_dicom(tmp_path / "a.dcm", None)
    ds = dcmread(path)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 4, 4, 1
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.PixelData = bytes(16)
    ds.IconImageSequence = Sequence([icon])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match="only image is its icon"):
        load_image(path)


@pytest.mark.parametrize("stated_bits", [16, 8])
def test_a_voi_lut_whose_descriptor_misstates_its_bit_depth_is_shown_over_its_entries(
    tmp_path, stated_bits
):
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, stated_bits]  # 12-bit entries: stated as 16, or as 8
    lut.add_new("LUTData", "US", list(range(4096)))
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, VOILUTSequence=[lut])
    image = np.asarray(load_dicom(path)).astype(int)
    assert image.min() == 0 and image.max() == 255
    assert np.abs(image - np.round(RAMP_12BIT.astype(int) * 255 / 4095)).max() <= 1


def test_a_sigmoid_window_below_one_is_a_window(tmp_path):
    """The standard asks LINEAR for a width of at least 1, SIGMOID (and LINEAR_EXACT) for more
    than 0: a SIGMOID width of 0.5 was dropped, with a warning in every result."""
    path = write_dicom(
        tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12, WindowCenter=2048, WindowWidth=0.5,
        VOILUTFunction="SIGMOID",
    )  # fmt: skip
    assert dicom_file_checks(path).warnings == ()
    assert np.asarray(load_dicom(path)).max() > 0


@pytest.mark.parametrize("implicit", [True, False])
def test_a_legacy_dicom_without_file_meta_is_read_in_the_encoding_it_was_written_in(
    tmp_path, implicit
):
    """Old archives hold DICOM written before Part 10: no preamble, no file meta, so no
    transfer syntax. It was refused with Python's AttributeError text ('FileMetaDataset'
    object has no attribute 'TransferSyntaxUID'); pydicom reads it in the encoding found."""
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).astype(np.uint16)
    part10 = write_dicom(tmp_path / "part10.dcm", pixels, bits_stored=12)
    ds = dcmread(part10)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    legacy = tmp_path / "legacy.dcm"
    ds.save_as(legacy, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert legacy.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(np.asarray(load_image(legacy)), np.asarray(load_image(part10)))
