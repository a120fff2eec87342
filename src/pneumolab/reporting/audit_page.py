"""The site audit as files a person would rather look at: a PNG figure, one HTML page, CSV, JSON."""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumolab.data.imageio import DEFAULT_MAX_PIXELS
from pneumolab.evaluation.audit import SiteAudit, audit_folder, records_table
from pneumolab.evaluation.figures import figure_png
from pneumolab.evaluation.metrics import format_share
from pneumolab.files import staged_files
from pneumolab.outputs import check_apart, check_output, working_in
from pneumolab.reporting.html import png_data_uri
from pneumolab.run import RunDir


def _ood_axis_end(scores: np.ndarray, threshold: float | None) -> float:
    """Where the OOD histogram's axis ends: past the 99th percentile and past the threshold,
    so that a score drawn in the last bin (every larger one is) lies on the out-of-scope side
    of the threshold's line whenever it is out of scope."""
    top = float(np.quantile(scores, 0.99)) * 1.2
    return top if threshold is None else max(top, threshold * 1.15)


def audit_figure(audit: SiteAudit) -> bytes:
    """Four panels: OOD scores and probabilities against validation, why out of scope, sizes."""
    fig = Figure(figsize=(11, 7.5), dpi=110)
    axes = fig.subplots(2, 2)
    scores, val = audit.ood_scores, audit.val_ood_scores
    ax = axes[0, 0]
    if len(scores) and len(val):
        top = _ood_axis_end(np.r_[scores, val], audit.ood_threshold)
        bins = np.linspace(0, top, 40)
        ax.hist(np.clip(val, 0, top), bins, density=True, alpha=0.6, label="validation")
        ax.hist(np.clip(scores, 0, top), bins, density=True, alpha=0.6, label="this folder")
        if audit.ood_threshold is not None:
            ax.axvline(audit.ood_threshold, color="k", linestyle="--", label="threshold")
        ax.legend()
    ax.set(title="OOD score (right of the line: out of scope)", xlabel="score (larger: last bin)")
    ax = axes[0, 1]
    probs = [r.probability for r in audit.scored if r.in_scope]
    ax.hist(probs, np.linspace(0, 1, 21), color="tab:orange")
    ax.set(
        title="P(pneumonia) of in-scope images\npredicted pneumonia "
        f"{format_share(audit.pneumonia_rate, 0)} (validation {audit.val_pneumonia_rate:.0%})",
        xlabel="probability",
    )
    ax = axes[1, 0]
    counts = audit.reason_counts().most_common(8)
    if counts:
        ax.barh([k[:45] for k, _ in counts][::-1], [n for _, n in counts][::-1], color="tab:red")
    else:
        ax.text(0.5, 0.5, "no image out of scope", ha="center", va="center")
    share = format_share(audit.out_of_scope_share, 0)
    ax.set(title=f"out of scope: {share} of images — why", xlabel="images")
    ax = axes[1, 1]
    sizes = np.array([(r.width, r.height) for r in audit.scored if r.width], dtype=float)
    if len(sizes):
        ax.scatter(sizes[:, 0], sizes[:, 1], s=10, alpha=0.6)
    ax.set(title="image sizes (px)", xlabel="width", ylabel="height")
    fig.suptitle(audit.verdict, fontsize=11, fontweight="bold")
    return figure_png(fig)


def _rows(pairs: Sequence[tuple[str, object]]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
    )


def audit_html(audit: SiteAudit, figure_png: bytes) -> str:
    """One self-contained page: verdict, reasons, key figures, the figure, DICOM tags, images."""
    summary = audit.summary()
    key = [
        ("images (unreadable)", f"{summary.images} ({summary.unreadable})"),
        ("out of scope", format_share(summary.out_of_scope_share)),
        (
            "OOD score median (validation)",
            f"{summary.ood_score_median} ({summary.val_ood_score_median})",
        ),
        ("OOD threshold", summary.ood_threshold),
        (
            "predicted pneumonia: in-scope images (validation: all its images)",
            f"{format_share(summary.predicted_pneumonia_rate)} "
            f"({format_share(summary.val_predicted_pneumonia_rate)})",
        ),
        ("median size (px)", f"{summary.width_median} × {summary.height_median}"),
        ("bit depths", summary.bit_depths),
        ("median mean intensity (0–255, model input)", summary.mean_intensity_median),
    ]
    reasons = (
        "".join(f"<li>{html.escape(r)}</li>" for r in audit.verdict_reasons) or "<li>none</li>"
    )
    tags = _rows(
        [
            (tag, ", ".join(f"{v} ({n})" for v, n in values.items()))
            for tag, values in summary.dicom_tags.items()
        ]
    )
    flagged = _rows(
        [
            (os.path.relpath(r.path, audit.folder), "; ".join(r.reasons))
            for r in audit.scored
            if not r.in_scope
        ][:200]
    )
    image = png_data_uri(figure_png)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pneumolab site audit</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:.2rem .6rem;border-bottom:1px solid #ddd}}
