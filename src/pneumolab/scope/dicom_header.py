"""Scope checks from a DICOM header alone (no pixel data read): modality, body part, view, age.

A tag that says the image is out of scope is a reason; a missing or empty tag is not. Ages
outside the training population (children aged 1–5) are warnings, not reasons: the image is
still a chest radiograph, only outside the intended use.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import date
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pneumolab.data.dicom import pydicom_messages, read_dicom, unusable_window
from pneumolab.data.imageio import DEFAULT_MAX_PIXELS
from pneumolab.scope.checks import ScopeChecks

RADIOGRAPHY = {
    "CR": "computed radiography",
    "DX": "digital radiography",
    "RG": "radiographic imaging (film)",
}
"""Modalities in scope: projection radiographs."""
CHEST_WORDS = {
    "CHEST", "THORAX", "LUNG", "LUNGS",
    "TORAX", "PECHO", "TORACE", "BRUST", "BRUSTKORB", "POITRINE",
}  # fmt: skip
"""Words of a BodyPartExamined that name the chest (English, and the Spanish, Portuguese,
Italian, German and French terms vendors write); one of them anywhere in the value will do
(``CHEST_PA``, ``CHEST AP``) unless a word of :data:`NOT_CHEST_WORDS` is there too."""
NOT_CHEST_WORDS = {
    "SPINE", "WIRBELSAEULE", "WIRBELSÄULE", "COLUMNA", "ABDOMEN", "ABD", "PELVIS",
    "SHOULDER", "RIB", "RIBS", "STERNUM", "CLAVICLE",
}  # fmt: skip
"""Words that make a chest word name another study (``BRUST WIRBELSAEULE``, the thoracic spine;
``CHEST_ABDOMEN``)."""
FRONTAL_VIEWS = {"PA", "AP"}
FRONTAL_QUALIFIERS = {
    "SUPINE", "ERECT", "UPRIGHT", "PORTABLE", "SEMI", "SEMIERECT", "SITTING", "STANDING",
}  # fmt: skip
"""Words a frontal ViewPosition may carry after PA or AP (``AP SUPINE``, ``AP SEMI-ERECT``);
any other (``PA LATERAL``, ``AP-LLD``, a decubitus) makes it another view."""
TRAINING_AGES = (1.0, 5.0)
"""Ages (years) of the children in the training data (Kermany et al. 2018)."""
ADULT_AGE = 18.0
TAGS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PresentationIntentType",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
    "ImageType",
    "Manufacturer",
    "PhotometricInterpretation",
    "BitsStored",
    "Rows",
    "Columns",
)
"""Header tags reported with the checks (and summarised by the site audit)."""
_AGE_UNITS = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}


def _text(ds: Dataset, keyword: str) -> str:
    """The tag's value as text; empty where it is missing or cannot be read (one broken value
    costs its own check, never the others')."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom parses a value on access: wrong length, VR or encoding
        return ""
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def age_in_years(ds: Dataset) -> float | None:
    """PatientAge (``nnnD/W/M/Y``; archives also hold ``45Y``, ``45 Y`` or a bare ``045``, read
    as years), else the birth date against the study/acquisition date: completed calendar
    months (for dates) as years, plus the share of the month since."""
    age = re.fullmatch(r"([0-9]{1,3}) ?([DWMY]?)", _text(ds, "PatientAge").upper())
    if age and int(age[1]) > 0:  # 000Y: the usual anonymised placeholder
        return int(age[1]) / _AGE_UNITS[age[2] or "Y"]
    born = _parse_date(_text(ds, "PatientBirthDate"))
    taken = next(
        filter(None, (_parse_date(_text(ds, k)) for k in ("StudyDate", "AcquisitionDate"))), None
    )
    if born is None or taken is None or taken < born:
        return None
    months = (taken.year - born.year) * 12 + taken.month - born.month - (taken.day < born.day)
    return months / 12 + (taken - _months_after(born, months)).days / (31 * 12)  # < 1 month


def _months_after(born: date, months: int) -> date:
    """The date ``months`` calendar months after ``born`` (the 31st on a shorter month's last)."""
    year, month = divmod(born.month - 1 + months, 12)
    year += born.year
    return date(year, month + 1, min(born.day, calendar.monthrange(year, month + 1)[1]))


def _age_text(age: float) -> str:
    """An age as a clinician states it: completed months under one year, else completed years."""
    months = math.floor(age * 12 + 1e-9)
    return f"{months} months" if months < 12 else f"{math.floor(age + 1e-9)} years"


def _parse_date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 else None
    except ValueError:
        return None


def is_frontal(view: str) -> bool:
    """Whether a ViewPosition value names a frontal view: PA or AP, then only
    :data:`FRONTAL_QUALIFIERS`."""
    first, *rest = re.findall(r"[A-Z]+", view.upper()) or [""]
    return first in FRONTAL_VIEWS and set(rest) <= FRONTAL_QUALIFIERS


def _age_warnings(ds: Dataset) -> tuple[str, ...]:
    age = age_in_years(ds)
    low, high = TRAINING_AGES
    if age is None or low <= math.floor(age + 1e-9) <= high:  # completed years, as ages are said
        return ()
    who = "an adult" if age >= ADULT_AGE else "a child"
    return (
        f"patient age {_age_text(age)}: {who} outside the intended use (the model was trained on "
        f"children aged {low:g}–{high:g})",
    )


def header_checks(ds: Dataset) -> ScopeChecks:
    """Reasons and warnings from a DICOM dataset's header tags."""
    tags = {keyword: text for keyword in TAGS if (text := _text(ds, keyword))}
    reasons = []
    modality = tags.get("Modality", "").upper()
    if modality and modality not in RADIOGRAPHY:
        expected = ", ".join(RADIOGRAPHY)
        reasons.append(f"DICOM Modality {modality}: not a radiograph ({expected} expected)")
    part = tags.get("BodyPartExamined", "").upper()
    words = set(re.findall(r"[^\W\d_]+", part))
    if part and (not CHEST_WORDS & words or NOT_CHEST_WORDS & words):
        reasons.append(f"DICOM BodyPartExamined {part}: not a chest (CHEST expected)")
    view = tags.get("ViewPosition", "").upper()
    if view and not is_frontal(view):
        reasons.append(f"DICOM ViewPosition {view}: not a frontal view (PA or AP expected)")
    if tags.get("PresentationIntentType", "").upper() == "FOR PROCESSING":
        reasons.append(
            "DICOM PresentationIntentType FOR PROCESSING: raw detector data, not the processed "
            "image a reader sees (FOR PRESENTATION expected)"
        )
    if "LOCALIZER" in tags.get("ImageType", "").upper():
        reasons.append("DICOM ImageType LOCALIZER: a scout/planning image, not a radiograph")
    window = unusable_window(ds)
    return ScopeChecks(tuple(reasons), (*_age_warnings(ds), *([window] if window else [])), tags)


def dicom_file_checks(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScopeChecks:
    """:func:`header_checks` of a DICOM file, reading the header only (stops before pixel data;
    a deflated file is bounded by ``max_pixels`` first, as its image is).

    A file that cannot be parsed gives no checks here; the image loader reports it by name.
    """
    with pydicom_messages():  # dropped: the image loader reads the file too, and logs them
        try:
            ds = read_dicom(path, max_pixels, stop_before_pixels=True)
        except Exception:  # pydicom raises many types on a broken header: the loader names it
            return ScopeChecks()
        return header_checks(ds)
