"""Evaluate a finished run on its validation split or on the dataset's test split."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

import pneumolab
from pneumolab.choices import SPLITS
from pneumolab.data.dataset import DecodedImages, decode_samples
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.data.subtypes import subtype_labels
from pneumolab.errors import DataLayoutError
from pneumolab.evaluation.bootstrap import bootstrap_ci
from pneumolab.evaluation.calibration import (
    apply_platt,
    apply_temperature,
    save_reliability_diagram,
)
from pneumolab.evaluation.figures import save_confusion_matrix, save_roc_curve
from pneumolab.evaluation.metrics import (
    binary_metrics,
    expected_calibration_error,
    threshold_metrics,
)
from pneumolab.evaluation.operating_points import oracle_threshold
from pneumolab.evaluation.robustness import robustness_report, summarize
from pneumolab.evaluation.shift import (
    acquisition_batch,
    batch_breakdown,
    shift_protocol,
    shift_summary,
)
from pneumolab.evaluation.subtypes import subtype_metrics
from pneumolab.inference.predictor import Predictor, default_device, predict_class_probabilities
from pneumolab.run import RunDir, write_predictions
from pneumolab.run_meta import RunMeta

TEST_LOG = "test_evaluations.jsonl"


def split_samples(run: RunDir, data_dir: Path, split: str) -> list[Sample]:
    """``val``: the run's own carved validation split; ``test``: ``data_dir/test``."""
    if split == "val":
        return run.read_split(data_dir, "val")
    if split == "test":
        splits = find_splits(data_dir)
        if "test" not in splits:
            raise DataLayoutError(f"{data_dir}: no 'test' folder to evaluate on")
        return scan_split(splits["test"])
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _git_commit() -> str | None:
    """``git rev-parse HEAD`` in the package's source folder, or None (no git, not a checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pneumolab.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def log_test_evaluation(run: RunDir) -> int:
    """Append one line to ``RUN_DIR/test_evaluations.jsonl`` (held-out guard: every look at the
    test split is recorded) and return how many test evaluations the run has had, this one included."""
    config_hash = (
        hashlib.sha256(run.config.read_bytes()).hexdigest() if run.config.is_file() else None
    )
    entry = {
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "pneumolab_version": pneumolab.__version__,
        "git_commit": _git_commit(),
        "config_sha256": config_hash,
    }
    with (run.root / TEST_LOG).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return count_test_evaluations(run)


def count_test_evaluations(run: RunDir) -> int:
    """How many times the run has been evaluated on the test split (lines of its log)."""
    if not (run.root / TEST_LOG).is_file():
        return 0
    return sum(1 for line in (run.root / TEST_LOG).read_text().splitlines() if line.strip())


def _operating_points(
    meta: RunMeta, labels: np.ndarray, probs: np.ndarray
) -> dict[str, dict[str, Any]]:
    """The run's stored operating points, scored here."""
    return {
        name: {
            "threshold": point.threshold,
            "provenance": point.provenance,
            "metrics": threshold_metrics(labels, probs, point.threshold).model_dump(),
        }
        for name, point in meta.operating_points.items()
    }


def _oracle(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any] | None:
    if len(np.unique(labels)) != 2:
        return None
    threshold = oracle_threshold(labels, probs)
    return {
        "threshold": threshold,
        "metrics": threshold_metrics(labels, probs, threshold).model_dump(),
        "note": "chosen on this split itself: for diagnosis only, not a valid operating point",
    }


def _calibrated(meta: RunMeta, probs: np.ndarray) -> dict[str, tuple[str, np.ndarray, dict]]:
    """The run's calibration maps applied to ``probs``: key -> (curve label, scores, parameters)."""
    maps = {}
    t = meta.temperature
    if t is not None:
        maps["temperature_scaled"] = (
            f"temperature-scaled (T = {t:.2f})",
            apply_temperature(probs, t),
            {"temperature": t},
        )
    platt = meta.platt
    if platt is not None:
        label = f"Platt-scaled (a = {platt.slope:.2f}, b = {platt.intercept:.2f})"
        maps["platt_scaled"] = (
            label,
            apply_platt(probs, platt.slope, platt.intercept),
            dict(platt),
        )
    return maps


def _calibration(labels: np.ndarray, scaled: np.ndarray, params: dict) -> dict[str, float]:
    return params | {
        "brier": float(brier_score_loss(labels, scaled)),
        "ece": expected_calibration_error(labels, scaled),
    }


