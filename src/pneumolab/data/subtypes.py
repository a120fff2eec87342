"""Pneumonia subtypes from the Kermany file names: ``person12_bacteria_45.jpeg``,
``person3_virus_9.jpeg``. The three-class task is NORMAL / BACTERIAL / VIRAL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumolab.data.layout import Sample
from pneumolab.errors import DataLayoutError

SUBTYPE_NAMES: tuple[str, ...] = ("NORMAL", "BACTERIAL", "VIRAL")
_MARKERS = {"bacteria": 1, "virus": 2}


def subtype_of(sample: Sample) -> int | None:
    """0 for NORMAL, 1 bacterial, 2 viral; None for a pneumonia file whose name says neither."""
    if sample.label == 0:
        return 0
    name = sample.path.name.lower()
    found = {index for marker, index in _MARKERS.items() if marker in name}
    return found.pop() if len(found) == 1 else None


def subtype_labels(samples: Sequence[Sample]) -> list[int]:
    """Subtype of every sample; DataLayoutError naming the files that have none."""
    labels = [subtype_of(s) for s in samples]
    unknown = [s.path for s, label in zip(samples, labels, strict=True) if label is None]
    if unknown:
        raise DataLayoutError(
            f"three-class mode needs 'bacteria' or 'virus' in every pneumonia file name; "
            f"{len(unknown)} file(s) have neither (first: {unknown[0]})"
        )
    return labels  # type: ignore[return-value]


def subtype_calls(class_probs: np.ndarray, pneumonia: np.ndarray) -> np.ndarray:
    """The class each image is called: NORMAL (0) where the binary decision (``pneumonia``,
    one bool per image: P(pneumonia) at or over the run's threshold) says NORMAL; else the more
    likely of BACTERIAL (1) and VIRAL (2) by ``class_probs`` (``(N, 3)``). The rule of the
    evaluation's 3 x 3 matrix and of every prediction's subtype."""
    return np.where(pneumonia, 1 + class_probs[:, 1:].argmax(axis=1), 0)
