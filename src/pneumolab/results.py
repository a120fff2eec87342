"""Typed results that travel between layers and into files: metrics at a threshold, stored
operating points, calibration maps, three-class metrics, and an evaluation's metrics.

Undefined ratios are NaN (never None); ``meta.json`` writes them as ``NaN``, as ``json.dumps``
does, so files stay readable by :func:`json.loads` and by these models. An evaluation's
``metrics.json`` writes them as ``null`` (plain JSON, for other tools); read back, a ``null``
metric is NaN again.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from pneumolab.choices import Split


def _nan_for_null(value: object) -> object:
    return math.nan if value is None else value


Metric = Annotated[
    float,
    BeforeValidator(_nan_for_null),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "null"}],
            "description": "null where undefined (one class only, an empty denominator)",
        }
    ),
]
"""A figure that is NaN where undefined (one class only, an empty denominator). Its JSON
schema says number or null: JSON has no NaN, and the files and answers meant for other tools
(``metrics.json``, ``GET /v1/model``) write it as null, which it reads back as NaN."""


class Result(BaseModel):
    """Base of every stored result: unknown keys are errors, NaN survives a JSON round trip."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ThresholdMetrics(Result):
    """The metrics of a binary classifier that depend on the decision threshold."""

    accuracy: Metric
    sensitivity: Metric
    specificity: Metric
    precision: Metric
    npv: Metric
    f1: Metric
    balanced_accuracy: Metric
    confusion_matrix: list[list[int]] = Field(description="[[tn, fp], [fn, tp]]")


class BinaryMetrics(ThresholdMetrics):
    """Threshold metrics at ``threshold`` plus the threshold-free ones (NaN when one class only)."""

    n: int
    threshold: float
    roc_auc: Metric
    pr_auc: Metric
    brier: Metric
    ece: Metric

    def threshold_only(self) -> ThresholdMetrics:
        """Only the :class:`ThresholdMetrics` fields."""
        return ThresholdMetrics(**{k: getattr(self, k) for k in ThresholdMetrics.model_fields})


class StoredOperatingPoint(Result):
    """An operating point as a run stores it: its rule, provenance and validation metrics."""

    threshold: FiniteFloat
    rule: str = ""
    params: dict[str, float] = Field(default_factory=dict)
    provenance: str = ""
    val_metrics: ThresholdMetrics | None = None


class Platt(Result):
    """Platt scaling ``sigmoid(slope * logit(p) + intercept)``."""

    slope: float
    intercept: float

    def not_increasing(self) -> str | None:
        """Why this map cannot calibrate (a slope not above 0 maps a higher score to a lower
        probability, or every score to one); None where it increases with the score."""
        if self.slope > 0:
            return None
        if self.slope < 0:
            effect = "a higher score a lower probability (the scores rank the classes backwards)"
        else:  # 0, or not a number
            effect = "every score one probability (the scores do not tell the classes apart)"
        return (
            f"the Platt fit on validation has slope {self.slope:.3g}: it would give {effect}; "
            "no Platt map is kept"
        )


class ClassMetrics(Result):
    """One class of a three-class classifier."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    precision: Metric
    recall: Metric
    f1: Metric = Field(alias="f1-score")
    support: int


class SubtypeMetrics(Result):
    """Three-class (NORMAL / BACTERIAL / VIRAL) metrics of a run's class probabilities."""

    classes: list[str]
    per_class: dict[str, ClassMetrics]
    accuracy: Metric
    macro_roc_auc: Metric
    bacterial_vs_viral_accuracy: Metric
    confusion_matrix: list[list[int]] = Field(description="rows: truth, columns: prediction")


class DecisionRule(Result):
    """How a run turns scores into labels, chosen on its validation scores: the operating points
    (the default one gives ``threshold``), calibration maps and validation metrics."""

    threshold: FiniteFloat
    """Finite, as every stored threshold: NaN would call every image NORMAL."""
    threshold_rule: str
    default_operating_point: str
    operating_points: dict[str, StoredOperatingPoint]
    temperature: float | None
    platt: Platt | None
    platt_refused: str | None = None
    """Why ``platt`` is None though a map was fitted: it did not increase with the score
    (:meth:`Platt.not_increasing`). A stored map that does not, written before 2026-12-07, is
    read as refused so."""
    val_metrics: BinaryMetrics
    tta_threshold: FiniteFloat | None = None
    """The default rule's threshold for test-time-augmented scores (``--tta``), chosen on the
    validation scores averaged over the same views; None for runs of before 2026-12-03."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_a_map_that_does_not_increase(cls, data: Any) -> Any:
        """``platt`` None and ``platt_refused`` its reason where the map does not increase."""
        if not isinstance(data, dict) or data.get("platt") is None:
            return data
        try:
            reason = Platt.model_validate(data["platt"]).not_increasing()
        except ValidationError:
            return data  # the field's own validation names what is wrong
        return data if reason is None else data | {"platt": None, "platt_refused": reason}

    @property
    def default_point(self) -> StoredOperatingPoint:
        """The operating point that gives ``threshold``."""
        return self.operating_points[self.default_operating_point]


class ScoredOperatingPoint(Result):
    """A stored operating point scored on the evaluated split."""

    threshold: float
    provenance: str
    metrics: ThresholdMetrics


class OracleThreshold(Result):
    """The best threshold on the evaluated split itself: a diagnosis, never an operating point."""

    threshold: float
    metrics: ThresholdMetrics
    note: str


class TemperatureScaled(Result):
    """Brier score and ECE of the probabilities after temperature scaling, with its temperature."""

    temperature: float
    brier: Metric
    ece: Metric


class PlattScaled(Result):
    """Brier score and ECE of the probabilities after Platt scaling, with its map."""

    slope: float
    intercept: float
    brier: Metric
    ece: Metric


class PerturbationMetrics(Result):
    """Figures under one perturbation of the robustness suite, at the stored threshold."""

    accuracy: Metric
    sensitivity: Metric
    specificity: Metric
    roc_auc: Metric


class RobustnessSummary(Result):
    """Worst and mean figures over the robustness suite's perturbed conditions."""

    worst_roc_auc: Metric
    mean_roc_auc: Metric
    worst_specificity: Metric
    worst_sensitivity: Metric
    mean_accuracy: Metric


