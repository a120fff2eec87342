"""One self-contained HTML report of a run on a split: metrics with 95% CIs, curves, confusion
matrices, calibration, score histograms, the most confident errors with Grad-CAM, sample X-rays
and the saliency sanity check. Every image is an embedded base64 PNG; nothing is fetched."""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import PrecisionRecallDisplay
from torch import nn

import pneumolab
from pneumolab.choices import Split
from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.imageio import load_image
from pneumolab.errors import ModelError
from pneumolab.evaluation.bootstrap import interval_text, left_out_note
from pneumolab.evaluation.figures import confusion_matrix_figure, figure_png
from pneumolab.evaluation.metrics import SCALAR_METRICS, called_positive, format_metric
from pneumolab.evaluation.scoring import compute_evaluation
from pneumolab.evaluation.writer import FIGURES, evaluation_figures, record_look
from pneumolab.explain.gradcam import ExplainedClass, find_target_layer, gradcam_maps, overlay_png
from pneumolab.explain.occlusion import AUC_LOSS_FLAG, border_occlusion
from pneumolab.explain.sanity import saliency_sanity
from pneumolab.files import atomic_write
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import default_device, predict_pixels
from pneumolab.outputs import check_apart, check_output, check_suffix
from pneumolab.reporting.html import figure_html
from pneumolab.reporting.model_card import CARD_SPLIT, PLATT_OFF_DISTRIBUTION, write_model_card
from pneumolab.results import EvaluationMetrics, ScoredOperatingPoint, SubtypeMetrics
from pneumolab.run import RunDir

SANITY_IMAGES = 64
THUMBNAIL = 224
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
figure{display:inline-block;margin:.4em;text-align:center;font-size:.85em}
figure img{width:224px;image-rendering:auto}.plot img{width:auto;max-width:100%}
.warn{color:#a00;font-weight:bold}footer{margin-top:3em;font-size:.85em;color:#555}"""


VALIDATION_IN_SAMPLE = (
    "The validation split is carved from the dataset's train/ folder (patient-grouped), not its "
    "val/ folder, and the threshold and operating points were chosen on these same images: the "
    "figures at them are in-sample, and overstate performance on other data."
)


def _metrics_html(metrics: EvaluationMetrics, split: Split) -> str:
    """The metrics table with its intervals, saying where a validation report's figures are
    in-sample and which images could not be read."""
    rows = ["<tr><th>metric</th><th>value</th><th>95% CI (patients)</th></tr>"]
    for key in ("n", "threshold", *SCALAR_METRICS):
        interval = html.escape(interval_text(metrics, key))
        value = format_metric(getattr(metrics, key))
        rows.append(f"<tr><th>{key}</th><td>{value}</td><td>{interval}</td></tr>")
    rows.append("<tr><th>operating point</th><th>threshold</th><th>provenance</th></tr>")
    for name, point in metrics.operating_points.items():
        provenance = html.escape(point.provenance)
        rows.append(
            f"<tr><th>{html.escape(name)}</th><td>{point.threshold:.4f}</td>"
            f"<td>{provenance}</td></tr>"
        )
    table = f"<table>{''.join(rows)}</table>"
    if split == "val":
        table = f"<p>{html.escape(VALIDATION_IN_SAMPLE)}</p>{table}"
    left_out = left_out_note(metrics, SCALAR_METRICS)
    if left_out:
        table += f'<p class="warn">{html.escape(left_out)}</p>'
    if not metrics.skipped:
        return table
    shown = ", ".join(metrics.skipped[:10]) + (" ..." if len(metrics.skipped) > 10 else "")
    note = (
        f"{len(metrics.skipped)} image(s) of the split could not be read and are left out of "
        f"every figure here (n = {metrics.n}): {shown}"
    )
    return f'{table}<p class="warn">{html.escape(note)}</p>'


def _curves_html(labels: np.ndarray, probs: np.ndarray, figures: dict[str, bytes]) -> str:
    if "roc_curve.png" not in figures:
        return "<p>Curves need both classes in the split.</p>"
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    display = PrecisionRecallDisplay.from_predictions(labels, probs, ax=ax, name="model")
    display.line_.set_label(f"model (AP = {display.average_precision:.4f})")
    ax.legend(loc="lower left")
    roc = figure_html(figures["roc_curve.png"], FIGURES["roc_curve.png"])
    return roc + figure_html(figure_png(fig, dpi=110), "precision-recall curve")


def _decision_html(figures: dict[str, bytes]) -> str:
    if "decision_curve.png" not in figures:
        return "<p>A decision curve needs both classes in the split.</p>"
    return figure_html(figures["decision_curve.png"], FIGURES["decision_curve.png"]) + (
        "<p>Net benefit = true positives / n − false positives / n × p / (1 − p) at threshold "
        "probability p, the weight of a false alarm against a missed pneumonia (Vickers and "
        "Elkin 2006). It depends on this split's prevalence and on the raw probabilities "
        "being calibrated on it.</p>"
    )


def _confusion_html(points: dict[str, ScoredOperatingPoint]) -> str:
    return "".join(
        figure_html(
            figure_png(confusion_matrix_figure(point.metrics.confusion_matrix, name)),
            f"{name} (threshold {point.threshold:.4f})",
        )
        for name, point in points.items()
    )


def _scores_html(
    labels: np.ndarray, probs: np.ndarray, points: dict[str, ScoredOperatingPoint]
) -> str:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41).tolist()
    for label, name in enumerate(CLASS_NAMES):
        ax.hist(
            probs[labels == label],
            bins=bins,
            alpha=0.55,
            label=f"{name} (n={np.sum(labels == label)})",
        )
    for (name, point), colour in zip(
        points.items(), ("crimson", "darkgreen", "purple", "black"), strict=False
    ):
        ax.axvline(
            point.threshold, color=colour, linestyle="--", label=f"{name} ({point.threshold:.3f})"
        )
    ax.set(xlabel="P(pneumonia)", ylabel="images", yscale="log")
    ax.legend(fontsize="small")
    return figure_html(figure_png(fig, dpi=110), "scores per class; dashed: operating points")