def _subtypes(predictor: Predictor, decoded: DecodedImages) -> dict[str, Any]:
    """Three-class metrics (argmax of the class probabilities; TTA does not apply)."""
    model = predictor.require_model("three-class metrics")
    probs = predict_class_probabilities(model, decoded.pixels, predictor.intensity)
    return subtype_metrics(np.array(subtype_labels(decoded.samples)), probs).model_dump()


def evaluate(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str = "val",
    robustness: bool = False,
    device: str | None = None,
    tta: bool = False,
    shift: bool = False,
) -> dict[str, Any]:
    """Metrics at the run's stored threshold, threshold-free metrics, patient-grouped bootstrap
    95% intervals (``ci95``), every stored operating point and an oracle threshold scored on this
    split, and calibration before/after the run's temperature and Platt maps. Writes metrics.json,
    predictions.csv and PNG figures (confusion matrix, ROC curve, reliability diagram) into
    ``RUN_DIR/eval/<split>/`` and returns the metrics. Every ``test`` evaluation is logged in
    ``RUN_DIR/test_evaluations.jsonl``; ``test_evaluations_count`` says how many there have been.

    ``tta`` averages each image over fixed test-time views (metrics still at the stored
    threshold, which was chosen without them). With ``robustness``, also scores the split under
    acquisition-like perturbations (:mod:`pneumolab.evaluation.robustness`), with the same
    backend and TTA, and adds ``robustness`` and ``robustness_summary``. A three-class run adds
    ``subtypes`` (:func:`~pneumolab.evaluation.subtypes.subtype_metrics`) and its 3x3 matrix.
    With ``shift``, adds the shift protocol (:mod:`pneumolab.evaluation.shift`): ``shift`` (per
    scenario, mean and min over three draws), ``shift_summary`` and ``acquisition_batches``.
    """
    run = RunDir(Path(run_dir))
    predictor = Predictor.from_run(run.root, device=device or default_device(), tta=tta)
    samples = split_samples(run, Path(data_dir), split)
    decoded = decode_samples(samples, predictor.image_size)
    probs = predictor.backend(decoded.pixels)
    labels = np.array([s.label for s in decoded.samples])
    metrics: dict[str, Any] = binary_metrics(labels, probs, predictor.threshold).model_dump()
    calibrated = _calibrated(predictor.meta, probs)
    patients = [sample.patient for sample in decoded.samples]
    test_count = log_test_evaluation(run) if split == "test" else count_test_evaluations(run)
    metrics |= {
        "split": split,
        "tta": tta,
        "model": predictor.meta.model,
        "skipped": [r for _, r in decoded.skipped],
        "ci95": bootstrap_ci(labels, probs, predictor.threshold, groups=patients),
        "operating_points": _operating_points(predictor.meta, labels, probs),
        "oracle": _oracle(labels, probs),
        "temperature_scaled": None,
        **{
            key: _calibration(labels, scaled, params)
            for key, (_, scaled, params) in calibrated.items()
        },
        "test_evaluations_count": test_count,
    }
    if predictor.meta.subtype_names and predictor.model is not None:
        metrics["subtypes"] = _subtypes(predictor, decoded)
    if robustness:
        report = robustness_report(predictor.backend, decoded.pixels, labels, predictor.threshold)
        metrics |= {"robustness": report, "robustness_summary": summarize(report)}
    if shift:
        results = shift_protocol(predictor.backend, decoded.pixels, labels, predictor.threshold)
        batches = [acquisition_batch(s.path.name) for s in decoded.samples]
        metrics |= {
            "shift": {r.scenario: r.summary() for r in results},
            "shift_summary": shift_summary(results),
            "acquisition_batches": batch_breakdown(probs, labels, batches, predictor.threshold),
        }
    metrics = _json_safe(metrics)

    out = run.eval_dir(split)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{predictor.meta.model} — {split} (n={metrics['n']})"
    save_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", title)
    if len(np.unique(labels)) == 2:
        point = (1 - metrics["specificity"], metrics["sensitivity"])
        save_roc_curve(labels, probs, out / "roc_curve.png", point, title)
    curves = {"raw": probs} | {label: scaled for label, scaled, _ in calibrated.values()}
    save_reliability_diagram(labels, curves, out / "reliability.png", title)
    if "subtypes" in metrics:
        subtypes = metrics["subtypes"]
        save_confusion_matrix(
            subtypes["confusion_matrix"],
            out / "confusion_matrix_3class.png",
            title,
            subtypes["classes"],
        )
    write_predictions(out / "predictions.csv", decoded.samples, probs)
    return metrics
