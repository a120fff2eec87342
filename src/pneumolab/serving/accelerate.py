"""Faster exports of a run, each accepted only after a parity check against the fp32 ONNX model.

- ``onnx-int8``: onnxruntime static quantisation (QDQ, per-channel INT8 weights, UINT8
  activations) of the convolutions below 1/4 of the input resolution and the classifier,
  calibrated on validation images;
- ``openvino``: the fp32 ONNX graph as an OpenVINO IR (OpenVINO then runs it in bf16 where the
  CPU has AMX or AVX512-BF16).

Validation images (the run's ``val_predictions.csv``) are split once, seeded: calibration images
for INT8, and the rest for the parity check (:mod:`pneumolab.evaluation.parity`), which scores
them with the fp32 ONNX model and the candidate. A candidate that fails is not written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.data.intensity import normalize_intensity_array
from pneumolab.errors import ExportError, OutputError, RunDirError
from pneumolab.evaluation.parity import OodScores, Parity, score_parity
from pneumolab.files import publish
from pneumolab.inference.onnx_backend import (
    INPUT_NAME,
    INT8_FILE_NAME,
    ExportedBackend,
    OnnxBackend,
    load_onnx_backend,
)
from pneumolab.inference.openvino_backend import (
    METADATA_SECTION,
    OPENVINO_FILE_NAME,
    OpenVinoBackend,
    import_openvino,
)
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.run_models import run_ood_model
from pneumolab.outputs import check_output, check_suffix
from pneumolab.run import RunDir, read_predictions

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 128
"""Validation images INT8 calibration sees (at most half); the others are the parity check's."""
MIN_PARITY_IMAGES = 20
QUANTIZED_OPS = ["Conv", "Gemm"]
"""Operators quantised (their inputs and weights). The classifier's output, the logit, stays
fp32 (``OpTypesToExcludeOutputQuantization``): quantised, it took steps of 0.08 (0.017 in
probability near a 0.28 threshold) and was clamped to about ±10, so a threshold below 2e-5
labelled every image pneumonia."""
FP32_RESOLUTION = 4
"""Convolutions whose output is at least 1/4 of the input's side stay fp32: quantising the
stem and the first stages too moved the default model's logits by 0.42 (median) and flipped
labels far from the threshold (benchmarks/README.md, INT8)."""


@dataclass(frozen=True)
class ValidationImages:
    """The run's validation images, preprocessed, split into calibration and parity parts."""

    calibration: np.ndarray
    parity: np.ndarray
    parity_labels: np.ndarray


