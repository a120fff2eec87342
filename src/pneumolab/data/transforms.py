"""Augmentation for chest X-rays, on 8-bit single-channel tensors (torchvision transforms v2).

The official test split differs from train in exposure, contrast and framing, so augmentation
targets exactly those: scale/crop, small rotations and shifts, brightness, contrast and gamma,
plus blur and sensor noise (without noise augmentation, Gaussian noise of 4% made a model call
every validation image pneumonia; see benchmarks/README.md).
Horizontal flips are left out: the heart sits on the left, and a mirrored chest is not a
plausible input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pneumolab.data.intensity import INTENSITY_METHODS


def normalize_intensity(pixels: torch.Tensor, method: str) -> torch.Tensor:
    """Apply intensity normalisation ``method`` to uint8 images ``(..., 1, H, W)`` (see
    :data:`~pneumolab.data.intensity.INTENSITY_METHODS`; NumPy twin without PyTorch:
    :func:`~pneumolab.data.intensity.normalize_intensity_array`)."""
    if method == "none":
        return pixels
    if method == "equalize":
        return F.equalize(pixels)
    raise ValueError(f"unknown intensity normalisation {method!r}; choose from {INTENSITY_METHODS}")


TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "zoom_in_1.1": lambda x: F.affine(x, angle=0.0, translate=[0, 0], scale=1.1, shear=[0.0, 0.0]),
    "rotate_+5": lambda x: F.rotate(x, 5.0),
    "rotate_-5": lambda x: F.rotate(x, -5.0),
}
"""Test-time augmentation: fixed, mild views of each raw uint8 image whose scores are averaged."""


class RandomGamma(torch.nn.Module):
    """Apply a random gamma in ``[1/max_gamma, max_gamma]`` (exposure curve of the detector)."""

    def __init__(self, max_gamma: float = 1.5) -> None:
        super().__init__()
        self.log_range = float(torch.log(torch.tensor(max_gamma)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gamma = float(torch.empty(1).uniform_(-self.log_range, self.log_range).exp())
        return F.adjust_gamma(image, gamma)


class RandomNoise(torch.nn.Module):
    """Add Gaussian noise of a random standard deviation in ``[0, max_sigma]`` (fraction of 255)."""

    def __init__(self, max_sigma: float = 0.05) -> None:
        super().__init__()
        self.max_sigma = max_sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.empty(1).uniform_(0, self.max_sigma)) * 255
        noisy = image.float() + torch.randn(image.shape) * sigma
        return noisy.round_().clamp_(0, 255).to(torch.uint8)


def train_augmentation(image_size: int, strength: float = 1.0) -> v2.Compose:
    """Random geometry and intensity changes; ``strength`` (0 = none) scales every range."""
    if strength <= 0:
        return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                image_size,
                scale=(1.0 - 0.3 * strength, 1.0),
                ratio=(1.0 - 0.15 * strength, 1.0 + 0.15 * strength),
                antialias=True,
            ),
            v2.RandomAffine(degrees=10 * strength, translate=(0.05 * strength, 0.05 * strength)),
            v2.ColorJitter(brightness=0.3 * strength, contrast=0.3 * strength),
            RandomGamma(1.0 + 0.5 * strength),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5 * strength))], p=0.3),
            v2.RandomApply([RandomNoise(0.05 * strength)], p=0.5),
        ]
    )
