"""MODEL_CARD.md of a run: what the model is, what it is for, how it was trained and how well it
did on validation, and where it is known to fail. Written from meta.json, config.yaml, split.csv
and, when present, ``eval/val/metrics.json`` (for the patient-level 95% intervals)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import shlex
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from pneumolab.choices import Split
from pneumolab.config import load_yaml
from pneumolab.data.classes import CLASS_NAMES
from pneumolab.evaluation.bootstrap import INTERVAL_METHOD, interval_text, left_out_note
from pneumolab.evaluation.calibration import at_bound
from pneumolab.evaluation.metrics import format_metric
from pneumolab.files import write_text_atomically
from pneumolab.results import BinaryMetrics, EvaluationMetrics
from pneumolab.run import RunDir
from pneumolab.run_meta import Compute, DistributedTraining, RunMeta
from pneumolab.text import markdown_cell

CARD_NAME = "MODEL_CARD.md"
CARD_SPLIT: Split = "val"
"""The split whose evaluation or report rewrites the model card: it states validation figures."""
CARD_METRICS = ("roc_auc", "sensitivity", "specificity", "precision", "npv", "accuracy", "f1")
LIMITATIONS = (
    "The validation split is carved from the dataset's `train/` folder; it is much easier than "
    "the official `test/` split, so validation figures overstate performance elsewhere.",
    "Models trained on this dataset tend to call normal images of the official test split "
    "pneumonia. Measured outside the development loop on 2026-12-01 (`pneumolab evaluate RUN "
    "--data ROOT --split test --json`), the default recipe of then (`make demo`: MobileNetV2, "
    "160 px, 8 epochs, global equalisation, `standard` augmentation) had on the held-out test "
    "split accuracy 0.938, sensitivity 0.985, specificity 0.859 (33 of 234 normal children "
    "called pneumonia) and ROC AUC 0.987, against a validation ROC AUC of about 0.998.",
    "Single-site pediatric data (Guangzhou Women and Children's Medical Center, ages 1-5): "
    "adults, other hospitals, scanners and projections (lateral, AP portable) are untested.",
    "Inputs are grayscale 8-bit images, resized to a square without keeping the aspect ratio; "
    "DICOM windowing and bit depth beyond 8 bits are lost.",
    "The default threshold is chosen on validation at a target sensitivity: the specificity "
    "it gives elsewhere is whatever it turns out to be, and it may need re-choosing per site.",
    "No localisation; Grad-CAM maps show where evidence is, not why, and may highlight text "
    "markers or borders (shortcut learning).",
)
log = logging.getLogger(__name__)

BINARY_LIMITATION = "No bacterial/viral distinction (`task: three_class` trains one)."
ENSEMBLE_LIMITATION = (
    "No bacterial/viral distinction: an ensemble averages its members' P(pneumonia); the "
    "subtype outputs of three-class members are not combined."
)

CI_NOTE = (
    "95% CI: percentile bootstrap over patients; for accuracy, sensitivity, specificity, PPV "
    "and NPV at least the exact (Clopper-Pearson) interval over their patients."
)


def _subtype_limitation(meta: RunMeta) -> str:
    """Why a binary run names no subtype: its task, or (an ensemble) its averaging."""
    return ENSEMBLE_LIMITATION if meta.is_ensemble else BINARY_LIMITATION


def _split_counts(rows: list[dict[str, str]]) -> dict[str, Counter[str]]:
    """Images per class on each side of the split."""
    counts: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    for row in rows:
        counts[row["subset"]][CLASS_NAMES[int(row["label"])]] += 1
    return counts


PLATT_OFF_DISTRIBUTION = (
    "on the held-out test split (the default recipe of 2026-12-01, measured outside the loop) "
    "Platt scaling raised ECE from 0.026 (raw) to 0.143 (the Platt fit of before 2026-12-07, on "
    "0/1 targets; the smoothed targets' map of today is gentler, its held-out ECE unmeasured), "
    "so predictions report the raw probability"
)
"""What a validation-fitted calibration map did off its distribution: the model card and the
report say it wherever the map's validation ECE is shown."""


def _calibration_lines(meta: RunMeta) -> list[str]:
    platt, temperature = meta.platt, meta.temperature
    if platt is None and temperature is None and meta.platt_refused is None:
        return []
    lines = ["", "Calibration maps fitted on validation (they change no ranking and no threshold):"]
    if temperature is not None:
        bound = " (the search's bound: the fit wanted further)" if at_bound(temperature) else ""
        lines.append(f"- temperature: T = {temperature:.3f}{bound}")
    if platt is not None:
        lines.append(
            f"- Platt: sigmoid({platt.slope:.3f} · logit(p) + {platt.intercept:.3f}) — "
            "removes the shift class-weighted training puts on the raw probability on "
            f"validation only: {PLATT_OFF_DISTRIBUTION}"
        )
    if meta.platt_refused is not None:
        lines.append(f"- Platt: none — {meta.platt_refused}")
    return lines