.verdict{{font-size:1.3rem;font-weight:700;padding:.6rem;border:2px solid #8a5300;background:#fff4e0}}</style>
</head><body>
<h1>Site audit</h1>
<p>run {html.escape(audit.run)} · folder {html.escape(audit.folder)}</p>
<p class="verdict">{html.escape(audit.verdict)}</p>
<ul>{reasons}</ul>
<table>{_rows(key)}</table>
<img src="{image}" alt="OOD scores, probabilities, out-of-scope reasons and image sizes" style="max-width:100%">
<h2>DICOM tags</h2><table>{tags or "<tr><td>no DICOM files</td></tr>"}</table>
<h2>Out-of-scope images (first 200)</h2><table>{flagged or "<tr><td>none</td></tr>"}</table>
<p><small>pneumolab is a research tool, not a medical device. The verdict compares unlabelled
images with the run's validation split; it cannot tell whether the model is right there.</small></p>
</body></html>
"""


AUDIT_FILES = {
    "html": "audit.html",
    "figure": "audit.png",
    "json": "audit.json",
    "csv": "images.csv",
}
"""The audit's files (key -> name); the page is written last."""


def audit_files(
    out_dir: str | Path, audited: str | Path, overwrite: bool = False
) -> dict[str, Path]:
    """The audit's files in ``out_dir``; OutputError where one may not be written (an earlier
    audit's file is replaced only with ``overwrite``; never inside the ``audited`` folder,
    whose next audit would score them)."""
    check_apart(out_dir, [audited])
    files = {key: Path(out_dir) / name for key, name in AUDIT_FILES.items()}
    for path in files.values():
        check_output(path, overwrite)
    return files


def write_audit(audit: SiteAudit, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``audit.html``, ``audit.png``, ``audit.json`` and ``images.csv`` into ``out_dir``
    as one set (:func:`~pneumolab.files.staged_files`; see :func:`audit_files`)."""
    files = audit_files(out_dir, audit.folder, overwrite)
    with staged_files(out_dir, AUDIT_FILES.values(), last=AUDIT_FILES["html"]) as staging:
        staged = {key: staging / name for key, name in AUDIT_FILES.items()}
        figure = audit_figure(audit)
        staged["figure"].write_bytes(figure)
        # a site's file names need not be UTF-8: written back as the bytes they were
        staged["html"].write_text(audit_html(audit, figure), "utf-8", "surrogateescape")
        staged["json"].write_text(
            json.dumps(audit.summary().model_dump(), indent=2) + "\n", "utf-8"
        )
        rows = records_table(audit)
        with staged["csv"].open("w", encoding="utf-8", newline="", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
            writer.writeheader()
            writer.writerows(rows)
    return files


def audit_into(
    run_dir: str | Path,
    folder: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[SiteAudit, dict[str, Path]]:
    """Audit ``folder`` with the run (:func:`~pneumolab.evaluation.audit.audit_folder`) and write
    its files into ``out_dir`` (:func:`write_audit`): a missing run and files that may not be
    written are refused before any image is scored, and ``out_dir`` is locked meanwhile (a
    second audit writing it is refused, not left to replace the first's files)."""
    RunDir(Path(run_dir)).read_meta()  # a missing run named as such, before a folder is made
    audit_files(out_dir, folder, overwrite)
    with working_in(Path(out_dir), "auditing"):
        audit = audit_folder(run_dir, folder, batch_size, max_pixels)
        return audit, write_audit(audit, out_dir, overwrite)