def _heat_layer(predictor: Predictor) -> tuple[nn.Module | None, str]:
    """The layer the report's Grad-CAM maps explain (:func:`find_target_layer`), or None and
    why this single network has none, in words ("" for an ensemble: no single network)."""
    if predictor.model is None:
        return None, ""
    try:
        return find_target_layer(predictor.model, predictor.image_size), ""
    except ModelError as exc:  # a report without maps, not no report
        return None, f"this network has no feature map that Grad-CAM can show: {exc}"


def _errors_html(
    predictor: Predictor,
    heat_layer: tuple[nn.Module | None, str],
    rows: list[dict[str, Any]],
    all_pixels: torch.Tensor,
    thumbnail: Callable[[str], Image.Image],
    limit: int,
) -> str:
    """The galleries of the most confident false negatives and false positives, each image's
    Grad-CAM drawn from the pixels the evaluation scored (``all_pixels``, by each row's
    ``index``: the file is decoded again only for its ``thumbnail``)."""
    threshold = predictor.threshold
    fn = sorted(
        (r for r in rows if r["label"] == 1 and r["probability"] < threshold),
        key=lambda r: r["probability"],
    )
    fp = sorted(
        (r for r in rows if r["label"] == 0 and r["probability"] >= threshold),
        key=lambda r: -r["probability"],
    )
    model, (layer, why_none) = predictor.model, heat_layer  # model None: an ensemble
    if layer is not None:
        shown = (
            "Grad-CAM of the class each image was called: the evidence for NORMAL on a false "
            "negative, for PNEUMONIA on a false positive"
        )
    else:
        shown = f"no heat maps: {why_none}" if why_none else "ensemble: no heat maps"
    parts = [f"<p>At the default threshold {threshold:.4f}; {html.escape(shown)}.</p>"]
    galleries: tuple[tuple[str, list[dict[str, Any]], ExplainedClass], ...] = (
        ("False negatives", fn, "NORMAL"),
        ("False positives", fp, "PNEUMONIA"),
    )
    for title, errors, towards in galleries:
        parts.append(f"<h3>{title} ({len(errors)})</h3>")
        if not errors:
            parts.append("<p>none</p>")
        for row in errors[:limit]:
            caption = f"{Path(row['path']).name}: P = {row['probability']:.3f}"
            heat = None
            if model is not None and layer is not None:
                pixels = all_pixels[row["index"]][None]
                maps = gradcam_maps(model, pixels, predictor.intensity, layer, towards)
                heat, blank = maps.stretched, maps.blank(towards)
                caption += f" ({blank})" if blank else ""
            png = overlay_png(thumbnail(row["path"]), heat)  # the film's own proportions
            parts.append(figure_html(png, caption, "thumb"))
    return "".join(parts)


