"""Site audit: is a folder of a new site's unlabelled images like what the model was validated on?

Every image goes through the predictor (scope gate included); the folder is then compared with
the run's validation split: share out of scope and why, OOD-score distribution, predicted-
pneumonia rate, plus image sizes, bit depths, intensities and a DICOM tag summary. A verdict
with its reasons says whether to trust the model there; nothing here needs labels.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageMode
from scipy.stats import ks_2samp

from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.formats import IMAGE_SUFFIXES
from pneumolab.data.imageio import (
    DEFAULT_MAX_PIXELS,
    PNG_PALETTE,
    is_dicom_file,
    png_depth_and_colour,
    upright_size,
)
from pneumolab.errors import DataLayoutError, ImageLoadError
from pneumolab.evaluation.metrics import called_positive
from pneumolab.files import unreadable_folder
from pneumolab.inference.inputs import expand_paths
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.results_file import list_cell
from pneumolab.results import AuditSummary
from pneumolab.run import RunDir, read_predictions

MAX_OUT_OF_SCOPE = 0.02
"""Share out of scope above which the verdict is a caution (validation: <= 1% by design)."""
UNUSABLE_OUT_OF_SCOPE = 0.5
"""Share out of scope above which the folder is called unusable."""
OOD_REFERENCE_QUANTILE = 0.95
MAX_ABOVE_REFERENCE = 0.25
"""Share of in-scope images above validation's 95th OOD percentile (expected: 5%) that cautions."""
MAX_KS = 0.3
"""Kolmogorov-Smirnov distance between the folder's and validation's OOD scores that cautions."""
MAX_RATE_DIFFERENCE = 0.2
"""|predicted-pneumonia rate − validation's| that cautions (prevalence may differ; say so)."""
FEW_IMAGES = 20
MAX_UNREADABLE = 0.02
"""Share of unreadable files above which the verdict is a caution (a site's export may be broken)."""
MAX_WARNED = 0.1
"""Share of images with scope warnings (adult patients...) above which the verdict cautions."""


