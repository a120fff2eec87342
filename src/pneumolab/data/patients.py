"""Patient IDs (a DICOM file's PatientID tag, else the Kermany file-name schemes) and the
patient-grouped validation split."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumolab.config import MAX_VAL_FRACTION
from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.formats import IMAGE_SUFFIXES
from pneumolab.data.imageio import is_dicom_file
from pneumolab.errors import DataLayoutError
from pneumolab.files import sha256_of

if TYPE_CHECKING:
    from pneumolab.data.layout import Sample

log = logging.getLogger(__name__)

# `personNNN_bacteria_K` / `personNNN_virus_K` (bacteria and virus images of one ID are grouped:
# the names do not settle whether they are the same child), `IM-XXXX-YYYY`, `NORMAL2-IM-XXXX-YYYY`
# (the Kaggle copy); `NORMAL-N-K`, `BACTERIA-N-K`, `VIRUS-N-K` (Mendeley's version 2, grouped by N).
_PATIENT_PATTERNS = (
    (re.compile(r"^(person\d+)_", re.IGNORECASE), ""),
    (re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE), ""),
    (re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(\d+)-", re.IGNORECASE), "id-"),
)
PATIENT_SCHEMES = (
    "a DICOM PatientID tag; names personN_..., IM-N-..., NORMAL2-IM-N-..., "
    "NORMAL|BACTERIA|VIRUS-N-..."
)
"""Where a patient ID is read from, in words."""


def _named_patient(file_name: str) -> str | None:
    """The patient ID a known naming scheme gives ``file_name``; None for any other name."""
    for pattern, prefix in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return prefix + match.group(1).lower()
    return None


DICOM_PATIENT_PREFIX = "dicom:"
"""Marks a patient ID read from a DICOM file's PatientID tag (names are never read for those)."""


def _dicom_patient(path: Path) -> str | None:
    """A DICOM file's PatientID tag, prefixed; None for another format, a blank or missing tag,
    or a header that cannot be read (what decodes the file reports it by name)."""
    try:
        if not is_dicom_file(path):
            return None
        from pneumolab.data.dicom import read_dicom  # pydicom only for DICOM files

        tag = str(read_dicom(path, stop_before_pixels=True).get("PatientID") or "").strip()
    except Exception:  # pydicom raises many kinds for a broken header
        return None
    return DICOM_PATIENT_PREFIX + tag if tag else None


def _from_dicom_tag(patient: str) -> bool:
    """Whether a patient ID was read from a DICOM PatientID tag (:func:`_dicom_patient`)."""
    return patient.startswith(DICOM_PATIENT_PREFIX)


def patient_of(path: Path) -> str:
    """The patient of an image file: its DICOM PatientID tag where it has one, else
    :func:`patient_id` of its name."""
    return _dicom_patient(Path(path)) or patient_id(Path(path).name)


def patient_id(file_name: str) -> str:
    """Patient ID parsed from a file name; an unrecognised name is its own patient (the name
    without its image suffix: ``scan.001``, a file without one, is not cut to ``scan``)."""
    named = _named_patient(file_name)
    if named is not None:
        return named
    path = Path(file_name)
    return (path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name).lower()


def unnamed_patients(samples: Sequence[Sample]) -> list[Sample]:
    """The samples whose patient is neither a DICOM PatientID nor read from a file-name scheme
    (each counts as its own patient, so one child's images can fall on both sides of a split)."""
    return [
        s for s in samples if not _from_dicom_tag(s.patient) and _named_patient(s.path.name) is None
    ]


def duplicate_groups(paths: Sequence[Path]) -> list[list[Path]]:
    """Groups (size ≥ 2) of byte-identical files; a file that cannot be read is in none (what
    decodes it reports it by name)."""
    by_digest: dict[str, list[Path]] = {}
    for path in paths:
        try:
            digest = sha256_of(path)
        except OSError:
            continue
        by_digest.setdefault(digest, []).append(Path(path))
    return [group for group in by_digest.values() if len(group) > 1]