def _thumbnail(path: str) -> Image.Image:
    """The image at :data:`THUMBNAIL` px on its longer side, its proportions kept."""
    image = load_image(path, size_hint=THUMBNAIL)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def _samples_html(
    rows: list[dict[str, Any]], per_class: int, thumbnail: Callable[[str], Image.Image]
) -> str:
    parts = []
    for label, name in enumerate(CLASS_NAMES):
        chosen = [r for r in rows if r["label"] == label][:per_class]
        parts.append(f"<h3>{name}</h3>" + ("" if chosen else "<p>none</p>"))
        for row in chosen:
            buffer = io.BytesIO()
            thumbnail(row["path"]).convert("L").save(buffer, "PNG")
            parts.append(figure_html(buffer.getvalue(), Path(row["path"]).name, "thumb"))
    return "".join(parts)


def _saliency_html(
    predictor: Predictor,
    heat_layer: tuple[nn.Module | None, str],
    all_pixels: torch.Tensor,
    probs: np.ndarray,
) -> str:
    layer, why_none = heat_layer
    if predictor.model is None:
        return "<p>Not computed for an ensemble: run the report on each member run.</p>"
    if layer is None:
        return f"<p>Not computed: {html.escape(why_none)}.</p>"
    positive = np.flatnonzero(
        called_positive(probs, predictor.threshold)
    )  # their pneumonia maps have heat
    spread = np.linspace(0, len(positive) - 1, min(SANITY_IMAGES, len(positive)), dtype=int)
    picked = positive[np.unique(spread)]
    result = saliency_sanity(predictor.model, all_pixels[picked], predictor.intensity, layer)
    if not result.n:
        why = "no image of the split was called pneumonia" if not len(picked) else "no map had heat"
        return f"<p>Not computed: {why}.</p>"
    verdict = (
        '<p class="warn">Flagged: heat often lies on the image edge (possible shortcut learning: '
        "text markers, borders).</p>"
        if result.flagged
        else "<p>Not flagged: the heat mostly lies inside the image (a coarse map cannot rule "
        "out an edge shortcut: the border occlusion below asks the model itself).</p>"
    )
    rows = "".join(
        f"<tr><th>{name}</th><td>{format_metric(value)}</td></tr>"
        for name, value in result.figures().items()
    )
    note = (
        "<p>Share of the pneumonia logit's Grad-CAM heat in the central 60% × 60% box, the "
        "outer 10% border band and the four 10% × 10% corners, over up to 64 images of the "
        "split called pneumonia (an image called NORMAL has little or no evidence for "
        "pneumonia to map); maps without heat are counted apart (<code>empty_maps</code>), "
        "not in <code>n</code>.</p>"
    )
    return note + verdict + f"<table>{rows}</table>"


