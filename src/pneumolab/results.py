"""Typed results that travel between layers and into files: metrics at a threshold, stored
operating points, calibration maps, three-class metrics.

Undefined ratios are NaN (never None); they are written to JSON as ``NaN``, as ``json.dumps``
does, so files stay readable by :func:`json.loads` and by these models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Result(BaseModel):
    """Base of every stored result: unknown keys are errors, NaN survives a JSON round trip."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ThresholdMetrics(Result):
    """The metrics of a binary classifier that depend on the decision threshold."""

    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    npv: float
    f1: float
    balanced_accuracy: float
    confusion_matrix: list[list[int]] = Field(description="[[tn, fp], [fn, tp]]")


class BinaryMetrics(ThresholdMetrics):
    """Threshold metrics at ``threshold`` plus the threshold-free ones (NaN when one class only)."""

    n: int
    threshold: float
    roc_auc: float
    pr_auc: float
    brier: float
    ece: float

    def threshold_only(self) -> ThresholdMetrics:
        """Only the :class:`ThresholdMetrics` fields."""
        return ThresholdMetrics(**{k: getattr(self, k) for k in ThresholdMetrics.model_fields})


class StoredOperatingPoint(Result):
    """An operating point as a run stores it: its rule, provenance and validation metrics."""

    threshold: float
    rule: str = ""
    params: dict[str, float] = Field(default_factory=dict)
    provenance: str = ""
    val_metrics: ThresholdMetrics | None = None


class Platt(Result):
    """Platt scaling ``sigmoid(slope * logit(p) + intercept)``."""

    slope: float
    intercept: float


class ClassMetrics(Result):
    """One class of a three-class classifier."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    precision: float
    recall: float
    f1: float = Field(alias="f1-score")
    support: int


class SubtypeMetrics(Result):
    """Three-class (NORMAL / BACTERIAL / VIRAL) metrics of a run's class probabilities."""

    classes: list[str]
    per_class: dict[str, ClassMetrics]
    accuracy: float
    macro_roc_auc: float
    bacterial_vs_viral_accuracy: float
    confusion_matrix: list[list[int]] = Field(description="rows: truth, columns: prediction")


class DecisionRule(Result):
    """How a run turns scores into labels, chosen on its validation scores: the operating points
    (the default one gives ``threshold``), calibration maps and validation metrics."""

    threshold: float
    threshold_rule: str
    default_operating_point: str
    operating_points: dict[str, StoredOperatingPoint]
    temperature: float | None
    platt: Platt | None
    val_metrics: BinaryMetrics
    tta_threshold: float | None = None
    """The default rule's threshold for test-time-augmented scores (``--tta``), chosen on the
    validation scores averaged over the same views; None for runs of before 2026-12-03."""

    @property
    def default_point(self) -> StoredOperatingPoint:
        """The operating point that gives ``threshold``."""
        return self.operating_points[self.default_operating_point]
