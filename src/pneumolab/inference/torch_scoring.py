"""Score uint8 pixels with a PyTorch network, batch by batch, and pick the device it runs on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from pneumolab.errors import ModelError

if TYPE_CHECKING:
    import torch

    from pneumolab.models.classifier import XrayClassifier

Pixels: TypeAlias = "np.ndarray | torch.Tensor"
"""uint8 ``(N, 1, S, S)`` pixels: a NumPy array or a CPU tensor."""


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """ModelError for a device this machine does not have (torch's own error speaks of
    drivers), or a name torch does not know."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ModelError(f"device {device!r}: not a device name torch knows ({exc})") from None
    index = torch.device(device).index or 0
    if kind == "cuda" and index >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise ModelError(
            f"device {device!r}: {found or 'no'} CUDA GPU(s) available here; use device='cpu'"
            + (f" or one of cuda:0..{found - 1}" if found else "")
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r}: no Apple GPU (MPS) here; use device='cpu'")


def score_batches(
    score: Callable[[torch.Tensor], torch.Tensor],
    model: XrayClassifier,
    pixels: Pixels,
    intensity: str,
    batch_size: int,
) -> np.ndarray:
    """``score`` (a function of ``model``) on raw uint8 ``(N, 1, S, S)`` pixels, batch by batch,
    in eval mode: ``intensity`` normalisation first, then pixels / 255 on the model's device;
    one thread at a time per model (:func:`~pneumolab.models.classifier.passes_lock`)."""
    import torch

    from pneumolab.data.transforms import normalize_intensity
    from pneumolab.models.classifier import passes_lock

    with passes_lock(model), torch.inference_mode():
        model.eval()
        device = next(model.parameters()).device
        scores = [
            score(normalize_intensity(chunk, intensity).to(device).float() / 255.0).cpu()
            for chunk in torch.as_tensor(pixels).split(batch_size)
        ]
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def predict_pixels(
    model: XrayClassifier, pixels: Pixels, intensity: str = "none", batch_size: int = 64
) -> np.ndarray:
    """Pneumonia probabilities for raw uint8 ``(N, 1, S, S)`` pixels, in fp32, batch by batch;
    ``intensity`` normalisation is applied first, as in training."""
    return score_batches(lambda x: model(x).sigmoid(), model, pixels, intensity, batch_size)
