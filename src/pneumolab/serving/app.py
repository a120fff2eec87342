"""HTTP API and web page for one trained run (FastAPI): ``create_app(run_dir)``, ``pneumolab serve``."""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import pneumolab
from pneumolab.choices import BackendName, Intensity, Task
from pneumolab.data.formats import ACCEPTED, sniff
from pneumolab.data.imageio import load_image
from pneumolab.errors import ImageLoadError, ModelError
from pneumolab.explain.gradcam import explain_image, find_target_layer, overlay_png
from pneumolab.inference.prediction import SUBTYPE_FIELDS
from pneumolab.inference.predictor import Predictor
from pneumolab.results import BinaryMetrics, StoredOperatingPoint, null_for_nan
from pneumolab.scope.checks import ScopeChecks
from pneumolab.scope.dicom_header import dicom_file_checks
from pneumolab.serving.limits import (
    BodyLimit,
    ClosedMultipart,
    DecodeSlots,
    ServerLimits,
    too_large_text,
)

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024
"""Bytes a request body may exceed ``max_upload_bytes`` by (multipart boundaries and headers)."""
PREVIEW_SIZE = 512
"""Longest side of the image / heat map previews returned with ``heatmap`` or ``preview``."""
MODEL_INFO_FROM_META = (
    "model", "pneumolab_version", "image_size", "intensity", "class_names", "task",
    "subtype_names", "threshold", "threshold_rule", "default_operating_point",
    "operating_points", "val_metrics", "best_epoch",
)  # fmt: skip
"""The fields of :class:`ModelInfo` taken as the run's meta.json holds them (the others are
this server's: a field meta.json gains later changes nothing ``GET /v1/model`` says)."""
PREDICT_OPTIONS = ("heatmap", "preview", "keep_label")
"""The query parameters of ``POST /v1/predict``: any other is refused (422), not ignored."""
UPLOAD_HINT = (
    "send the image as a multipart/form-data file part named `file`, with a file name "
    "(curl -F file=@image.jpeg)"
)


class PredictResponse(BaseModel):
    """One upload's result; the PNGs (base64) only when ``heatmap`` or ``preview`` was asked.

    ``in_scope`` false: a scope check flagged the input (``reasons`` say which); its ``label``
    is then ``OUT_OF_SCOPE`` unless ``keep_label`` was asked. ``ood_score`` / ``ood_threshold``
    are absent for a run without an OOD model; ``ood_score`` is null where the run has one but
    the image's score is not a number. ``probability`` is null where the network's output is
    not a number (then ``OUT_OF_SCOPE``, with that reason).

    A three-class run adds ``subtype`` (``BACTERIAL`` or ``VIRAL`` for an in-scope image called
    ``PNEUMONIA``, else null) and ``p_normal``, ``p_bacterial``, ``p_viral`` (softmax of its
    three logits); all four null where the backend gives no class logits (onnx, onnx-int8,
    openvino), absent for a binary run."""

    probability: float | None
    label: str
    threshold: float
    in_scope: bool
    reasons: list[str]
    warnings: list[str]
    ood_score: float | None = None
    ood_threshold: float | None = None
    threshold_provenance: str
    model: str
    model_version: str
    backend: str
    timing_ms: float
    image_png_base64: str | None = None
    heatmap_png_base64: str | None = None
    heatmap_caption: str | None = None
    """With ``heatmap``: what the map shows, the evidence for the class the image was called
    (``heat: regions that raised the evidence for NORMAL``), or that it is empty."""
    subtype: str | None = None
    p_normal: float | None = None
    p_bacterial: float | None = None
    p_viral: float | None = None


class OodInfo(BaseModel):
    """The run's out-of-distribution check: its method, threshold and the share of the
    validation X-rays it flags."""

    method: str
    threshold: float
    val_flagged_fraction: float