def label_conflicts(
    groups: Sequence[Sequence[Path]], samples: Sequence[Sample]
) -> list[list[Path]]:
    """The duplicate ``groups`` filed under more than one class of ``samples``: one image, two
    labels."""
    label_of = {s.path: s.label for s in samples}
    return [list(group) for group in groups if len({label_of[path] for path in group}) > 1]


def split_groups(samples: Sequence[Sample]) -> list[str]:
    """Group key per sample: its patient, merged with every patient it shares a duplicate file with."""
    parent: dict[str, str] = {s.patient: s.patient for s in samples}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    patient_by_path = {s.path: s.patient for s in samples}
    groups = duplicate_groups([s.path for s in samples])
    for conflict in label_conflicts(groups, samples):
        log.warning(
            "one image filed under two classes, so trained with both labels: %s; remove the "
            "wrong copy (`pneumolab data check` lists every such image)",
            ", ".join(map(str, conflict)),
        )
    for group in groups:
        roots = {find(patient_by_path[path]) for path in group}
        first = min(roots)
        for other in roots:
            parent[other] = first
    return [find(s.patient) for s in samples]


def grouped_split(
    samples: Sequence[Sample], val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Seeded, class-stratified, patient-grouped train/validation split.

    No patient (nor any byte-identical duplicate) ends up on both sides.
    """
    if not 0.0 < val_fraction <= MAX_VAL_FRACTION:
        raise ValueError(f"val_fraction must be in (0, {MAX_VAL_FRACTION}], got {val_fraction}")
    unnamed = unnamed_patients(samples)
    if unnamed:
        log.warning(
            "%d of %d images carry no patient ID (read from %s; first: %s): each counts as "
            "its own patient, so one child's images may fall on both sides of the validation "
            "split",
            len(unnamed),
            len(samples),
            PATIENT_SCHEMES,
            unnamed[0].path.name,
        )
    labels = np.array([s.label for s in samples])
    groups = split_groups(samples)
    n_splits = max(2, round(1.0 / val_fraction))
    for label, name in enumerate(CLASS_NAMES):
        n_groups = len({g for g, y in zip(groups, labels, strict=True) if y == label})
        if n_groups < n_splits:
            tagged = any(_from_dicom_tag(s.patient) for s in samples)
            raise DataLayoutError(
                f"only {n_groups} {name} patient(s): a patient-grouped validation split of "
                f"{val_fraction:.0%} needs at least {n_splits} per class"
                + (
                    " (patients are read from DICOM PatientID tags: an anonymiser that gave "
                    "every file one ID makes them one patient)"
                    if tagged
                    else ""
                )
            )
    from sklearn.model_selection import StratifiedGroupKFold  # not on the prediction path

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    for side, indices in (("validation", val_idx), ("training", train_idx)):
        missing = [name for label, name in enumerate(CLASS_NAMES) if label not in labels[indices]]
        if missing:  # a few patients hold most of a class's images: the folds cannot balance it
            raise DataLayoutError(
                f"the patient-grouped {side} split (seed {seed}, {val_fraction:.0%}) has no "
                f"{' or '.join(missing)} image: a few patients hold most of that class's images; "
                "another seed or validation fraction may balance it"
            )
    _warn_if_short(groups, len(val_idx), val_fraction)
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def _warn_if_short(groups: Sequence[str], n_val: int, val_fraction: float) -> None:
    """Warn where the validation split holds under half the share asked for: one patient ID
    held so many images (an anonymiser's placeholder PatientID for every file, say) that the
    folds could not balance."""
    if n_val >= val_fraction * len(groups) / 2:
        return
    largest, count = Counter(groups).most_common(1)[0]
    log.warning(
        "the validation split holds %.1f%% of the images, not the %.0f%% asked: patient %s "
        "holds %d of %d images (one ID on many files, such as an anonymiser's placeholder, "
        "makes them one patient)",
        100 * n_val / len(groups),
        100 * val_fraction,
        largest,
        count,
        len(groups),
    )
