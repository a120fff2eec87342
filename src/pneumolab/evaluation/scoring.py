"""Score a loaded run on a split and compute every metric of an evaluation, in memory: no output
is written (:mod:`pneumolab.evaluation.writer` writes them;
:func:`~pneumolab.evaluation.evaluate.evaluate` does both). For the test split the held-out log is
opened first, created if missing, so that a look it cannot record is refused."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import brier_score_loss

from pneumolab.choices import SPLITS, Split
from pneumolab.data.dataset import DecodedImages, decode_readable
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.data.subtypes import subtype_labels
from pneumolab.errors import DataLayoutError, ModelError
from pneumolab.evaluation.bootstrap import INTERVAL_METHOD, bootstrap_ci, resamples_text
from pneumolab.evaluation.calibration import apply_platt, apply_temperature
from pneumolab.evaluation.heldout import check_test_log, count_test_evaluations
from pneumolab.evaluation.metrics import (
    binary_metrics,
    called_positive,
    expected_calibration_error,
    threshold_metrics,
)
from pneumolab.evaluation.operating_points import oracle_threshold
from pneumolab.evaluation.robustness import robustness_report, summarize
from pneumolab.evaluation.shift import (
    acquisition_batch,
    batch_breakdown,
    scenario_results,
    shift_summary,
    shifted_probabilities,
)
from pneumolab.evaluation.subtypes import subtype_metrics
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import Scores
from pneumolab.results import (
    EvaluationMetrics,
    OracleThreshold,
    PlattScaled,
    ResampleCounts,
    ScoredOperatingPoint,
    SubtypeMetrics,
    TemperatureScaled,
)
from pneumolab.run import RunDir, SavedSplit
from pneumolab.run_meta import RunMeta

log = logging.getLogger(__name__)


def split_samples(
    run: RunDir, data_dir: Path, split: str, saved_split: SavedSplit | None = None
) -> list[Sample]:
    """``val``: the run's own carved validation split (from ``saved_split``, where the caller
    has read it already); ``test``: ``data_dir/test``, once the run's held-out log is known to
    take the look (:func:`check_test_log`)."""
    if split == "val":
        return (saved_split or run.saved_split()).samples(data_dir, "val")
    if split == "test":
        check_test_log(run)
        return scan_split(find_splits(data_dir, required="test")["test"])
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _operating_points(
    predictor: Predictor, labels: np.ndarray, probs: np.ndarray
) -> dict[str, ScoredOperatingPoint]:
    """The run's stored operating points, scored here; with test-time augmentation only the TTA
    threshold (the stored points were chosen on scores without it)."""
    meta = predictor.meta
    if predictor.tta:
        provenance = (
            f"{meta.threshold_rule}, on validation scores averaged over the test-time views"
            if meta.tta_threshold is not None
            else f"{meta.threshold_rule}, on validation scores WITHOUT test-time views (the run, "
            "or a member of it, was trained before 2026-12-03 and stores no TTA threshold)"
        )
        points = {"tta": (predictor.threshold, provenance)}
    else:
        points = {
            name: (point.threshold, point.provenance)
            for name, point in meta.operating_points.items()
        }
    return {
        name: ScoredOperatingPoint(
            threshold=threshold,
            provenance=provenance,
            metrics=threshold_metrics(labels, probs, threshold),
        )
        for name, (threshold, provenance) in points.items()
    }


def _oracle(labels: np.ndarray, probs: np.ndarray) -> OracleThreshold | None:
    if len(np.unique(labels)) != 2:
        return None
    threshold = oracle_threshold(labels, probs)
    return OracleThreshold(
        threshold=threshold,
        metrics=threshold_metrics(labels, probs, threshold),
        note="chosen on this split itself: for diagnosis only, not a valid operating point",
    )


@dataclass(frozen=True)
class Calibrated:
    """The evaluated split's probabilities after the run's calibration maps, each map scored."""

    curves: dict[str, np.ndarray] = field(default_factory=dict)
    """Reliability-diagram label -> the probabilities after that map."""
    temperature_scaled: TemperatureScaled | None = None
    platt_scaled: PlattScaled | None = None


def _calibrated(meta: RunMeta, labels: np.ndarray, probs: np.ndarray) -> Calibrated:
    """The run's calibration maps applied to ``probs``, each scored (Brier score, ECE)."""

    def scored(scaled: np.ndarray) -> dict[str, float]:
        return {
            "brier": float(brier_score_loss(labels, scaled)),
            "ece": expected_calibration_error(labels, scaled),
        }

    curves: dict[str, np.ndarray] = {}
    temperature_scaled = platt_scaled = None
    t = meta.temperature
    if t is not None:
        label = f"temperature, fitted on val. (T = {t:.2f})"
        scaled = curves[label] = apply_temperature(probs, t)
        temperature_scaled = TemperatureScaled(temperature=t, **scored(scaled))
    platt = meta.platt
    if platt is not None:
        label = f"Platt, fitted on val. (a = {platt.slope:.2f}, b = {platt.intercept:.2f})"
        scaled = curves[label] = apply_platt(probs, platt.slope, platt.intercept)
        platt_scaled = PlattScaled(slope=platt.slope, intercept=platt.intercept, **scored(scaled))
    return Calibrated(curves, temperature_scaled, platt_scaled)