class ModelInfo(BaseModel):
    """What ``GET /v1/model`` says of the served run: its meta.json's model, input, decision
    rule and validation figures (an undefined metric, NaN, is null), and what this server's
    ``POST /v1/predict`` answers: heat maps, a three-class run's subtype fields."""

    run: str
    model: str
    model_version: str
    pneumolab_version: str
    backend: str
    image_size: int
    intensity: Intensity | None
    class_names: list[str]
    task: Task = Field(
        description="binary: NORMAL / PNEUMONIA; three_class: its predictions also carry "
        "subtype, p_normal, p_bacterial and p_viral"
    )
    subtype_names: list[str] | None = Field(
        description="a three-class run's classes, those of p_normal, p_bacterial, p_viral in "
        "order; null for a binary run, whose predictions have none of the four fields"
    )
    subtypes_available: bool = Field(
        description="whether predictions fill subtype and the class probabilities: a "
        "three-class run on the torch backend (an exported backend leaves them null: it "
        "carries the pneumonia logit only); false for a binary run"
    )
    threshold: float
    threshold_rule: str
    threshold_provenance: str
    default_operating_point: str
    operating_points: dict[str, StoredOperatingPoint]
    val_metrics: BinaryMetrics
    best_epoch: int | None
    heatmap_available: bool
    ood: OodInfo | None


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(
    data: bytes, filename: str, max_pixels: int, size_hint: int
) -> tuple[Image.Image, ScopeChecks]:
    """The upload as a grayscale image, read by pneumolab's loaders, and a DICOM header's scope
    checks; 415 / 422 when it cannot be read."""
    found = sniff(data[:256])  # what the upload is, whatever its name says
    if not data:  # as predict says of an empty file
        raise HTTPException(415, f"{filename}: empty file (0 bytes)")
    if found is None:
        raise HTTPException(
            415, f"{filename}: not an image file of an accepted format ({ACCEPTED})"
        )
    with tempfile.TemporaryDirectory(prefix="pneumolab-upload-") as folder:
        # under the upload's own name: the loaders' log lines (a DICOM's odd character set)
        # named a random temporary, which told the server's log reader nothing
        path = Path(folder) / _usable_name(filename, found.suffixes[0])
        path.write_bytes(data)
        try:
            image = load_image(path, size_hint=size_hint, max_pixels=max_pixels, colour=True)
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc).replace(str(path), filename)) from None
        is_dicom = found.pillow_name is None
        return image, dicom_file_checks(path, max_pixels) if is_dicom else ScopeChecks()


def _usable_name(filename: str, suffix: str) -> str:
    """``filename`` where the file system takes it as a file's name, else ``upload<suffix>``."""
    try:
        encoded = os.fsencode(filename)
    except UnicodeEncodeError:  # a name the file system's encoding cannot hold
        return f"upload{suffix}"
    usable = filename not in ("", ".", "..") and b"\0" not in encoded and len(encoded) <= 200
    return filename if usable else f"upload{suffix}"