def _occlusion_html(predictor: Predictor, pixels: torch.Tensor, labels: np.ndarray) -> str:
    model = predictor.model
    if model is None:  # each member normalises, and so occludes, its own input
        return "<p>Not computed for an ensemble: run the report on each member run.</p>"
    if len(np.unique(labels)) < 2:
        return "<p>Not computed: the split holds one class only (ROC AUC needs both).</p>"
    normalised = partial(predict_pixels, model)  # the band is blacked out after normalisation
    result = border_occlusion(normalised, pixels, labels, predictor.intensity)
    verdict = (
        '<p class="warn">Flagged: the model needs the image border (possible shortcut '
        "learning: text markers, collimation edges).</p>"
        if result.flagged
        else "<p>Not flagged: the model keeps its ranking without the border.</p>"
    )
    rows = "".join(
        f"<tr><th>{name}</th><td>{format_metric(value)}</td></tr>"
        for name, value in (
            ("as they are", result.clean_roc_auc),
            (f"outer {result.band_px} px black", result.border_black_roc_auc),
            (f"only the outer {result.band_px} px kept", result.border_only_roc_auc),
        )
    )
    note = (
        f"<p>ROC AUC of the split scored again with its outer 10% band ({result.band_px} px at "
        "the model's input size) set to black, and with only that band kept, in the image the "
        "model sees (after intensity normalisation, so the chest keeps its grey levels). "
        "Flagged when "
        f"blacking the band out costs more than {AUC_LOSS_FLAG:g} of ROC AUC. The band alone is "
        "shown, not judged: it holds the edges of the lung fields, so a model reading the chest "
        "ranks above chance from it too; near 1.0 with a large loss above is a shortcut.</p>"
    )
    return note + verdict + f"<table><tr><th>images</th><th>ROC AUC</th></tr>{rows}</table>"


def _subtypes_html(subtypes: SubtypeMetrics, figures: dict[str, bytes]) -> str:
    rows = "".join(
        f"<tr><td>{name}</td>"
        + "".join(f"<td>{format_metric(v)}</td>" for v in (m.precision, m.recall, m.f1))
        + f"<td>{m.support}</td></tr>"
        for name, m in subtypes.per_class.items()
    )
    summary = (
        f"<p>Accuracy {format_metric(subtypes.accuracy)}; bacterial vs viral among true "
        f"pneumonia {format_metric(subtypes.bacterial_vs_viral_accuracy)}; macro ROC AUC "
        f"{format_metric(subtypes.macro_roc_auc)}.</p>"
    )
    table = (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
        f"</tr>{rows}</table>"
    )
    name = "confusion_matrix_3class.png"
    matrix = figure_html(figures[name], FIGURES[name])
    return summary + table + matrix


def _calibration_html(figures: dict[str, bytes], split: Split, metrics: EvaluationMetrics) -> str:
    """The reliability diagram, and where the calibration maps it draws (if any) come from:
    fitted on validation (so a validation report shows their in-sample ECE), not what
    predictions report; why there is no Platt map where it was refused."""
    diagram = figure_html(figures["reliability.png"], "reliability diagram")
    scored = {"temperature": metrics.temperature_scaled, "Platt": metrics.platt_scaled}
    maps = [name for name, scaled in scored.items() if scaled is not None]
    notes = []
    if maps:
        where = "these same images: their ECE here is in-sample" if split == "val" else "validation"
        notes.append(
            f"The {' and '.join(maps)} map{'s were' if len(maps) > 1 else ' was'} fitted on "
            f"{where}. A map that is excellent in-distribution can be badly wrong off it: "
            f"{PLATT_OFF_DISTRIBUTION}."
        )
    if metrics.platt_refused is not None:
        notes.append(f"No Platt map: {metrics.platt_refused}.")
    return diagram + "".join(f"<p>{html.escape(note)}</p>" for note in notes)