def _subtypes_section(meta: RunMeta) -> list[str]:
    subtypes = meta.val_subtype_metrics
    if subtypes is None:
        return []
    lines = [
        "## Three classes (validation)",
        "",
        f"Accuracy {format_metric(subtypes.accuracy)}; bacterial vs viral among true pneumonia "
        f"{format_metric(subtypes.bacterial_vs_viral_accuracy)}. An image is called NORMAL "
        "where P(pneumonia) is under the threshold, else the more likely subtype; the → columns "
        "are the confusion matrix (rows: truth).",
        "",
        "| class | precision | recall | F1 | support | "
        + " | ".join(f"→ {name}" for name in subtypes.classes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(subtypes.classes),
    ]
    rows = zip(subtypes.per_class.items(), subtypes.confusion_matrix, strict=True)
    for (name, m), called in rows:
        values = " | ".join(format_metric(v) for v in (m.precision, m.recall, m.f1))
        lines.append(f"| {name} | {values} | {m.support} | {' | '.join(map(str, called))} |")
    return [*lines, ""]


def _split_seed(settings: dict[str, object]) -> object:
    """The seed that drew the split (``TrainConfig.data_seed``: ``split_seed``, else ``seed``)."""
    split_seed = settings.get("split_seed")
    return settings.get("seed", "—") if split_seed is None else split_seed


def _left_out(paths: list[str], why: str) -> list[str]:
    """A bold line naming how many images ``why`` (up to ten of them), or nothing."""
    if not paths:
        return []
    shown = ", ".join(markdown_cell(path) for path in paths[:10])
    more = " ..." if len(paths) > 10 else ""
    return [f"**{len(paths)} image(s) {why}**: {shown}{more}", ""]


def _metrics_section(
    run: RunDir, meta: RunMeta, evaluated: EvaluationMetrics | None = None
) -> list[str]:
    stored = None if evaluated is not None else _stored_val_evaluation(run)
    scored = evaluated if evaluated is not None else stored  # the figures with intervals
    if evaluated is not None:
        note = f"From an evaluation on the validation split{_scored_by(evaluated)}; {CI_NOTE}"
    elif stored is not None:
        note = f"From `eval/val/metrics.json`{_scored_by(stored)}; " + _stored_intervals(stored)
    else:
        note = (
            "From training (meta.json), **without confidence intervals**: "
            "`pneumolab evaluate RUN_DIR --data DATA_DIR` (validation, without `--tta`) or "
            "`pneumolab report RUN_DIR --data DATA_DIR` rewrites this card with them."
        )
    metrics: BinaryMetrics = meta.val_metrics if scored is None else scored
    skipped = getattr(metrics, "skipped", [])  # an evaluation's; meta.json's figures name none
    why = f"of the split could not be read and are left out of these figures (n = {metrics.n})"
    lines = [note, "", *_left_out(skipped, why), "| metric | value | 95% CI |", "|---|---|---|"]
    for key in CARD_METRICS:
        ci = "" if scored is None else interval_text(scored, key)
        lines.append(f"| {key} | {format_metric(getattr(metrics, key))} | {ci} |")
    lines.append(f"| confusion [[tn, fp], [fn, tp]] | {metrics.confusion_matrix} | |")
    left_out = "" if scored is None else left_out_note(scored, CARD_METRICS)
    return [*lines, *(["", left_out] if left_out else [])]


def _stored_intervals(stored: EvaluationMetrics) -> str:
    """What a stored evaluation's intervals are: the current method's, or an earlier one's."""
    rescore = "`pneumolab evaluate RUN_DIR --data DATA_DIR` rescores them."
    if stored.interval_method != INTERVAL_METHOD:
        return (
            "its 95% CIs by an earlier version's method (percentile bootstrap alone: too narrow "
            f"near 0 or 1); {rescore}"
        )
    if stored.ci95_resamples is None:
        return (
            "its 95% CIs written before the resamples behind them were counted (an interval may "
            f"rest on fewer than drawn, unsaid); {rescore}"
        )
    return CI_NOTE


def _shell_path(path: Path) -> str:
    """``path`` as a shell word for a command to copy (quoted: a folder name can hold ``|`` or
    ``$(...)``); ``RUN_DIR`` where no quoting keeps it on one line of a code block."""
    text = str(path)
    return "RUN_DIR" if set(text) & set("\n\r`") else shlex.quote(text)


def _scored_by(metrics: EvaluationMetrics) -> str:
    """Which exported model scored ``metrics``, where another one than the run's own weights did
    (an INT8 or OpenVINO export's figures differ slightly from the model's)."""
    backend = metrics.backend
    return "" if backend == "torch" else f", scored by the `{backend}` export"


def _stored_val_evaluation(run: RunDir) -> EvaluationMetrics | None:
    """``eval/val/metrics.json`` where it holds figures at the stored threshold; None where there
    is none, where it was scored with test-time augmentation (at the TTA threshold, which the card
    does not state), or where it cannot be read (with a warning)."""
    metrics_file = run.eval_dir("val") / "metrics.json"
    if not metrics_file.is_file():
        return None
    try:
        metrics = EvaluationMetrics.model_validate_json(metrics_file.read_bytes())
    except OSError as exc:
        reason = str(exc)
    except ValidationError as exc:  # broken JSON too
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        reason = f"{where}: {first['msg']}" if where else first["msg"]
    else:
        return None if metrics.tta else metrics
    log.warning(
        "%s: not readable as an evaluation's metrics (%s); the model card uses meta.json's figures",
        metrics_file,
        reason,
    )
    return None


def _operating_points(meta: RunMeta) -> list[str]:
    lines = [
        f"- **Threshold: {meta.threshold:.4f}** (default operating point "
        f"`{meta.default_operating_point}`): {markdown_cell(meta.threshold_rule)}.",
    ]
    for name, point in meta.operating_points.items():
        m = point.val_metrics
        sensitivity, specificity = (None, None) if m is None else (m.sensitivity, m.specificity)
        lines.append(
            f"- `{name}`: threshold {point.threshold:.4f}, validation sensitivity "
            f"{format_metric(sensitivity)}, specificity {format_metric(specificity)} — "
            f"{markdown_cell(point.provenance)}"  # names the run's folder: any characters
        )
    if meta.tta_threshold is not None:
        lines.append(
            f"- With test-time augmentation (`--tta`): threshold {meta.tta_threshold:.4f}, the "
            "same rule on the validation scores averaged over the test-time views."
        )
    return lines


def _distributed_lines(distributed: DistributedTraining | None) -> list[str]:
    if distributed is None:
        return []
    return [
        f"- Trained by {distributed.processes} process(es) ({distributed.strategy}, "
        f"{distributed.accelerator}): effective batch {distributed.effective_batch_size}, "
        f"learning rate {distributed.lr:.3g} (`lr_scaling: {distributed.lr_scaling}`)"
    ]


def _border_lines(border_fade: float | None) -> list[str]:
    if border_fade == 0:
        return []
    if border_fade is None:
        return ["- Border suppression: each member its own"]
    return [f"- Border suppression: the outer {border_fade:.0%} of each side fades to black"]


def _compute_lines(compute: Compute | None) -> list[str]:
    if compute is None:
        return []
    lines = [
        f"- Trained in `{compute.precision}` precision on {compute.device}, "
        f"{compute.threads} CPU thread(s) (another precision gives other weights)"
    ]
    lines += [
        f"- Resumed: earlier epochs trained in `{leg.precision}` on {leg.device} (the weights "
        "are of no single precision and device)"
        for leg in compute.earlier_legs
    ]
    return lines


def _training_lines(meta: RunMeta) -> list[str]:
    """Best epoch and training time (an ensemble trained nothing itself: its members did)."""
    if meta.is_ensemble:
        return ["- Training: each member's (see its model card)"]
    seconds = "—" if meta.train_seconds is None else f"{meta.train_seconds:.0f} s"
    best = "—" if meta.best_epoch is None else meta.best_epoch + 1  # as training printed it
    return [f"- Best epoch: {best}; training time {seconds}"]


def model_card_text(run: RunDir, val_evaluation: EvaluationMetrics | None = None) -> str:
    """The Markdown text of the run's model card; validation metrics with intervals from
    ``val_evaluation`` (an evaluation's metrics), else from ``eval/val/metrics.json``, else
    from meta.json without intervals."""
    meta = run.read_meta()
    config = load_yaml(run.config) if run.config.is_file() else {}
    carved = run.member_runs()[0] if meta.is_ensemble else run  # its members share one split
    split_config = load_yaml(carved.config) if carved.config.is_file() else {}
    split_rows = run.split_rows() if run.split.is_file() else []
    counts = _split_counts(split_rows)
    patients = len({row["patient"] for row in split_rows})
    prep = meta.preprocessing
    sides = [
        f"| {side} | {counts[side][CLASS_NAMES[0]]} | {counts[side][CLASS_NAMES[1]]} |"
        for side in ("train", "val")
    ]
    lines = [
        f"# Model card: {markdown_cell(run.root.name)}",
        "",
        "## Model details",
        "",
        f"- Architecture: `{meta.model}` (pretrained: {config.get('pretrained', '—')}, "
        f"strategy: {meta.strategy})",
        *(
            f"- Ensemble member: {markdown_cell(name)} ({member.read_meta().image_size} px)"
            for name, member in zip(meta.members, run.member_runs(), strict=True)
        ),
        f"- Input size: {meta.image_size} × {meta.image_size} px, 1 channel",
        f"- Preprocessing: {prep.color}; resize {prep.resize}; scale {prep.scale}",
        f"- Intensity normalisation: `{meta.intensity or 'each member its own'}`",
        *_border_lines(prep.border_fade),
        *_training_lines(meta),
        *_distributed_lines(meta.distributed),
        *_compute_lines(meta.compute),
        f"- Versions: pneumolab {meta.pneumolab_version}, torch {meta.torch_version}"
        + "".join(f", {name} {v}" for name, v in meta.library_versions.items()),
        "",
        "## Intended use",
        "",
        "Research and teaching on pediatric frontal chest X-rays: NORMAL vs PNEUMONIA"
        + (" (and bacterial vs viral pneumonia)." if meta.task == "three_class" else "."),
        "**This is not a medical device and must not be used for diagnosis** or any clinical "
        "decision.",
        "",
        "## Training data",
        "",
        "Kermany et al. 2018 pediatric chest X-rays (`train/` folder). Validation is a "
        f"patient-grouped split carved from it ({patients} patient groups in all, no child on "
        f"both sides), seed {_split_seed(split_config)}, validation fraction "
        f"{split_config.get('val_fraction', '—')}.",
        "",
        f"| side | {CLASS_NAMES[0]} | {CLASS_NAMES[1]} |",
        "|---|---|---|",
        *sides,
        "",
        *_left_out(
            meta.unreadable,
            "of these could not be read when the model was trained and were left out of "
            "training and validation",
        ),
        "## Validation metrics",
        "",
        *_metrics_section(run, meta, val_evaluation),
        "",
        *_subtypes_section(meta),
        "## Operating point",
        "",
        *_operating_points(meta),
        *_calibration_lines(meta),
        "",
        "## Limitations and failure modes",
        "",
        *(f"- {item}" for item in LIMITATIONS),
        *([f"- {_subtype_limitation(meta)}"] if meta.task == "binary" else []),
        "",
        "## How to evaluate on the held-out test split",
        "",
        "```bash",
        f"pneumolab evaluate {_shell_path(run.root.absolute())} --data DATA_DIR --split test --json",
        f"pneumolab report {_shell_path(run.root.absolute())} --data DATA_DIR --split test "
        "--out report-test.html",
        "```",
        "",
        "Every test evaluation is logged in `test_evaluations.jsonl`: look at the test split "
        "once, after every choice has been made on validation.",
        "",
    ]
    return "\n".join(lines)


CARD_MARK = "<!-- pneumolab model card; sha256 of the text above: "
"""The card's last line begins so: the digest tells a card pneumolab wrote from an edited one."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _edited(card: Path) -> bool:
    """Whether ``card`` differs from what pneumolab last wrote there (a card without the mark,
    written before 2026-12-07 or with its last line removed, counts as edited)."""
    text = card.read_text(encoding="utf-8", errors="replace")  # as written, whatever the locale
    body, found, mark = text.rpartition(f"\n{CARD_MARK}")
    return not found or mark != f"{_digest(body)} -->\n"  # a line added after the mark too


def _keep_edited(card: Path) -> None:
    """Copy an edited ``card`` to ``MODEL_CARD.edited-<UTC time>.md`` beside it, with a warning:
    a site's notes (validation, sign-off) were lost when a report rewrote the card."""
    if not card.is_file() or not _edited(card):
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = card.with_name(f"MODEL_CARD.edited-{stamp}.md")
    for number in itertools.count(2):
        if not kept.exists():
            break
        kept = card.with_name(f"MODEL_CARD.edited-{stamp}-{number}.md")
    shutil.copy2(card, kept)
    log.warning(
        "%s: not as pneumolab last wrote it (edited, or written before 2026-12-07): that "
        "version is kept as %s",
        card,
        kept.name,
    )


def write_model_card(run: RunDir, val_evaluation: EvaluationMetrics | None = None) -> Path:
    """Write ``RUN_DIR/MODEL_CARD.md`` (see :func:`model_card_text`), its last line a mark of
    its digest, and return its path; a card edited since pneumolab wrote it is kept in a copy
    first (:func:`_keep_edited`)."""
    card = run.root / CARD_NAME
    _keep_edited(card)
    text = model_card_text(run, val_evaluation)
    return write_text_atomically(card, f"{text}\n{CARD_MARK}{_digest(text)} -->\n")