@dataclass
class ImageRecord:
    """One audited file: what it is and what the predictor said (``error`` when unreadable)."""

    path: str
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    mean_intensity: float | None = None
    std_intensity: float | None = None
    probability: float | None = None
    label: str | None = None
    in_scope: bool | None = None
    ood_score: float | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dicom_tags: dict[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass
class SiteAudit:
    """The folder against the run's validation split, with a verdict and its reasons."""

    run: str
    folder: str
    records: list[ImageRecord] = field(repr=False)  # one per image: thousands in an archive
    val_ood_scores: np.ndarray = field(repr=False)
    ood_threshold: float | None
    val_pneumonia_rate: float
    verdict: str = ""
    verdict_reasons: list[str] = field(default_factory=list)

    @property
    def scored(self) -> list[ImageRecord]:
        """The images that could be read and scored (unreadable files left out)."""
        return [r for r in self.records if not r.error]

    @property
    def out_of_scope_share(self) -> float | None:
        """Share of the scored images the input-scope gate flagged; None where none was read."""
        return float(np.mean([not r.in_scope for r in self.scored])) if self.scored else None

    @property
    def ood_scores(self) -> np.ndarray:
        """The OOD scores of the scored images that have one."""
        return np.array([r.ood_score for r in self.scored if r.ood_score is not None])

    @property
    def pneumonia_rate(self) -> float | None:
        """Share of in-scope images at or above the decision threshold; None where none is in
        scope."""
        label = [r.label == CLASS_NAMES[1] for r in self.scored if r.in_scope]
        return float(np.mean(label)) if label else None

    def reason_counts(self) -> Counter[str]:
        """How often each kind of out-of-scope reason occurred."""
        return Counter(reason_kind(reason) for r in self.scored for reason in r.reasons)

    def warning_counts(self) -> Counter[str]:
        """How often each kind of scope warning (outside the training population, not out of
        scope: an adult patient's age...) occurred."""
        return Counter(warning_kind(warning) for r in self.scored for warning in r.warnings)

    def tag_summary(self) -> dict[str, Counter[str]]:
        """For each DICOM tag read, how many images had each value."""
        summary: dict[str, Counter[str]] = {}
        for record in self.scored:
            for tag, value in record.dicom_tags.items():
                summary.setdefault(tag, Counter())[value] += 1
        return summary

    def summary(self) -> AuditSummary:
        """The figures of the audit (``audit.json``)."""
        sizes = np.array([(r.width, r.height) for r in self.scored if r.width], dtype=float)
        return AuditSummary(
            run=self.run,
            folder=self.folder,
            verdict=self.verdict,
            verdict_reasons=self.verdict_reasons,
            images=len(self.records),
            unreadable=len(self.records) - len(self.scored),
            out_of_scope_share=self.out_of_scope_share,
            out_of_scope_reasons=dict(self.reason_counts().most_common()),
            ood_threshold=self.ood_threshold,
            ood_score_median=_median(self.ood_scores),
            val_ood_score_median=_median(self.val_ood_scores),
            predicted_pneumonia_rate=self.pneumonia_rate,
            val_predicted_pneumonia_rate=self.val_pneumonia_rate,
            width_median=_median(sizes[:, 0]) if len(sizes) else None,
            height_median=_median(sizes[:, 1]) if len(sizes) else None,
            bit_depths=dict(Counter(r.bit_depth for r in self.scored)),
            mean_intensity_median=_median(
                np.array([r.mean_intensity for r in self.scored], dtype=float)
            ),
            dicom_tags={tag: dict(c.most_common()) for tag, c in self.tag_summary().items()},
        )


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def reason_kind(reason: str) -> str:
    """A reason without its particulars: ``image too small (1x1 px ...)`` → ``image too small``."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def warning_kind(warning: str) -> str:
    """A warning without its numbers and aside: ``patient age 45 years: an adult outside the
    intended use (...)`` → ``patient age N years: an adult outside the intended use``."""
    return re.sub(r"\d+(?:\.\d+)?", "N", warning.split(" (", 1)[0])


def _file_facts(path: Path, record: ImageRecord, max_pixels: int) -> None:
    """Size (upright, as the model sees it), bit depth and DICOM tags from the file's header
    (no decoding)."""
    if is_dicom_file(path):
        from pneumolab.scope.dicom_header import dicom_file_checks

        record.dicom_tags = tags = dicom_file_checks(path, max_pixels).tags
        record.width, record.height = _int(tags.get("Columns")), _int(tags.get("Rows"))
        record.bit_depth = _int(tags.get("BitsStored"))
        return
    with Image.open(path) as image:
        record.width, record.height = upright_size(image)
        record.bit_depth = bits_per_sample(image.mode)
        png = png_depth_and_colour(path) if image.format == "PNG" else None
    if png is not None and png[1] != PNG_PALETTE:  # Pillow opens 16-bit colour PNGs as 8-bit
        record.bit_depth = png[0]


def bits_per_sample(mode: str) -> int | None:
    """Bits per sample of a Pillow image mode (1 for bilevel; CMYK, YCbCr and the 16-bit
    modes too), from Pillow's own mode table; None for a mode it does not know."""
    try:
        typestr = ImageMode.getmode(mode).typestr
    except KeyError:
        return None
    return 1 if typestr == "|b1" else int(typestr[2:]) * 8


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _record(path: Path, outcome: Any, pixels: np.ndarray | None, max_pixels: int) -> ImageRecord:
    record = ImageRecord(str(path))
    if isinstance(outcome, ImageLoadError):
        record.error = str(outcome)
        return record
    values = np.asarray(pixels, dtype=np.float32)
    record.mean_intensity, record.std_intensity = float(values.mean()), float(values.std())
    record.probability, record.label = outcome.probability, outcome.label
    record.in_scope, record.ood_score = outcome.in_scope, outcome.ood_score
    record.reasons, record.warnings = list(outcome.reasons), list(outcome.warnings)
    _file_facts(path, record, max_pixels)
    return record


def _most_common(kinds: Counter[str]) -> str:
    """The three most frequent kinds with their counts, as a verdict's reason lists them."""
    return ", ".join(f"{kind} ({n})" for kind, n in kinds.most_common(3))


def judge(audit: SiteAudit) -> None:
    """Set the audit's verdict and reasons from its figures (constants above)."""
    share = audit.out_of_scope_share
    if share is None:
        audit.verdict = "NO VERDICT: none of the images could be read"
        audit.verdict_reasons = [
            f"{len(audit.records)} files, every one unreadable (images.csv: error)"
        ]
        return
    reasons = []
    if audit.ood_threshold is None:  # the check that sees most shifts did not run: never OK
        reasons.append(
            f"the run has no current OOD model: image content was not compared with the training "
            f"X-rays (`pneumolab fit-ood {audit.run} --data DATA_DIR` fits one)"
        )
    if share > MAX_OUT_OF_SCOPE:
        top = _most_common(audit.reason_counts())
        reasons.append(f"{share:.0%} of the images are out of scope (validation: ≤ 1%): {top}")
    in_scope = np.array(
        [r.ood_score for r in audit.scored if r.in_scope and r.ood_score is not None]
    )
    if len(in_scope) and len(audit.val_ood_scores):
        reference = np.quantile(audit.val_ood_scores, OOD_REFERENCE_QUANTILE)
        above = float(np.mean(in_scope > reference))
        distance = float(ks_2samp(in_scope, audit.val_ood_scores).statistic)
        seen = []  # only what tripped a limit is evidence; the other figure is context
        if above > MAX_ABOVE_REFERENCE:
            seen.append(f"{above:.0%} score above validation's 95th OOD percentile (5% expected)")
        if distance > MAX_KS:
            seen.append(
                f"their OOD scores are spread unlike validation's (KS distance {distance:.2f} > "
                f"{MAX_KS:g}; {above:.0%} above validation's 95th percentile, 5% expected)"
                if above <= MAX_ABOVE_REFERENCE
                else f"KS distance {distance:.2f} > {MAX_KS:g}"
            )
        if seen:
            reasons.append("in-scope images look unlike validation: " + ", ".join(seen))
    rate = audit.pneumonia_rate
    if rate is not None and abs(rate - audit.val_pneumonia_rate) > MAX_RATE_DIFFERENCE:
        reasons.append(
            f"predicted-pneumonia rate {rate:.0%} vs {audit.val_pneumonia_rate:.0%} "
            "on validation (a different prevalence can explain it; a shift can too)"
        )
    unreadable = 1 - len(audit.scored) / len(audit.records)
    if unreadable > MAX_UNREADABLE:
        reasons.append(
            f"{unreadable:.0%} of the files could not be read (images.csv: error): the site's "
            "export may be broken, and the figures here describe only the rest"
        )
    warned = float(np.mean([bool(r.warnings) for r in audit.scored]))
    if warned > MAX_WARNED:
        top = _most_common(audit.warning_counts())
        reasons.append(
            f"{warned:.0%} of the images carry scope warnings (outside the children the model "
            f"was trained on): {top}"
        )
    if len(audit.scored) < FEW_IMAGES:
        reasons.append(f"only {len(audit.scored)} readable images: every figure here is rough")
    if share > UNUSABLE_OUT_OF_SCOPE:
        audit.verdict = "DO NOT USE: most of these images are outside what the model was trained on"
    elif reasons:
        audit.verdict = "CAUTION: this site differs from the validation data; check before use"
    else:
        audit.verdict = "OK: no shift detected against the validation data"
    audit.verdict_reasons = reasons


def audit_folder(
    run_dir: str | Path,
    folder: str | Path,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SiteAudit:
    """Audit every image under ``folder`` with the run in ``run_dir`` (see the module doc);
    an image over ``max_pixels`` is an unreadable one, named as such."""
    folder = Path(folder)
    problem = unreadable_folder(folder)
    if problem is None and not folder.is_dir():
        problem = "not a folder" if folder.exists() else "folder not found"
    if problem is not None:
        raise DataLayoutError(f"{folder}: {problem}; audit reads a folder of a site's images")
    # listed once, as absolute paths (as predict records them: a name never starts a cell
    # of images.csv with a spreadsheet formula's "=" or "@")
    listed = folder.absolute()
    images = expand_paths([listed])
    if images == [listed]:  # a folder without images is kept as itself
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataLayoutError(f"{folder}: no images ({suffixes}) in it, at any depth")
    run = RunDir(Path(run_dir))
    predictor = Predictor.from_run(run.root, max_pixels=max_pixels)
    records = [
        _record(path, outcome, pixels, max_pixels)
        for path, outcome, pixels in predictor.score_files(images, batch_size)
    ]
    val_probs = np.array([row.probability for row in read_predictions(run.val_predictions)])
    audit = SiteAudit(
        run=str(run.root),
        folder=str(folder),
        records=records,
        val_ood_scores=predictor.ood.clean_val_scores if predictor.ood else np.zeros(0),
        ood_threshold=predictor.ood.threshold if predictor.ood else None,
        val_pneumonia_rate=float(np.mean(called_positive(val_probs, predictor.threshold))),
    )
    judge(audit)
    return audit


def records_table(audit: SiteAudit) -> list[dict[str, Any]]:
    """One flat row per image (lists joined: :func:`list_cell`), for CSV."""
    return [
        {
            k: list_cell(v) if isinstance(v, list) else v
            for k, v in asdict(r).items()
            if k != "dicom_tags"
        }
        for r in audit.records
    ]