def build_report(
    run_dir: str | Path,
    data_dir: str | Path,
    split: Split = "val",
    out_file: str | Path | None = None,
    max_gallery: int = 6,
    overwrite: bool = False,
) -> Path:
    """Evaluate the run on ``split`` in memory and write one self-contained HTML report; its
    path. Nothing under ``RUN_DIR/eval/`` is written (an evaluation there, with ``--robustness``
    or not, is left as it is); a look at the test split is recorded in the held-out log, and
    a report of the :data:`CARD_SPLIT` refreshes ``MODEL_CARD.md`` with its intervals.

    ``out_file`` defaults to ``RUN_DIR/eval/<split>/report.html``; ``max_gallery`` caps the
    images per error gallery and the sample X-rays shown per class. An existing ``out_file`` is
    replaced only with ``overwrite`` (the default file is the run's evaluation output, rewritten).
    """
    run = RunDir(Path(run_dir))
    if out_file is not None:
        check_output(out_file, overwrite)
        check_apart(out_file, [data_dir])  # --overwrite replaced one of the split's X-rays
        check_suffix(Path(out_file), ".html", "a report is an .html file")  # not predictions.csv
    data_dir = Path(data_dir)
    predictor = Predictor.from_run(run.root, device=default_device())
    evaluation = compute_evaluation(predictor, data_dir, split)
    metrics, labels, probs = evaluation.metrics, evaluation.labels, evaluation.probs
    rows = [  # index: the image's row of evaluation.decoded.pixels
        {"path": str(s.path), "label": s.label, "probability": float(p), "index": i}
        for i, (s, p) in enumerate(zip(evaluation.decoded.samples, probs, strict=True))
    ]
    thumbnails = cache(_thumbnail)  # an image in both galleries is decoded once
    figures = {name: figure_png(fig) for name, fig in evaluation_figures(evaluation).items()}
    points = metrics.operating_points
    heat_layer = _heat_layer(predictor)
    sections = [
        ("metrics", "Metrics", _metrics_html(metrics, split)),
        ("curves", "ROC and precision-recall curves", _curves_html(labels, probs, figures)),
        ("confusion", "Confusion matrices at the operating points", _confusion_html(points)),
        ("calibration", "Calibration", _calibration_html(figures, split, metrics)),
        ("decision", "Decision curve", _decision_html(figures)),
        ("scores", "Score distributions", _scores_html(labels, probs, points)),
        *(
            [("subtypes", "Three classes", _subtypes_html(metrics.subtypes, figures))]
            if metrics.subtypes is not None
            else []
        ),
        (
            "errors",
            "Most confident errors",
            _errors_html(
                predictor, heat_layer, rows, evaluation.decoded.pixels, thumbnails, max_gallery
            ),
        ),
        ("samples", "Sample X-rays", _samples_html(rows, max(1, max_gallery // 2), thumbnails)),
        (
            "saliency",
            "Saliency sanity check",
            _saliency_html(predictor, heat_layer, evaluation.decoded.pixels, probs),
        ),
        (
            "occlusion",
            "Border occlusion",
            _occlusion_html(predictor, evaluation.decoded.pixels, labels),
        ),
    ]
    title = html.escape(f"{run.root.name} — {split} (n={metrics.n}, {metrics.model})")
    body = "".join(
        f'<section><h2 id="{sid}">{name}</h2>{content}</section>' for sid, name, content in sections
    )
    footer = (
        "<footer><p><strong>Research use only: not a medical device, not a diagnosis.</strong></p>"
        f"<p>run {html.escape(str(run.root.resolve()))} · split {split} · data "
        f"{html.escape(str(data_dir.resolve()))} · "
        f"{datetime.now(UTC).isoformat(timespec='seconds')} · pneumolab {pneumolab.__version__}</p></footer>"
    )
    out = Path(out_file) if out_file else run.eval_dir(split) / "report.html"
    with atomic_write(out, replace=overwrite or out_file is None) as f:
        f.write(
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body><h1>{title}</h1>{body}{footer}</body></html>\n"
        )
    record_look(evaluation)  # once the report exists: an interrupted one showed nothing
    if split == CARD_SPLIT:
        write_model_card(run, metrics)
    return out
