"""Evaluate a finished run on its validation split or on the dataset's test split."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.data.dataset import decode_samples
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.errors import DataLayoutError
from pneumolab.evaluation.figures import save_confusion_matrix, save_roc_curve
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.robustness import robustness_report, summarize
from pneumolab.inference.predictor import Predictor, default_device, predict_pixels
from pneumolab.run import RunDir, write_predictions

SPLITS = ("val", "test")


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


def evaluate(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str = "val",
    robustness: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics at the run's stored threshold plus ROC AUC; writes metrics.json, predictions.csv and
    PNG figures into ``RUN_DIR/eval/<split>/`` and returns the metrics.

    With ``robustness``, also scores the split under acquisition-like perturbations
    (:mod:`pneumolab.evaluation.robustness`) and adds ``robustness`` and ``robustness_summary``.
    """
    run = RunDir(Path(run_dir))
    predictor = Predictor.from_run(run.root, device=device or default_device())
    samples = split_samples(run, Path(data_dir), split)
    decoded = decode_samples(samples, predictor.image_size)
    probs = predict_pixels(predictor.model, decoded.pixels, predictor.intensity)
    labels = np.array([s.label for s in decoded.samples])
    metrics: dict[str, Any] = binary_metrics(labels, probs, predictor.threshold)
    metrics |= {
        "split": split,
        "model": predictor.meta["model"],
        "skipped": [r for _, r in decoded.skipped],
    }
    if robustness:
        report = robustness_report(
            predictor.model, decoded.pixels, labels, predictor.threshold, predictor.intensity
        )
        metrics |= {"robustness": report, "robustness_summary": summarize(report)}
    metrics = _json_safe(metrics)

    out = run.eval_dir(split)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{predictor.meta['model']} — {split} (n={metrics['n']})"
    save_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", title)
    if len(np.unique(labels)) == 2:
        point = (1 - metrics["specificity"], metrics["sensitivity"])
        save_roc_curve(labels, probs, out / "roc_curve.png", point, title)
    write_predictions(out / "predictions.csv", decoded.samples, probs)
    return metrics
