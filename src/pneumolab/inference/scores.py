"""What a backend computes for a batch: pneumonia probabilities and OOD scores (and a
three-class network's class probabilities), in one pass.

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
    """Per-image ``probability`` of pneumonia and ``ood`` score (NaN: the run has no OOD model);
    ``class_probs``: the ``(N, K)`` softmax of a three-class network's logits (NORMAL,
    BACTERIAL, VIRAL; with TTA their mean over the views), None where the scorer gives none (a
    binary network, an exported model, which carries the pneumonia logit only, an ensemble)."""

    probability: np.ndarray
    ood: np.ndarray
    class_probs: np.ndarray | None = None

    def class_probs_of(self, index: int) -> np.ndarray | None:
        """Image ``index``'s class probabilities (None where the scorer gives none)."""
        return None if self.class_probs is None else self.class_probs[index]


Scorer: TypeAlias = "Callable[[Any], Scores]"
"""Scores uint8 ``(N, 1, S, S)`` pixels (NumPy or a CPU tensor), intensity normalisation included."""


def torch_scorer(
    model: XrayClassifier,
    intensity: str,
    ood: torch.nn.Module | None = None,
    batch_size: int = 64,
    classes: int = 0,
) -> Scorer:
    """Probabilities and OOD scores (``ood`` on the scope descriptor; NaN without it) of raw
    uint8 pixels, from one forward pass per batch; with ``classes`` (a three-class network's
    3), the class probabilities too (softmax of its logits, from the same pass)."""
    import torch

    from pneumolab.models.scored import ScoredModel

    scored = ScoredModel(model, ood)

    def outputs(x: torch.Tensor) -> torch.Tensor:
        probability, ood_score, logits = scored.with_class_logits(x)
        columns = [probability[:, None], ood_score[:, None]]
        return torch.cat(columns + ([logits.softmax(dim=1)] if classes else []), dim=1)

    def score(pixels: Any) -> Scores:
        every = score_batches(outputs, model, pixels, intensity, batch_size)
        every = every.reshape(-1, 2 + classes)
        return Scores(every[:, 0], every[:, 1], every[:, 2:] if classes else None)

    return score


def mean_scores(scorers: Sequence[Scorer], class_probs: bool = False) -> Scorer:
    """The mean probability and mean OOD score of several scorers (an ensemble, TTA views);
    with ``class_probs`` (the views of one network) the mean class probabilities too, where
    every scorer gives them: ``p_normal`` stays 1 - P(pneumonia), a mean of both. An
    ensemble's mean gives none (a subtype is called by one network)."""

    def averaged(pixels: Any) -> Scores:
        results = [scorer(pixels) for scorer in scorers]
        classes = [r.class_probs for r in results if r.class_probs is not None]
        given = class_probs and len(classes) == len(results)
        return Scores(
            np.mean([r.probability for r in results], axis=0),
            np.mean([r.ood for r in results], axis=0),
            np.mean(classes, axis=0) if given else None,
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
    """Average ``scorer`` over the test-time views of each image (TTA_VIEWS), its class
    probabilities included."""
    import torch

    from pneumolab.data.transforms import TTA_VIEWS

    def viewed(view: Callable[[torch.Tensor], torch.Tensor]) -> Scorer:
        return lambda pixels: scorer(view(torch.as_tensor(pixels)))

    return mean_scores([viewed(view) for view in TTA_VIEWS.values()], class_probs=True)