class ScenarioSummary(Result):
    """One shift-protocol scenario: mean and min over its draws."""

    mean_roc_auc: Metric
    min_roc_auc: Metric
    mean_specificity: Metric
    min_specificity: Metric
    mean_sensitivity: Metric
    min_sensitivity: Metric


class ShiftSummary(Result):
    """The shift protocol's headline figures."""

    compound_roc_auc: Metric
    compound_specificity: Metric
    worst_scenario_roc_auc: Metric
    compound_sensitivity: Metric = math.nan
    """NaN in evaluations written before 2026-12-07, which did not record it."""


class BatchFigures(Result):
    """One normal acquisition batch against every pneumonia image."""

    n_normal: int
    roc_auc: Metric
    specificity: Metric


def on_request() -> Any:
    """A part of an evaluation computed only where asked for (three-class metrics, robustness,
    the shift protocol): None, and left out of its dump and its JSON, when not computed."""
    return Field(default=None, exclude_if=lambda value: value is None)


class ResampleCounts(Result):
    """How many bootstrap resamples ``ci95`` drew and, per metric, in how many it was defined (a
    resample of one class has no ROC AUC, one without negatives no specificity): the others are
    left out of its interval, and where more than ``max_dropped`` are, it has none (null)."""

    drawn: int
    max_dropped: int
    used: dict[str, int]

    def dropped(self, metric: str) -> int:
        """The resamples left out of ``metric``'s interval (0 for a metric not counted)."""
        return self.drawn - self.used.get(metric, self.drawn)

    def withheld(self, metric: str) -> bool:
        """Whether ``metric`` has no interval: more than ``max_dropped`` resamples left out."""
        return self.dropped(metric) > self.max_dropped


class EvaluationMetrics(BinaryMetrics):
    """Everything an evaluation measured on one split (what ``metrics.json`` holds): the
    metrics at the run's stored threshold, patient-level 95% intervals (``ci95``: metric ->
    [low, high]; :func:`pneumolab.evaluation.bootstrap.bootstrap_ci`), the stored operating
    points and an oracle threshold scored here, calibration after the run's maps, and, where
    asked for, three-class metrics, robustness and the shift protocol."""

    split: Split
    tta: bool = False
    backend: str = "torch"
    model: str
    skipped: list[str] = Field(default_factory=list)
    ci95: dict[str, tuple[Metric, Metric]] = Field(default_factory=dict)
    interval_method: str | None = None
    """How ``ci95`` was computed (``bootstrap.INTERVAL_METHOD``); None: by an earlier version."""
    ci95_resamples: ResampleCounts | None = None
    """The resamples behind each ``ci95`` interval; None in files written before they were
    counted (2026-12-07), whose intervals may rest on fewer resamples than drawn, unsaid."""
    operating_points: dict[str, ScoredOperatingPoint] = Field(default_factory=dict)
    oracle: OracleThreshold | None = None
    temperature_scaled: TemperatureScaled | None = None
    platt_scaled: PlattScaled | None = None
    platt_refused: str | None = None
    """Why the run has no Platt map to score (its ``platt_refused``); None where it has one."""
    test_evaluations_count: int = 0
    subtypes: SubtypeMetrics | None = on_request()
    robustness: dict[str, PerturbationMetrics] | None = on_request()
    robustness_summary: RobustnessSummary | None = on_request()
    shift: dict[str, ScenarioSummary] | None = on_request()
    shift_summary: ShiftSummary | None = on_request()
    acquisition_batches: dict[str, BatchFigures] | None = on_request()

    def to_json(self, indent: int | None = None) -> str:
        """The metrics as JSON (``metrics.json`` indents by 2): NaN as ``null``."""
        return json.dumps(null_for_nan(self.model_dump()), indent=indent)


def null_for_nan(value: Any) -> Any:
    """``value`` (dicts and lists at any depth) with every NaN float as None: JSON ``null``."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: null_for_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [null_for_nan(v) for v in value]
    return value


class AuditSummary(Result):
    """An audit's figures (``audit.json``): the verdict and its reasons, counts, the share out
    of scope and why, OOD-score and predicted-pneumonia figures beside validation's, image
    sizes, bit depths, intensities and DICOM tag values."""

    run: str
    folder: str
    verdict: str
    verdict_reasons: list[str]
    images: int
    unreadable: int
    out_of_scope_share: float | None
    out_of_scope_reasons: dict[str, int]
    ood_threshold: float | None
    ood_score_median: float | None
    val_ood_score_median: float | None
    predicted_pneumonia_rate: float | None
    val_predicted_pneumonia_rate: float
    width_median: float | None
    height_median: float | None
    bit_depths: dict[int | None, int]
    mean_intensity_median: float | None
    dicom_tags: dict[str, dict[str, int]]