class ErrorResponse(BaseModel):
    """Every refusal: what was wrong, in one line."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "a malformed multipart body",
        408: "the upload did not arrive in time",
        409: "a heat map this server cannot draw",
        413: "an upload over the size limit",
        415: "not an image of an accepted format",
        422: "an image that cannot be read, or a malformed request",
        503: "too many uploads being decoded at once",
        500: "an unexpected failure (the traceback is logged on the server)",
    }.items()
}
"""The error responses of ``POST /v1/predict``, as the schema states them."""


async def one_file_part(request: Request) -> None:
    """422 where the form holds other parts beside ``file`` (a second image was ignored; a form
    without ``file`` is left to the request's validation, which says how to send it)."""
    parts = [name for name, _ in (await request.form()).multi_items()]
    if "file" in parts and parts != ["file"]:
        raise HTTPException(
            422, f"send exactly one form part, named `file`; got: {', '.join(parts)}"
        )


def _heatmap_layer(predictor: Predictor, backend: str) -> tuple[torch.nn.Module | None, str]:
    """The layer Grad-CAM explains, or None and what the server runs instead (an ensemble, an
    exported backend, a network without a convolutional feature map: served without heat
    maps)."""
    if predictor.meta.is_ensemble:
        return None, "an ensemble"
    if predictor.model is None:
        return None, f"the {backend} backend"
    try:
        return find_target_layer(predictor.model, predictor.image_size), ""
    except ModelError as exc:
        log.warning("serving without heat maps: %s", exc)
        return None, "a network without a convolutional feature map (larger than 1x1)"


def _model_info(
    predictor: Predictor, run_name: str, version: str, backend: str, heatmaps: bool
) -> ModelInfo:
    """What ``GET /v1/model`` answers: :data:`MODEL_INFO_FROM_META` from the run's meta.json,
    the rest from this server (its backend, heat maps, OOD model)."""
    meta, ood = predictor.meta, predictor.ood
    return ModelInfo(
        **{name: getattr(meta, name) for name in MODEL_INFO_FROM_META},
        threshold_provenance=meta.default_point.provenance or meta.threshold_rule,
        run=run_name,
        model_version=version,
        backend=backend,
        subtypes_available=bool(meta.subtype_names) and backend == "torch",  # no TTA served
        heatmap_available=heatmaps,
        ood=None
        if ood is None
        else OodInfo(
            method=ood.method,
            threshold=ood.threshold,
            val_flagged_fraction=ood.val_flagged_fraction,
        ),
    )


class PredictionService:
    """What ``POST /v1/predict`` does with one valid upload: the run, loaded once, scores it
    (one inference at a time: Grad-CAM hooks the shared model), decoding bounded by ``limits``."""

    def __init__(self, run_dir: Path, backend: BackendName, limits: ServerLimits) -> None:
        self.predictor = Predictor.from_run(run_dir, backend=backend)
        self.backend, self.limits = backend, limits
        self.layer, self.runs_instead = _heatmap_layer(self.predictor, backend)
        self.info = _model_info(
            self.predictor,
            run_dir.resolve().name,  # `serve .` named no run
            self.predictor.model_version,
            backend,
            self.layer is not None,
        )
        self.decode_slots = DecodeSlots(limits.max_decodes, limits.decode_wait_s)
        self._lock = threading.Lock()

    def answer(
        self, data: bytes, name: str, heatmap: bool, preview: bool, keep_label: bool
    ) -> PredictResponse:
        """The response for the upload ``data`` (file name ``name``); HTTPException for a heat
        map this server cannot draw (409) or an image it cannot read (415, 422, 503)."""
        start = time.perf_counter()
        if heatmap and self.layer is None:
            raise HTTPException(
                409,
                "heat maps need one convolutional PyTorch network; this server runs "
                f"{self.runs_instead}",
            )
        max_pixels, size = self.limits.max_pixels, self.predictor.image_size
        with self.decode_slots.held():
            image, header = _decode(data, name, max_pixels, size)
        explained = None
        with self._lock:
            if heatmap and self.layer is not None:  # else refused above (409)
                explained = explain_image(self.predictor, self.layer, image, header, not keep_label)
                result = explained.prediction
            else:
                result = self.predictor.predict(image, header, scope_verdict=not keep_label)
        pngs: dict[str, str] = {}
        if heatmap or preview:
            with self.decode_slots.held():  # sharper than the model's
                shown = _decode(data, name, max_pixels, PREVIEW_SIZE)[0]
                shown.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
            pngs["image_png_base64"] = _png_base64(shown)
            if explained is not None:
                heat_png = overlay_png(shown, explained.heat)
                pngs["heatmap_png_base64"] = base64.b64encode(heat_png).decode()
                pngs["heatmap_caption"] = explained.caption
        fields = result.to_dict()
        if fields["ood_threshold"] is None:  # a run without an OOD model: both absent
            del fields["ood_score"], fields["ood_threshold"]
        if not self.predictor.meta.subtype_names:  # a binary run: no subtype fields
            fields = {k: v for k, v in fields.items() if k not in SUBTYPE_FIELDS}
        return PredictResponse(
            **fields,
            threshold_provenance=self.info.threshold_provenance,
            model=self.info.model,
            model_version=self.predictor.model_version,
            backend=self.backend,
            timing_ms=round(1000 * (time.perf_counter() - start), 2),
            **pngs,
        )


class InternalErrors:
    """ASGI middleware: anything unexpected becomes a plain ``{"detail": "internal server
    error"}`` 500 (traceback logged on the server). Added inside the CORS middleware, so that a
    browser page allowed to call the API reads this answer too (FastAPI's handler of
    ``Exception`` answers outside every middleware: a 500 had no CORS header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            if started:  # the answer is under way: nothing else can be sent
                raise
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)


def _refusals_in_one_line(app: FastAPI) -> None:
    """What is wrong with a request, as ``{"detail": "<one line>"}``."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """What is wrong with the request, in one line (never the upload echoed back)."""
        errors = exc.errors()
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors]
        if any(e["loc"][-1:] == ("file",) for e in errors):
            problems.append(UPLOAD_HINT)
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


def create_app(
    run_dir: str | Path,
    backend: BackendName = "torch",
    limits: ServerLimits | None = None,
    cors_origins: Sequence[str] | None = None,
) -> FastAPI:
    """The API (``/v1/predict``, ``/v1/model``, ``/healthz``; docs at ``/docs``, served from
    local files) and the page at ``/`` for the run in ``run_dir``, loaded once;
    ``backend="onnx"`` serves no heat maps (409). ``limits`` bound what a request may cost."""
    limits = limits or ServerLimits()
    service = PredictionService(Path(run_dir), backend, limits)
    index = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
    max_upload_bytes = limits.max_upload_bytes
    app = FastAPIOffline(  # Swagger UI from the package's files: no CDN
        title="pneumolab",
        version=pneumolab.__version__,
        description=__doc__,
        static_url="/docs-assets",
        redoc_url=None,  # ReDoc's bundle fetches its logo from cdn.redoc.ly
    )
    app.add_middleware(InternalErrors)
    app.add_middleware(ClosedMultipart)  # inside BodyLimit: an endless body is cut there first
    app.add_middleware(
        BodyLimit,
        limit=max_upload_bytes + MULTIPART_SLACK,
        file_limit=max_upload_bytes,
        timeout=limits.body_timeout_s,
    )
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.mount("/static", StaticFiles(packages=[("pneumolab.serving", "static")]), name="static")
    _refusals_in_one_line(app)

    # async: answered on the event loop, not behind uploads waiting in the thread pool
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/healthz")
    @app.head("/healthz", include_in_schema=False)  # one operation ID each
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # NaN as null: the metrics' models write NaN (meta.json keeps it so), which a browser's
    # JSON.parse refuses
    info = null_for_nan(service.info.model_dump(mode="json"))

    @app.get("/v1/model", response_model=ModelInfo)
    @app.head("/v1/model", include_in_schema=False)  # one operation ID each
    async def model_info() -> JSONResponse:
        return JSONResponse(info)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_exclude_unset=True,  # a null probability is sent; unasked PNGs are not
        responses=ERRORS,
        dependencies=[Depends(one_file_part)],
    )
    def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="JPEG, PNG or DICOM X-ray")],
        heatmap: Annotated[bool, Query(description="add a Grad-CAM overlay (torch only)")] = False,
        preview: Annotated[bool, Query(description="add the decoded image as a PNG")] = False,
        keep_label: Annotated[
            bool, Query(description="class label even for an out-of-scope input (still flagged)")
        ] = False,
    ) -> PredictResponse:
        unknown = sorted(set(request.query_params) - set(PREDICT_OPTIONS))
        if unknown:
            raise HTTPException(
                422,
                f"unknown query parameter(s): {', '.join(unknown)}; accepted: "
                f"{', '.join(PREDICT_OPTIONS)}",
            )
        repeated = [k for k in PREDICT_OPTIONS if len(request.query_params.getlist(k)) > 1]
        if repeated:  # the last one won: keep_label=false&keep_label=true released the label
            raise HTTPException(
                422, f"query parameter(s) given more than once: {', '.join(repeated)}"
            )
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large_text(max_upload_bytes))
        name = Path(file.filename or "").name or "upload"  # "/" or "." has no name
        return service.answer(data, name, heatmap, preview, keep_label)

    return app
