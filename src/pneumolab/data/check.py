"""Audit a dataset folder: counts, patients, duplicates, cross-split leakage, unreadable files."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.imageio import load_image
from pneumolab.data.layout import Sample, scan_dataset
from pneumolab.data.patients import duplicate_groups, label_conflicts, unnamed_patients
from pneumolab.errors import DataLayoutError, ImageLoadError


@dataclass
class DataReport:
    """What ``pneumolab data check`` found."""

    root: Path
    counts: dict[str, dict[str, int]]
    patients: dict[str, int]
    duplicate_groups: list[list[Path]]
    cross_split_duplicates: list[list[Path]]
    conflicting_labels: list[list[Path]]
    """Duplicate groups filed under more than one class: one image, two labels."""
    patient_overlap: dict[str, list[str]]
    unreadable: list[str] = field(default_factory=list)
    unnamed_patients: list[Path] = field(default_factory=list)
    """Images with no patient ID (no DICOM PatientID, a name of no scheme): each counts as its
    own patient."""
    layout_problems: dict[str, str] = field(default_factory=dict)
    """Split -> why it could not be scanned (an empty class folder, a name that is not UTF-8):
    the other splits are still checked."""

    @property
    def problems(self) -> bool:
        """Whether anything found changes what a training or an evaluation on this data means:
        unreadable files, one image under two classes, or one image in two splits."""
        return bool(self.unreadable or self.conflicting_labels or self.cross_split_duplicates)


def unreadable(samples: list[Sample]) -> list[str]:
    """Why each unreadable sample cannot be read (one message naming the file per failure)."""

    def problem(sample: Sample) -> str | None:
        try:
            load_image(sample.path, size_hint=32)
        except ImageLoadError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(8) as pool:
        return [p for p in pool.map(problem, samples) if p]


def check_dataset(root: str | Path) -> DataReport:
    """Scan every split under ``root`` and report; a split that cannot be scanned is reported in
    ``layout_problems`` and the others checked; DataLayoutError when none can be (or the
    layout itself is wrong: no train/)."""
    root = Path(root)
    problems: dict[str, str] = {}
    splits = scan_dataset(root, problems)
    if not splits:
        raise DataLayoutError("; ".join(problems.values()))
    counts = {
        split: {name: Counter(s.label for s in samples)[i] for i, name in enumerate(CLASS_NAMES)}
        for split, samples in splits.items()
    }
    patients = {split: {s.patient for s in samples} for split, samples in splits.items()}
    split_of = {s.path: split for split, samples in splits.items() for s in samples}
    all_samples = [s for samples in splits.values() for s in samples]
    groups = duplicate_groups([s.path for s in all_samples])
    overlap = {
        f"{a}/{b}": sorted(patients[a] & patients[b]) for a, b in combinations(sorted(splits), 2)
    }
    return DataReport(
        root=root,
        counts=counts,
        patients={split: len(ids) for split, ids in patients.items()},
        duplicate_groups=groups,
        cross_split_duplicates=[g for g in groups if len({split_of[p] for p in g}) > 1],
        conflicting_labels=label_conflicts(groups, all_samples),
        patient_overlap=overlap,
        unreadable=unreadable(all_samples),
        unnamed_patients=[s.path for s in unnamed_patients(all_samples)],
        layout_problems=problems,
    )
