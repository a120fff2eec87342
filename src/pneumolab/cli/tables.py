"""Rich tables of the command-line output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from pneumolab.evaluation.bootstrap import interval_text, left_out_note
from pneumolab.evaluation.metrics import SCALAR_METRICS, format_metric
from pneumolab.results import (
    BinaryMetrics,
    EvaluationMetrics,
    PerturbationMetrics,
    ScenarioSummary,
    SubtypeMetrics,
)

if TYPE_CHECKING:  # the comparison module loads PyTorch; the table only reads its rows
    from pneumolab.evaluation.comparison import ComparisonRow

METRIC_KEYS = ("n", *SCALAR_METRICS, "threshold")


def metrics_table(metrics: BinaryMetrics, title: str) -> Table:
    """One row per metric (with its 95% interval over patients where an evaluation has one; a
    caption where resamples were left out of one)."""
    scored = metrics if isinstance(metrics, EvaluationMetrics) and metrics.ci95 else None
    caption = None if scored is None else left_out_note(scored, METRIC_KEYS) or None
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if scored is not None:
        table.add_column("95% CI (patients)", justify="right")
    for key in METRIC_KEYS:
        row = [key, format_metric(getattr(metrics, key))]
        if scored is not None:
            row.append(interval_text(scored, key))
        table.add_row(*row)
    (tn, fp), (fn, tp) = metrics.confusion_matrix
    table.add_row("confusion [[tn, fp], [fn, tp]]", f"[[{tn}, {fp}], [{fn}, {tp}]]")
    return table


def operating_points_table(metrics: EvaluationMetrics) -> Table:
    """Sensitivity and specificity at each stored operating point."""
    table = Table(
        "operating point",
        "threshold",
        "sensitivity",
        "specificity",
        "provenance",
        title="operating points (chosen on validation)",
    )
    for name, point in metrics.operating_points.items():
        table.add_row(
            name,
            format_metric(point.threshold),
            format_metric(point.metrics.sensitivity),
            format_metric(point.metrics.specificity),
            point.provenance,
        )
    oracle = metrics.oracle
    if oracle is not None:
        table.add_row(
            Text("oracle (diagnosis only)", style="yellow"),
            format_metric(oracle.threshold),
            format_metric(oracle.metrics.sensitivity),
            format_metric(oracle.metrics.specificity),
            oracle.note,
        )
    return table


def robustness_table(report: dict[str, PerturbationMetrics]) -> Table:
    """Metrics under each perturbation of the robustness suite (a dash where undefined: one
    class only)."""
    table = Table(
        "perturbation", "roc_auc", "accuracy", "sensitivity", "specificity", title="robustness"
    )
    for name, row in report.items():
        table.add_row(
            name,
            *(
                format_metric(v)
                for v in (row.roc_auc, row.accuracy, row.sensitivity, row.specificity)
            ),
        )
    return table


def shift_table(report: dict[str, ScenarioSummary]) -> Table:
    """The shift protocol: one line per scenario, mean (min) over its draws (dashes where
    undefined)."""
    table = Table("scenario", "roc_auc", "specificity", "sensitivity", title="shift protocol")
    for name, row in report.items():
        table.add_row(
            name,
            *(
                f"{format_metric(getattr(row, f'mean_{k}'))} "
                f"({format_metric(getattr(row, f'min_{k}'))})"
                for k in ("roc_auc", "specificity", "sensitivity")
            ),
        )
    return table


def comparison_table(rows: Sequence[ComparisonRow], title: str) -> Table:
    """One line per compared model (worst-case AUC when robustness was measured, AUC,
    sensitivity and specificity under the compound shift when the shift protocol was)."""
    robust = any(r.worst_roc_auc is not None for r in rows)
    shifted = any(r.shift_roc_auc is not None for r in rows)
    columns = ["model", "strategy", "size", "accuracy", "sensitivity", "specificity", "ROC AUC"]
    columns += ["worst AUC"] if robust else []
    columns += ["shift AUC", "shift sens.", "shift spec."] if shifted else []
    table = Table(*columns, "params", "train s", "CPU ms/img", title=title)
    for r in rows:
        metrics: list[float | None] = [r.accuracy, r.sensitivity, r.specificity, r.roc_auc]
        metrics += [r.worst_roc_auc] if robust else []
        metrics += [r.shift_roc_auc, r.shift_sensitivity, r.shift_specificity] if shifted else []
        table.add_row(
            r.name,
            r.strategy,
            str(r.image_size),
            *map(format_metric, metrics),
            f"{r.parameters:,}" if r.parameters else "—",
            "—" if r.train_seconds is None else f"{r.train_seconds:.0f}",
            f"{r.cpu_ms_per_image:.1f}",
        )
    return table


def subtypes_table(subtypes: SubtypeMetrics) -> Table:
    """Per-class metrics of a three-class run, with its confusion matrix rows."""
    table = Table("class", "precision", "recall", "F1", "support", *subtypes.classes)
    table.title = (
        f"three classes: accuracy {subtypes.accuracy:.4f}, bacterial vs viral "
        f"{format_metric(subtypes.bacterial_vs_viral_accuracy)} (rows: truth)"
    )
    for name, row in zip(subtypes.classes, subtypes.confusion_matrix, strict=True):
        m = subtypes.per_class[name]
        table.add_row(
            name,
            format_metric(m.precision),
            format_metric(m.recall),
            format_metric(m.f1),
            str(m.support),
            *map(str, row),
        )
    return table
