"""HTTP API: predictions equal Predictor's, DICOM, heat maps, every error code, no tracebacks."""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from conftest import copy_run, write_run
from pneumolab.inference.predictor import Predictor
from pneumolab.scope.ood import METHOD
from pneumolab.serving.app import create_app
from pneumolab.serving.export import export_onnx
from pneumolab.serving.limits import ServerLimits


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny run (the ONNX test exports into it)."""
    return copy_run(tiny_run[0], tmp_path_factory.mktemp("app") / "run")


@pytest.fixture(scope="module")
def client(run_dir) -> TestClient:
    return TestClient(create_app(run_dir))


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A 12-bit MONOCHROME1 DX radiograph with a VOI window (inverted: bone stays bright)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation, ds.WindowCenter, ds.WindowWidth = 0, 2048, 3000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def upload(client: TestClient, name: str, data: bytes, **params: object):
    return client.post("/v1/predict", files={"file": (name, data)}, params=params)


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    assert image.format == "PNG"
    return image


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    detail = str(response.json()["detail"])
    for word in words:
        assert word in detail


def test_fullres_jpeg_matches_the_predictor(client, run_dir, shared_fullres):
    path = sorted((shared_fullres / "NORMAL").iterdir())[0]
    response = upload(client, path.name, path.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor.from_run(run_dir).predict(path)
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["label"] == expected.label and body["threshold"] == expected.threshold
    assert body["model"] == "pneumolab_cnn_small"
    assert body["model_version"].startswith("0.") and "+" in body["model_version"]
    assert body["backend"] == "torch"
    assert "validation split of run" in body["threshold_provenance"]
    assert body["timing_ms"] > 0
    assert "heatmap_png_base64" not in body and "image_png_base64" not in body


def test_dicom_upload(client, run_dir, tmp_path):
    pixels = np.random.default_rng(2).integers(0, 4096, (48, 64))
    path = write_dicom(tmp_path / "chest.dcm", pixels)
    response = upload(client, "anything.bin", path.read_bytes(), preview=True)
    assert response.status_code == 200, response.text
    expected = Predictor.from_run(run_dir).predict(path)
    assert response.json()["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert decode_png(response.json()["image_png_base64"]).size == (64, 48)


def test_out_of_scope_uploads_say_why(client, run_dir):
    ct = Path(get_testdata_file("CT_small.dcm"))
    body = upload(client, "slice.dcm", ct.read_bytes()).json()
    assert body["in_scope"] is False and body["label"] == "OUT_OF_SCOPE"
    assert "DICOM Modality CT: not a radiograph (CR, DX, RG expected)" in body["reasons"]
    expected = Predictor.from_run(run_dir).predict(ct)
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["ood_score"] == pytest.approx(expected.ood_score, rel=1e-5)
    assert body["ood_threshold"] == expected.ood_threshold
    kept = upload(client, "slice.dcm", ct.read_bytes(), keep_label=True).json()
    assert kept["in_scope"] is False and kept["label"] in ("NORMAL", "PNEUMONIA")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((200, 200), dtype=np.uint8)).save(buffer, "PNG")
    black = upload(client, "black.png", buffer.getvalue()).json()
    assert black["in_scope"] is False and black["reasons"][0].startswith("empty image")
    assert client.get("/v1/model").json()["ood"]["method"] == METHOD


def test_a_dicom_whose_preamble_starts_like_a_jpeg_is_read_as_dicom(client, run_dir, tmp_path):
    """A dual-format file (a JPEG header in the 128-byte preamble, then ``DICM``) was sniffed as
    a JPEG over HTTP: stored as .jpeg, its DICOM header's scope checks were skipped, while the
    Python API reads it as DICOM."""
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    data[:3] = b"\xff\xd8\xff"
    path = tmp_path / "dual.dcm"
    path.write_bytes(bytes(data))
    body = upload(client, "dual.jpeg", bytes(data)).json()
    assert "DICOM Modality CT: not a radiograph (CR, DX, RG expected)" in body["reasons"]
    assert body["probability"] == pytest.approx(
        Predictor.from_run(run_dir).predict(path).probability, abs=1e-6
    )


def test_heatmap_is_a_png_over_the_image(client, png_bytes):
    body = upload(client, "x.png", png_bytes, heatmap=True).json()
    image, heat = decode_png(body["image_png_base64"]), decode_png(body["heatmap_png_base64"])
    assert image.size == heat.size == (60, 40)
    assert heat.mode == "RGB"
    assert re.fullmatch(
        r"heat: regions that raised the evidence for (NORMAL|PNEUMONIA)", body["heatmap_caption"]
    )
    # the jet colours cover part of the image (an empty map would give the grey image back)
    plain = np.asarray(image.convert("RGB"), dtype=int)
    coloured = np.abs(np.asarray(heat, dtype=int) - plain).max(axis=-1) > 0
    assert coloured.any()


def test_model_and_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/", "/healthz", "/v1/model"):  # uptime checkers send HEAD
        assert client.head(path).status_code == 200, path
    info = client.get("/v1/model").json()
    assert info["model"] == "pneumolab_cnn_small" and info["image_size"] == 32
    assert info["heatmap_available"] and info["backend"] == "torch"
    assert info["default_operating_point"] in info["operating_points"]
    assert "roc_auc" in info["val_metrics"]
    assert client.get("/docs").status_code == 200
    with warnings.catch_warnings():  # GET and HEAD on one route: a duplicate operation ID
        warnings.simplefilter("error")
        paths = client.get("/openapi.json").json()["paths"]
    assert {path: list(methods) for path, methods in paths.items()} == {
        "/healthz": ["get"],
        "/v1/model": ["get"],
        "/v1/predict": ["post"],
    }


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_upload_over_the_size_limit_is_413(run_dir, png_bytes):
    small = TestClient(create_app(run_dir, limits=ServerLimits(max_upload_bytes=100)))
    assert_error(upload(small, "x.png", png_bytes), 413, "100 bytes")  # checked in the endpoint
    big = png_bytes * 200  # over the body limit: refused from Content-Length, before reading
    assert_error(upload(small, "x.png", big), 413, "too large")


def test_streamed_body_over_the_limit_is_413(run_dir):
    small = TestClient(create_app(run_dir, limits=ServerLimits(max_upload_bytes=100)))

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=x.png\r\n\r\n"
        for _ in range(200):
            yield b"\0" * 1024

    response = small.post(
        "/v1/predict",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "too large")


def test_too_many_pixels_is_422(run_dir, png_bytes):
    response = upload(
        TestClient(create_app(run_dir, limits=ServerLimits(max_pixels=1000))), "big.png", png_bytes
    )
    assert_error(response, 422, "big.png", "60x40 pixels", "over the limit")
    assert "/tmp" not in response.text


def test_text_file_is_415(client):
    assert_error(upload(client, "notes.txt", b"hello, not an X-ray\n" * 20), 415, "notes.txt")


def test_truncated_jpeg_is_422(client, shared_fullres):
    data = sorted((shared_fullres / "PNEUMONIA").iterdir())[0].read_bytes()
    assert_error(upload(client, "cut.jpeg", data[: len(data) // 3]), 422, "cut.jpeg", "corrupt")


def test_truncated_png_is_422(client, png_bytes):
    assert_error(upload(client, "cut.png", png_bytes[:200]), 422, "cut.png")


def test_missing_file_field_is_422(client):
    response = client.post("/v1/predict", files={"other": ("x.png", b"123")})
    assert_error(response, 422, "body.file: Field required", "multipart/form-data")


def test_an_upload_cut_short_is_400_not_a_missing_part(client, png_bytes):
    """A body whose part never reached its closing boundary was answered 422 "send the image
    as a multipart/form-data file part named `file`": the part it had sent."""
    head = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes
    )
    cut = client.post(
        "/v1/predict", content=head, headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert_error(cut, 400, "ends before its closing boundary (--B--)", "cut short")
    whole = client.post(
        "/v1/predict",
        content=head + b"\r\n--B--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    assert whole.status_code == 200


def test_a_query_option_given_twice_is_refused(client, png_bytes):
    """``keep_label=false&keep_label=true``: the last one won, releasing the class label of an
    out-of-scope image."""
    response = client.post(
        "/v1/predict?keep_label=false&keep_label=true", files={"file": ("a.png", png_bytes)}
    )
    assert_error(response, 422, "given more than once: keep_label")


@pytest.mark.parametrize("second", ["file", "image", "note"])
def test_a_form_with_more_than_its_one_file_part_is_422(client, png_bytes, second):
    """Two images were answered 200 with the last one's result; other parts were ignored."""
    files = [("file", ("a.png", png_bytes)), (second, ("b.png", png_bytes))]
    response = client.post("/v1/predict", files=files)
    assert_error(response, 422, "exactly one form part, named `file`", f"file, {second}")


def test_the_schema_states_the_error_responses(client):
    """Generated clients read the errors' shape from the schema: it stated only a 422 of
    FastAPI's list form, while every refusal is one string."""
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    for code in ("400", "408", "409", "413", "415", "422", "500", "503"):
        assert responses[code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }, code
    assert (
        schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    )


def test_a_network_without_a_feature_map_is_served_without_heat_maps(
    run_dir, png_bytes, monkeypatch
):
    """A transformer run (no convolutional feature map for Grad-CAM) failed to start at all."""
    from pneumolab.errors import ModelError
    from pneumolab.serving import app as app_module

    def no_feature_map(*args: object) -> None:
        raise ModelError("VisionTransformer: its only convolution is the input stem")

    monkeypatch.setattr(app_module, "find_target_layer", no_feature_map)
    client = TestClient(create_app(run_dir))
    assert client.get("/v1/model").json()["heatmap_available"] is False
    assert upload(client, "x.png", png_bytes).status_code == 200
    assert_error(
        upload(client, "x.png", png_bytes, heatmap=True), 409, "without a convolutional feature map"
    )


def test_a_file_sent_without_a_file_name_is_422_and_never_echoed_back(client, png_bytes):
    """curl -F file=<x.png sends the bytes as a form value: FastAPI's own 422 echoed them."""
    response = client.post("/v1/predict", data={"file": png_bytes.decode("latin-1")})
    assert_error(response, 422, "body.file:", "with a file name")
    assert len(response.content) < 1000


def test_loader_warnings_name_the_upload_not_a_temporary(client, tmp_path, caplog):
    """The server's log said "/tmp/tmpr8y6m8he.dcm: Unknown encoding 'ISO_IR 999'", twice
    under two names with a preview (decoded twice)."""
    import logging

    import pydicom

    path = write_dicom(tmp_path / "a.dcm", np.full((64, 64), 2000))
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 999", "X"
    ds.save_as(path)
    with caplog.at_level(logging.WARNING):
        response = upload(client, "ward3-bed7.dcm", path.read_bytes(), preview="true")
    assert response.status_code == 200, response.text
    ours = [r for r in caplog.records if r.name.startswith("pneumolab")]
    lines = [r.getMessage() for r in ours if "ISO_IR 999" in r.getMessage()]
    assert lines and all("ward3-bed7.dcm: " in line for line in lines), lines


@pytest.mark.parametrize("name", [".", "/", "x" * 300 + ".png"])
def test_an_upload_name_no_file_can_have_is_still_answered(client, png_bytes, name):
    """ "." and "/" gave ": not an image file" (no name); the temporary under the upload's name
    must not fail on a name the file system refuses."""
    response = upload(client, name, b"not an image")
    expected = Path(name).name or "upload"
    assert_error(response, 415, f"{expected}: not an image file")
    assert upload(client, name, png_bytes).status_code == 200


def test_the_model_info_names_a_run_served_from_inside_it(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    assert TestClient(create_app(Path("."))).get("/v1/model").json()["run"] == run_dir.name


def test_an_unknown_query_parameter_is_refused_not_ignored(client, png_bytes):
    assert_error(upload(client, "x.png", png_bytes, **{"keep-label": "true"}), 422, "keep-label")
    assert upload(client, "x.png", png_bytes, keep_label="true").status_code == 200


def test_unexpected_failure_is_a_plain_500(run_dir, png_bytes, monkeypatch, caplog):
    """Also to a page of an allowed origin: the 500 carried no CORS header, so the browser
    showed a network error instead of it."""
    origin = "https://example.org"
    app = create_app(run_dir, cors_origins=[origin])
    monkeypatch.setattr(Predictor, "predict", lambda self, *args, **kwargs: 1 / 0)
    client = TestClient(app, raise_server_exceptions=False, headers={"Origin": origin})
    response = upload(client, "x.png", png_bytes)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert response.headers["access-control-allow-origin"] == origin
    assert "ZeroDivisionError" in caplog.text  # logged server-side only


def test_cors_is_off_unless_asked(run_dir):
    headers = {"Origin": "https://example.org"}
    plain = TestClient(create_app(run_dir)).get("/healthz", headers=headers)
    assert "access-control-allow-origin" not in plain.headers
    cors = TestClient(create_app(run_dir, cors_origins=["https://example.org"]))
    allowed = cors.get("/healthz", headers=headers)
    assert allowed.headers["access-control-allow-origin"] == "https://example.org"
    preflight = headers | {  # a browser client behind an authenticating gateway
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    assert cors.options("/v1/predict", headers=preflight).status_code == 200


def test_onnx_backend_refuses_heatmaps_with_409(run_dir, png_bytes):
    onnx_file = run_dir / "model.onnx"
    if not onnx_file.is_file():
        export_onnx(run_dir, onnx_file)
    client = TestClient(create_app(run_dir, backend="onnx"))
    torch_body = upload(TestClient(create_app(run_dir)), "x.png", png_bytes).json()
    body = upload(client, "x.png", png_bytes, preview=True).json()
    assert body["probability"] == pytest.approx(torch_body["probability"], abs=1e-5)
    assert "image_png_base64" in body
    assert_error(upload(client, "x.png", png_bytes, heatmap=True), 409, "runs the onnx backend")
    assert client.get("/v1/model").json()["heatmap_available"] is False


def test_a_network_output_that_is_not_a_number_is_out_of_scope_with_a_null_probability(
    run_dir, png_bytes, monkeypatch
):
    """It was a 500 (the response model took no null), and its heat map a black square
    captioned as evidence for NORMAL."""
    from pneumolab.inference.scores import Scores

    loaded = Predictor.from_run.__func__  # type: ignore[attr-defined]

    def not_a_number(cls, *args, **kwargs):
        predictor = loaded(cls, *args, **kwargs)
        scorer = predictor.scorer

        def scored(pixels):
            scores = scorer(pixels)
            return Scores(scores.probability * np.nan, scores.ood)

        predictor.scorer = scored
        return predictor

    monkeypatch.setattr(Predictor, "from_run", classmethod(not_a_number))
    client = TestClient(create_app(run_dir))
    for params in ({}, {"heatmap": True}, {"keep_label": True}):
        response = upload(client, "x.png", png_bytes, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["probability"] is None and body["label"] == "OUT_OF_SCOPE"
        assert "the model's output is not a finite number" in body["reasons"][-1]
        assert "ood_threshold" in body  # the run has an OOD model
        assert ("image_png_base64" in body) == ("heatmap" in params)  # unasked PNGs: absent
    heat = upload(client, "x.png", png_bytes, heatmap=True).json()
    assert heat["heatmap_caption"].startswith("no heat map: the model's output is not a number")


@pytest.mark.parametrize("suffix", ["png", "jpeg"])
def test_a_colour_upload_is_out_of_scope_as_from_predict(client, run_dir, shared_fullres, suffix):
    """The colour check reads the decoded file's colour: the server decodes uploads itself."""
    gray = np.asarray(Image.open(sorted((shared_fullres / "NORMAL").iterdir())[0]).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray, gray // 4, gray], -1)).save(buffer, suffix.upper())
    body = upload(client, f"tinted.{suffix}", buffer.getvalue()).json()
    assert not body["in_scope"] and any(r.startswith("colour image") for r in body["reasons"])


def test_an_undefined_metric_is_null_in_the_model_info(tmp_path, png_bytes):
    """meta.json keeps an undefined metric as NaN, which is not JSON to a browser: /v1/model
    sends it as null, now that its answer is a typed model whose metrics write NaN."""
    import json
    import math

    (tmp_path / "x.png").write_bytes(png_bytes)
    run = write_run(tmp_path / "run", [tmp_path / "x.png"] * 2)
    meta = run.read_meta()
    undefined = meta.val_metrics.model_copy(update={"npv": math.nan})
    run.write_meta(meta.model_copy(update={"val_metrics": undefined}))
    text = TestClient(create_app(run.root)).get("/v1/model").text

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(text, parse_constant=refuse)["val_metrics"]["npv"] is None


def test_the_schema_of_the_model_info_allows_an_undefined_metric_null(client):
    """``GET /v1/model`` sends an undefined metric as null, while its schema declared numbers
    only: a generated client refused the answer of a run with a single-class validation split.
    An operating point's metrics are such figures too."""
    schema = client.get("/openapi.json").json()
    schemas = schema["components"]["schemas"]

    def fields(ref: dict) -> dict:
        return schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"]

    info = schemas["ModelInfo"]["properties"]
    point = fields(info["operating_points"]["additionalProperties"])
    for metrics, name in (
        (fields(info["val_metrics"]), "roc_auc"),
        (fields(info["val_metrics"]), "npv"),
        (fields(point["val_metrics"]["anyOf"][0]), "precision"),
    ):
        assert {"type": "null"} in metrics[name]["anyOf"], name
        assert {"type": "number"} in metrics[name]["anyOf"], name
    assert fields(info["val_metrics"])["n"]["type"] == "integer"  # counts are never null


def test_the_model_info_takes_only_its_listed_fields_from_meta(run_dir):
    """``GET /v1/model`` took every field its answer shares by name with meta.json's: a field
    meta.json gains later (here a ``backend``) changed the answer, or broke the server."""
    from types import SimpleNamespace

    from pneumolab.run_meta import RunMeta
    from pneumolab.serving.app import _model_info

    class LaterMeta(RunMeta):
        backend: str = "onnx"

    predictor = Predictor.from_run(run_dir)
    later = LaterMeta.model_validate(predictor.meta.model_dump())
    info = _model_info(SimpleNamespace(meta=later, ood=predictor.ood), "run", "v", "torch", False)
    assert info == _model_info(predictor, "run", "v", "torch", False) and info.backend == "torch"


def test_a_framed_upload_is_out_of_scope_and_says_to_crop_it(client, shared_fullres):
    """A chest shrunk inside a wide white frame (a padded export): the frame check's reason, first
    of the answer's reasons, says what to do."""
    gray = np.asarray(Image.open(sorted((shared_fullres / "NORMAL").iterdir())[0]).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(
        np.pad(gray, [(side // 3, side // 3) for side in gray.shape], constant_values=255)
    ).save(buffer, "PNG")
    body = upload(client, "padded.png", buffer.getvalue()).json()
    assert not body["in_scope"] and body["label"] == "OUT_OF_SCOPE"
    assert body["reasons"][0].startswith("framed image: a uniform bright frame covers")
    assert "crop it to the chest" in body["reasons"][0]