def validation_images(predictor: Predictor, run: RunDir, calibration: int) -> ValidationImages:
    """Decode the run's validation images and split them (seeded) for calibration (up to
    ``calibration`` images, at most half) and the parity check (the rest)."""
    if not run.val_predictions.is_file():
        raise RunDirError(f"{run.val_predictions}: missing; the parity check needs it")
    rows = [r for r in read_predictions(run.val_predictions) if Path(r.path).is_file()]
    if len(rows) < 2 * MIN_PARITY_IMAGES:
        raise RunDirError(
            f"{run.val_predictions}: {len(rows)} readable validation images; calibration and the "
            f"parity check need at least {2 * MIN_PARITY_IMAGES}"
        )
    order = np.random.default_rng(0).permutation(len(rows))
    pixels = np.stack([predictor.preprocess_array(rows[i].path) for i in order])
    labels = np.array([rows[i].label for i in order])
    cut = min(calibration, len(rows) // 2)
    return ValidationImages(pixels[:cut], pixels[cut:], labels[cut:])


def _accept(
    candidate: ExportedBackend,
    reference: OnnxBackend,
    images: ValidationImages,
    threshold: float,
    ood_threshold: float | None,
    out_file: Path,
) -> Parity:
    """The parity of ``candidate`` (to be written as ``out_file``) with the fp32 reference;
    ExportError naming ``out_file`` where it fails."""
    expected, got = reference(images.parity), candidate(images.parity)
    if np.isfinite(expected.ood).all() and not np.isfinite(got.ood).all():
        raise ExportError(
            f"{out_file}: not written: the exported model gives no OOD score (the input-scope "
            "gate's) where the fp32 model does"
        )
    ood = (
        OodScores(expected.ood, got.ood, ood_threshold)
        if ood_threshold is not None and np.isfinite(expected.ood).all()
        else None
    )
    parity = score_parity(
        expected.probability, got.probability, images.parity_labels, threshold, ood=ood
    )
    if not parity.accepted:
        raise ExportError(
            f"{out_file}: not written: parity check against fp32 failed: {parity.summary()}"
        )
    return parity


def _check_outputs(run_dir: Path, out_file: Path, overwrite: bool) -> None:
    """RunDirError for an ensemble (each member is exported), OutputError unless ``out_file``
    (and an OpenVINO graph's ``.bin`` beside it) may be written: never a run's own file, nor
    its fp32 ``model.onnx`` (the parity check's reference), an existing one only with
    ``overwrite``."""
    run = RunDir(run_dir)
    if run.read_meta().is_ensemble:
        raise RunDirError(
            f"{run.root} is an ensemble: export each member run (`--backend onnx-int8` or "
            "`openvino` then loads each member's file)"
        )
    if out_file.resolve() == run.onnx.resolve():
        raise OutputError(
            f"{out_file}: the run's fp32 ONNX model, which the parity check compares against; "
            "choose another --out"
        )
    weights = [out_file.with_suffix(".bin")] if out_file.suffix.lower() == ".xml" else []
    for path in [out_file, *weights]:
        check_output(path, overwrite)


def _write_verified(
    run_dir: Path,
    out_file: Path,
    write: Callable[[Path, ValidationImages], ExportedBackend],
    overwrite: bool,
) -> Parity:
    """Export with ``write`` into a temporary folder of its own beside ``out_file`` (two exports
    at once never share one), check parity, then :func:`~pneumolab.files.publish` it there."""
    run = RunDir(Path(run_dir))
    reference = load_onnx_backend(run.root)
    predictor = Predictor(None, run.read_meta(), reference, run_ood_model(run))
    images = validation_images(predictor, run, CALIBRATION_IMAGES)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_file.name}.", dir=out_file.parent))
    tmp = staging / out_file.name
    try:
        ood_threshold = predictor.ood.threshold if predictor.ood else None
        parity = _accept(
            write(tmp, images), reference, images, predictor.threshold, ood_threshold, out_file
        )
        _publish_pair(tmp, out_file, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("%s accepted: %s", out_file, parity.summary())  # the caller reports it
    return parity


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed uint8 pixels."""

    def __init__(self, pixels: np.ndarray, intensity: str, batch_size: int = 16) -> None:
        inputs = normalize_intensity_array(pixels, intensity) / np.float32(255)
        self.batches = iter(np.split(inputs, range(batch_size, len(inputs), batch_size)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _high_resolution_convs(graph: Any, image_size: int) -> list[str]:
    """Names of the Conv nodes whose output side is at least ``image_size / FP32_RESOLUTION``
    (``graph``: an ONNX model whose shapes were inferred)."""
    sides = {
        value.name: value.type.tensor_type.shape.dim[-1].dim_value
        for value in graph.graph.value_info
        if len(value.type.tensor_type.shape.dim) == 4
    }
    return [
        node.name
        for node in graph.graph.node
        if node.op_type == "Conv" and sides.get(node.output[0], 0) * FP32_RESOLUTION >= image_size
    ]


def _publish_pair(tmp: Path, out_file: Path, overwrite: bool) -> None:
    """Publish the export: OpenVINO's ``.bin`` weights first, then its graph (or the one ONNX
    file); weights of ours left beside another process's graph are taken back."""
    weights, published = tmp.with_suffix(".bin"), out_file.with_suffix(".bin")
    ours = _identity(weights)  # the file itself: a move (--overwrite) leaves no name to compare
    if ours is not None:
        publish(weights, published, overwrite)
    try:
        publish(tmp, out_file, overwrite)
    except BaseException:  # any failure: no weights of ours left beside another graph
        if ours is not None and _identity(published) == ours:
            published.unlink()
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    """``path``'s device and inode (one file under any name), None where there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def export_int8(
    run_dir: str | Path, out_file: str | Path | None = None, overwrite: bool = False
) -> Parity:
    """INT8 ONNX model of the run (default ``RUN_DIR/model.int8.onnx``), static quantisation
    calibrated on validation images; written only when parity with fp32 holds, and over an
    existing file only with ``overwrite``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    run_dir = Path(run_dir)
    out_file = Path(out_file) if out_file else run_dir / INT8_FILE_NAME
    _check_outputs(run_dir, out_file, overwrite)
    check_suffix(out_file, ".onnx", "an INT8 ONNX model is an .onnx file")

    def write(tmp: Path, images: ValidationImages) -> ExportedBackend:
        fp32 = RunDir(run_dir).onnx
        quant_pre_process(str(fp32), str(tmp))  # shape inference + graph clean-up
        reference = OnnxBackend(fp32)
        quantize_static(
            str(tmp),
            str(tmp),
            _CalibrationReader(images.calibration, reference.intensity),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=_high_resolution_convs(onnx.load(str(tmp)), reference.image_size),
            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
        )
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {**reference.metadata, "precision": "int8"})
        onnx.save(graph, str(tmp))
        return OnnxBackend(tmp)

    return _write_verified(run_dir, out_file, write, overwrite)


def export_openvino(
    run_dir: str | Path, out_file: str | Path | None = None, overwrite: bool = False
) -> Parity:
    """OpenVINO IR of the run (default ``RUN_DIR/model.openvino.xml`` + ``.bin``), the fp32
    ONNX graph with its metadata; written only when parity with fp32 holds here, and over
    existing files only with ``overwrite``."""
    run_dir = Path(run_dir)
    out_file = Path(out_file) if out_file else run_dir / OPENVINO_FILE_NAME
    check_suffix(
        out_file, ".xml", "an OpenVINO model is an .xml file (its weights go to a .bin beside it)"
    )
    if out_file.suffix != ".xml":  # OpenVINO writes and reads no other: M.XML failed at the end
        raise OutputError(f"{out_file}: OpenVINO needs its model's name to end in .xml, lower case")
    _check_outputs(run_dir, out_file, overwrite)
    ov = import_openvino()

    def write(tmp: Path, images: ValidationImages) -> ExportedBackend:
        fp32 = RunDir(run_dir).onnx
        model = ov.Core().read_model(str(fp32))
        for key, value in OnnxBackend(fp32).metadata.items():
            model.set_rt_info(value, [METADATA_SECTION, key])
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        return OpenVinoBackend(tmp)

    return _write_verified(run_dir, out_file, write, overwrite)