def _subtypes(
    predictor: Predictor,
    decoded: DecodedImages,
    scores: Scores,
    pneumonia: np.ndarray,
) -> SubtypeMetrics | None:
    """Three-class metrics of a three-class run: NORMAL where the evaluation's binary decision
    (``pneumonia``: with ``--tta``, the TTA scores at the TTA threshold) says so, else the more
    likely subtype by the class probabilities of the evaluation's own pass (``scores``; with
    ``--tta``, their mean over the views). None for a binary run, and, with a warning, for an
    exported model (no class logits) or images whose names carry no subtype (outside data: the
    binary metrics still stand)."""
    if not predictor.meta.subtype_names:
        return None
    try:
        truth = np.array(subtype_labels(decoded.samples))
    except DataLayoutError as exc:
        log.warning("three-class metrics (subtypes) not computed: %s", exc)
        return None
    if scores.class_probs is None:
        log.warning(
            "three-class metrics (subtypes) need the torch backend: not computed with %s",
            predictor.backend_name,
        )
        return None
    return subtype_metrics(truth, scores.class_probs, pneumonia)


@dataclass
class Evaluation:
    """A run scored on one split, held in memory: ``metrics`` (what ``metrics.json`` holds) and
    what its figures and a report are drawn from."""

    run: RunDir
    split: str
    predictor: Predictor
    decoded: DecodedImages
    labels: np.ndarray
    probs: np.ndarray
    calibrated: Calibrated
    metrics: EvaluationMetrics
    shifted: dict[str, list[np.ndarray]] | None = None
    """The shift protocol's scores: scenario -> one array per draw (None without ``shift``)."""

    @property
    def title(self) -> str:
        """Model, split and image count, for tables and figures."""
        return f"{self.predictor.meta.model} — {self.split} (n={self.metrics.n})"


def _check_finite(probs: np.ndarray, samples: list[Sample], run: RunDir) -> None:
    """ModelError naming the run and the first image whose score is not a finite number (no
    metric is defined over it)."""
    unscored = np.flatnonzero(~np.isfinite(probs))
    if unscored.size:
        raise ModelError(
            f"{run.root}: the model's output is not a finite number for {unscored.size} of "
            f"{len(probs)} images (first: {samples[unscored[0]].path}); no metric is defined "
            "over it"
        )


def _warn_withheld(counts: ResampleCounts, where: str) -> None:
    """Warn, naming ``where``, of the metrics given no interval though some resamples define
    them: too few do (never-defined ones, as an AUC on one class, have no figure either)."""
    withheld = [
        f"{name} ({resamples_text(used, counts.drawn)})"
        for name, used in counts.used.items()
        if used and counts.withheld(name)
    ]
    if withheld:
        log.warning(
            "%s: no 95%% interval for %s: too few patient resamples define them (the others "
            "lack a class, or a decision)",
            where,
            ", ".join(withheld),
        )


def compute_evaluation(
    predictor: Predictor,
    data_dir: str | Path,
    split: Split = "val",
    robustness: bool = False,
    shift: bool = False,
    saved_split: SavedSplit | None = None,
) -> Evaluation:
    """Score a loaded run (``Predictor.from_run``, with its device and TTA) on ``split`` and
    compute every metric of :func:`~pneumolab.evaluation.evaluate.evaluate`, in memory: no file is written
    (``test_evaluations_count`` counts this look at the test split, which
    :func:`~pneumolab.evaluation.writer.write_evaluation` records). ``saved_split``: the run's
    split as the caller read it already (:meth:`RunDir.saved_split`), not read again."""
    if predictor.run_dir is None:
        raise ValueError("compute_evaluation needs a predictor loaded with Predictor.from_run")
    run = RunDir(predictor.run_dir)
    samples = split_samples(run, Path(data_dir), split, saved_split)
    decoded = decode_readable(samples, predictor.image_size, f"{data_dir}: the {split} split")
    scores = predictor.scorer(decoded.pixels)  # a three-class network's classes too: one pass
    probs = scores.probability
    _check_finite(probs, decoded.samples, run)
    labels = np.array([s.label for s in decoded.samples])
    threshold = predictor.threshold
    # the maps were fitted on scores without test-time views: they do not belong to TTA scores
    calibrated = Calibrated() if predictor.tta else _calibrated(predictor.meta, labels, probs)
    patients = [sample.patient for sample in decoded.samples]
    perturbed = (
        robustness_report(predictor.backend, decoded.pixels, labels, threshold)
        if robustness
        else None
    )
    shifted = shifted_probabilities(predictor.backend, decoded.pixels) if shift else None
    scenarios = None if shifted is None else scenario_results(shifted, labels, threshold)
    batches = None
    if shifted is not None:
        names = [acquisition_batch(s.path.name) for s in decoded.samples]
        batches = batch_breakdown(probs, labels, names, threshold)
    intervals = bootstrap_ci(labels, probs, threshold, groups=patients)
    _warn_withheld(intervals.resamples, f"{run.root}, {split} split")
    metrics = EvaluationMetrics(
        **dict(binary_metrics(labels, probs, threshold)),
        split=split,
        tta=predictor.tta,
        backend=predictor.backend_name,
        model=predictor.meta.model,
        skipped=[r for _, r in decoded.skipped],
        ci95=intervals.bounds,
        interval_method=INTERVAL_METHOD,
        ci95_resamples=intervals.resamples,
        operating_points=_operating_points(predictor, labels, probs),
        oracle=_oracle(labels, probs),
        temperature_scaled=calibrated.temperature_scaled,
        platt_scaled=calibrated.platt_scaled,
        platt_refused=predictor.meta.platt_refused,
        test_evaluations_count=count_test_evaluations(run) + (split == "test"),
        subtypes=_subtypes(predictor, decoded, scores, called_positive(probs, threshold)),
        robustness=perturbed,
        robustness_summary=None if perturbed is None else summarize(perturbed),
        shift=None if scenarios is None else {r.scenario: r.summary() for r in scenarios},
        shift_summary=None if scenarios is None else shift_summary(scenarios),
        acquisition_batches=batches,
    )
    return Evaluation(run, split, predictor, decoded, labels, probs, calibrated, metrics, shifted)
