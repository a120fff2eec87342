"""What a backend computes for a batch: pneumonia probabilities and OOD scores, in one pass.

PyTorch is imported only by :func:`torch_scorer` and :func:`with_tta` (an ONNX predictor never
calls them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image

from pneumolab.data.imageio import resize_square
from pneumolab.inference.torch_scoring import score_batches

if TYPE_CHECKING:
    import torch

    from pneumolab.models.classifier import XrayClassifier


@dataclass(frozen=True)
class Scores:
    """Per-image ``probability`` of pneumonia and ``ood`` score (NaN: the run has no OOD model)."""

    probability: np.ndarray
    ood: np.ndarray


Scorer: TypeAlias = "Callable[[Any], Scores]"
"""Scores uint8 ``(N, 1, S, S)`` pixels (NumPy or a CPU tensor), intensity normalisation included."""


def torch_scorer(
    model: XrayClassifier, intensity: str, ood: torch.nn.Module | None = None, batch_size: int = 64
) -> Scorer:
    """Probabilities and OOD scores (``ood`` on the scope descriptor; NaN without it) of raw
    uint8 pixels, from one forward pass per batch."""
    import torch

    from pneumolab.models.scored import ScoredModel

    scored = ScoredModel(model, ood)

    def score(pixels: Any) -> Scores:
        both = score_batches(
            lambda x: torch.stack(scored(x), dim=1), model, pixels, intensity, batch_size
        ).reshape(-1, 2)
        return Scores(both[:, 0], both[:, 1])

    return score


def mean_scores(scorers: Sequence[Scorer]) -> Scorer:
    """The mean probability and mean OOD score of several scorers (an ensemble, TTA views)."""

    def averaged(pixels: Any) -> Scores:
        results = [scorer(pixels) for scorer in scorers]
        return Scores(
            np.mean([r.probability for r in results], axis=0),
            np.mean([r.ood for r in results], axis=0),
        )

    return averaged


def at_size(scorer: Scorer, size: int) -> Scorer:
    """``scorer`` of a model trained at ``size`` px, fed square pixels of another size: each
    image is first resized to ``size`` the way training resized the dataset's copies."""

    def resized(pixels: Any) -> Scores:
        planes = np.asarray(pixels)
        if planes.shape[-1] == size:
            return scorer(planes)
        out = np.zeros((len(planes), 1, size, size), dtype=np.uint8)
        for index, plane in enumerate(planes):
            out[index, 0] = resize_square(Image.fromarray(plane[0]), size)
        return scorer(out)

    return resized


def with_tta(scorer: Scorer) -> Scorer:
    """Average ``scorer`` over the test-time views of each image (TTA_VIEWS)."""
    import torch

    from pneumolab.data.transforms import TTA_VIEWS

    def viewed(view: Callable[[torch.Tensor], torch.Tensor]) -> Scorer:
        return lambda pixels: scorer(view(torch.as_tensor(pixels)))

    return mean_scores([viewed(view) for view in TTA_VIEWS.values()])
