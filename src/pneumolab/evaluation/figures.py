"""Figures of evaluations and comparisons: each builder returns a matplotlib Figure (pyplot-free,
no global state); :func:`figure_png` renders one, :func:`save_figure` writes it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import LogFormatter
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from pneumolab.data.classes import CLASS_NAMES
from pneumolab.evaluation.metrics import ECE_BINS, expected_calibration_error, net_benefit
from pneumolab.files import write_bytes_atomically


def literal_text(fig: Figure) -> Figure:
    """``fig`` with every text drawn as written: a ``$`` in a file or run name, or in a DICOM
    value, would start matplotlib's mathtext (and crash the figure where it does not parse)."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)):
        if axis.get_scale() == "log":  # its tick labels are mathtext: "$\\mathdefault{10^{2}}$"
            axis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # plain text, and
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # 2, 5 within a decade
    return fig


def figure_png(fig: Figure, dpi: float | None = None) -> bytes:
    """``fig`` laid out tightly, its text drawn as written, as PNG bytes (at its own dpi unless
    ``dpi``)."""
    buffer = io.BytesIO()
    literal_text(fig).tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi or "figure")
    return buffer.getvalue()


def save_figure(fig: Figure, path: Path, replace: bool = True) -> Path:
    """Write ``fig`` to ``path`` as PNG (:func:`figure_png`), atomically (a stop or a full disk
    never leaves a cut figure in place of a good one; ``replace``: see
    :func:`~pneumolab.files.publish`); returns ``path``."""
    return write_bytes_atomically(path, figure_png(fig), replace)


def confusion_matrix_figure(
    matrix: list[list[int]], title: str = "", class_names: Sequence[str] = CLASS_NAMES
) -> Figure:
    """A confusion matrix (rows: truth; binary: ``[[tn, fp], [fn, tp]]``) with class names."""
    fig = Figure(figsize=(4, 4), dpi=120)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(title)
    return fig


def roc_curve_figure(
    y_true: np.ndarray,
    prob: np.ndarray,
    operating_point: tuple[float, float] | None = None,
    title: str = "",
) -> Figure:
    """ROC curve with its AUC; ``operating_point`` = (1 - specificity, sensitivity) is marked."""
    fig = Figure(figsize=(4.5, 4.5), dpi=120)
    ax = fig.subplots()
    display = RocCurveDisplay.from_predictions(
        y_true, prob, ax=ax, name="model", plot_chance_level=True
    )
    display.line_.set_label(f"model (AUC = {display.roc_auc:.4f})")  # sklearn's 2 decimals
    if operating_point is not None:  # read 1.00 beside a table's 0.9986
        ax.plot(*operating_point, "o", color="crimson", label="stored threshold")
    ax.legend(loc="lower right")
    ax.set_title(title)
    return fig


DECISION_CURVE_THRESHOLDS = np.linspace(0.01, 0.99, 99)
"""The threshold probabilities a decision curve is drawn at."""


def decision_curve_figure(
    y_true: np.ndarray, prob: np.ndarray, stored_threshold: float | None = None, title: str = ""
) -> Figure:
    """Decision curve: net benefit (:func:`~pneumolab.evaluation.metrics.net_benefit`) of the
    model's probability against calling every image pneumonia and calling none, over threshold
    probabilities from 0.01 to 0.99; the model's net benefit at ``stored_threshold`` is marked."""
    fig = Figure(figsize=(4.5, 4.5), dpi=120)
    ax = fig.subplots()
    marked = stored_threshold if stored_threshold is not None and 0 < stored_threshold < 1 else None
    # the curve passes through its dot (scores bunched near it left the dot far off the line)
    p_t = np.union1d(DECISION_CURVE_THRESHOLDS, [] if marked is None else [marked])
    ax.plot(p_t, net_benefit(y_true, prob, p_t), label="model")
    ax.plot(p_t, net_benefit(y_true, np.ones(len(y_true)), p_t), "--", label="call all pneumonia")
    ax.axhline(0.0, color="gray", linestyle=":", label="call none")
    if marked is not None:
        at_threshold = net_benefit(y_true, prob, [marked])[0]
        ax.plot(marked, at_threshold, "o", color="crimson", label="stored threshold")
    prevalence = float(np.mean(y_true)) if len(y_true) else 1.0
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title)
    ax.set(xlim=(0, 1), ylim=(-0.05, max(prevalence, 0.05) * 1.1))
    ax.legend(loc="lower left", fontsize="small")
    return fig


def sample_grid_figure(samples_by_class: dict[str, list[Path]], size: int = 160) -> Figure:
    """A grid of X-rays, one row per class (the study's images figure)."""
    from pneumolab.data.imageio import load_image

    columns = max(1, max(len(paths) for paths in samples_by_class.values()))
    fig = Figure(figsize=(1.8 * columns, 2.0 * len(samples_by_class)), dpi=110)
    axes = fig.subplots(len(samples_by_class), columns, squeeze=False)
    for row, (name, paths) in zip(axes, samples_by_class.items(), strict=True):
        for ax in row:
            ax.axis("off")
        for ax, image_path in zip(row, paths, strict=False):
            image = load_image(image_path, size_hint=size)
            image.thumbnail((size, size))
            ax.imshow(image, cmap="gray")
            ax.set_title(f"{name}\n{image_path.name}", fontsize=6)
    return fig


def model_bars_figure(names: list[str], values: dict[str, list[float]], title: str = "") -> Figure:
    """Grouped bars: one group per model, one bar per metric (the study's results figure). The
    y axis starts a little below the lowest value, so close models stay distinguishable."""
    fig = Figure(figsize=(max(6.0, 1.4 * len(names) + 2), 4.4), dpi=120)
    ax = fig.subplots()
    width = 0.8 / max(1, len(values))
    positions = np.arange(len(names))
    for i, (metric, heights) in enumerate(values.items()):
        bars = ax.bar(positions + i * width, heights, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, label_type="center", color="white")
    lowest = min((v for heights in values.values() for v in heights), default=0.0)
    ax.set_ylim(max(0.0, np.floor((lowest - 0.05) * 10) / 10), 1.0)
    ax.set_xticks(positions + width * (len(values) - 1) / 2, names, rotation=20, ha="right")
    ax.set_ylabel("score")
    # above the bars, not below: long model names (namesakes get their folders) fill the x axis
    ax.legend(fontsize="small", ncols=len(values), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_title(title, pad=24)
    return fig


def reliability_figure(
    y_true: np.ndarray, curves: dict[str, np.ndarray], title: str = ""
) -> Figure:
    """Observed pneumonia rate against mean predicted probability in 10 equal-width bins, one line
    per entry of ``curves`` (label -> probabilities), with each curve's ECE in the legend."""
    fig = Figure(figsize=(4.5, 6.0), dpi=120)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for label, prob in curves.items():
        observed, predicted = calibration_curve(y_true, prob, n_bins=ECE_BINS, strategy="uniform")
        ece = expected_calibration_error(y_true, prob)
        ax.plot(predicted, observed, "o-", label=f"{label} (ECE {ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction of pneumonia")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small")  # below:
    return fig  # in the axes, the long labels ran off the figure and hid the curves
