"""Augmentation for chest X-rays, on 8-bit single-channel batches (batched tensor operations).

The official test split differs from train in exposure, contrast and framing, so augmentation
targets exactly those: scale/crop, small rotations and shifts, brightness, contrast and gamma,
plus blur and sensor noise (without noise augmentation, Gaussian noise of 4% made a model call
every validation image pneumonia; see benchmarks/README.md).
Horizontal flips are left out: the heart sits on the left, and a mirrored chest is not a
plausible input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn.functional import affine_grid, conv2d, grid_sample, interpolate, pad
from torchvision.transforms.v2 import functional as F

from pneumolab.data.intensity import clahe_array, unknown_intensity


def normalize_intensity(pixels: torch.Tensor, method: str) -> torch.Tensor:
    """Apply intensity normalisation ``method`` to uint8 images ``(..., 1, H, W)`` (see
    :data:`~pneumolab.choices.INTENSITIES`; NumPy twin without PyTorch:
    :func:`~pneumolab.data.intensity.normalize_intensity_array`)."""
    if method == "none":
        return pixels
    if method == "equalize":
        return F.equalize(pixels)
    if method == "clahe":  # OpenCV on the CPU: no torchvision equivalent
        planes = clahe_array(pixels.detach().cpu().numpy())
        return torch.from_numpy(planes).to(pixels.device)
    raise unknown_intensity(method)


TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "zoom_in_1.1": lambda x: F.affine(x, angle=0.0, translate=[0, 0], scale=1.1, shear=[0.0, 0.0]),
    "rotate_+5": lambda x: F.rotate(x, 5.0),
    "rotate_-5": lambda x: F.rotate(x, -5.0),
}
"""Test-time augmentation: fixed, mild views of each raw uint8 image whose scores are averaged."""


class BatchAugmentation(torch.nn.Module):
    """The training augmentation on a whole ``(B, 1, H, W)`` uint8 batch at once: one random draw
    per image, applied with a handful of batched tensor operations (one ``grid_sample`` for the
    geometry), so it runs on the training device beside the model instead of image by image in
    loader workers (``strength`` 0 = none, up to 3; the ranges of the base policy and the wider
    crops scale with it, and so does the ``acquisition`` uneven exposure, ±25 % x strength;
    its collimation bands and resolution loss do not).

    Per image: a random resized crop (area 70-100 %, aspect 0.85-1.15) composed with a rotation
    (±10°) and a shift (±5 %), zero fill; brightness and contrast (±30 %), gamma (1/1.5-1.5);
    with probability 0.3 a 5x5 Gaussian blur (σ 0.1-1.5); with probability 0.5 Gaussian noise
    (σ up to 5 % of full scale).

    ``acquisition`` adds what another site's detector and radiographer change: crops up to 145 %
    of the area (a wider field of view, black border), and, each step on a random half of the
    batch, black collimation bands (3-12 % of the side, each side with probability 0.35: of
    the images that get them, about five in six have one or two banded sides, one in six three
    or four; 41 % of all images are banded), resolution loss (down to 50-80 % and back up, one factor per
    batch) and uneven exposure (a smooth 4x4 gain field, ±25 % at strength 1, upsampled
    bicubically: 98 % of it within ±26 %, its overshoot reaching 0.63-1.36 at the extremes).
    """

    def __init__(self, strength: float = 1.0, acquisition: bool = False) -> None:
        super().__init__()
        if not 0 <= strength <= 3:
            raise ValueError(f"augmentation strength {strength}: must be in [0, 3]")
        self.strength = strength
        self.acquisition = acquisition

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.strength <= 0:
            return images
        x = images.float().div_(255.0)
        x = self._geometry(x)
        if self.acquisition:
            x = self._collimation(self._resolution_loss(self._uneven_exposure(x)))
        x = self._intensity(x)
        x = self._blur(x)
        x = self._noise(x)
        return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(low, high)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n, k, device = len(x), self.strength, x.device
        area = self._uniform(
            n, 1.0 - 0.3 * k, 1.0 + (0.45 * k if self.acquisition else 0.0), device
        )
        log_ratio = self._uniform(n, math.log(1.0 - 0.15 * k), math.log(1.0 + 0.15 * k), device)
        crop_w = (area * log_ratio.exp()).sqrt()  # fractions of the side; > 1: wider view
        crop_h = (area / log_ratio.exp()).sqrt()
        if not self.acquisition:
            crop_w, crop_h = crop_w.clamp(max=1.0), crop_h.clamp(max=1.0)
        centre_x = (1.0 - crop_w).abs() * self._uniform(n, -1.0, 1.0, device)
        centre_y = (1.0 - crop_h).abs() * self._uniform(n, -1.0, 1.0, device)
        angle = torch.deg2rad(self._uniform(n, -10.0 * k, 10.0 * k, device))
        shift_x = self._uniform(n, -0.1 * k, 0.1 * k, device)  # ±5 % of the side, in [-1, 1] units
        shift_y = self._uniform(n, -0.1 * k, 0.1 * k, device)
        cos, sin = angle.cos(), angle.sin()
        # output point p -> in the crop's frame q = R⁻¹(p - t) -> in the image: S q + c.
        # Like a crop followed by a rotation and shift with zero fill, points whose q falls
        # outside the crop are black (tilted and shifted images show black corners and bands).
        rotation = torch.zeros(n, 2, 3, device=device)
        rotation[:, 0, 0], rotation[:, 0, 1] = cos, sin
        rotation[:, 1, 0], rotation[:, 1, 1] = -sin, cos
        rotation[:, 0, 2] = -(cos * shift_x + sin * shift_y)
        rotation[:, 1, 2] = -(-sin * shift_x + cos * shift_y)
        in_crop = affine_grid(rotation, list(x.shape), align_corners=False)  # q, (n, H, W, 2)
        scale = torch.stack([crop_w, crop_h], dim=1).view(n, 1, 1, 2)
        centre = torch.stack([centre_x, centre_y], dim=1).view(n, 1, 1, 2)
        sampled = grid_sample(
            x, in_crop * scale + centre, padding_mode="zeros", align_corners=False
        )
        inside = (in_crop.abs() <= 1.0).all(dim=-1).unsqueeze(1)
        return sampled * inside

    def _to_some(
        self, x: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``change`` applied to a random half of the batch (each image with probability 0.5),
        computed on those images only."""
        chosen = torch.rand(len(x), device=x.device) < 0.5
        if chosen.any():
            x[chosen] = change(x[chosen])
        return x

    def _uneven_exposure(self, x: torch.Tensor) -> torch.Tensor:
        def gain_field(some: torch.Tensor) -> torch.Tensor:
            n, k = len(some), self.strength
            gains = self._uniform(n * 16, 1.0 - 0.25 * k, 1.0 + 0.25 * k, some.device)
            field = interpolate(
                gains.view(n, 1, 4, 4), size=some.shape[-2:], mode="bicubic", align_corners=False
            )
            return (some * field).clamp_(0.0, 1.0)

        return self._to_some(x, gain_field)

    def _resolution_loss(self, x: torch.Tensor) -> torch.Tensor:
        factor = float(torch.empty(1).uniform_(0.5, 0.8))  # one factor per batch

        def down_and_up(some: torch.Tensor) -> torch.Tensor:
            small = interpolate(some, scale_factor=factor, mode="bilinear", antialias=True)
            return interpolate(small, size=some.shape[-2:], mode="bilinear", align_corners=False)

        return self._to_some(x, down_and_up)

    def _collimation(self, x: torch.Tensor) -> torch.Tensor:
        def bands(some: torch.Tensor) -> torch.Tensor:
            n, device = len(some), some.device
            height, width = some.shape[-2:]
            # band widths per image and side (left, right, top, bottom), each side with
            # probability 0.35: mostly one or two sides
            widths = self._uniform(n * 4, 0.03, 0.12, device).view(n, 4)
            widths = widths * (torch.rand(n, 4, device=device) < 0.35)
            cols = (torch.arange(width, device=device) + 0.5) / width
            rows = ((torch.arange(height, device=device) + 0.5) / height).view(-1, 1)
            left, right, top, bottom = (widths[:, i].view(n, 1, 1, 1) for i in range(4))
            outside = (cols < left) | (cols > 1.0 - right) | (rows < top) | (rows > 1.0 - bottom)
            return some.masked_fill(outside, 0.0)

        return self._to_some(x, bands)

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        n, k, device = len(x), self.strength, x.device
        shape = (n, 1, 1, 1)
        brightness = self._uniform(n, 1.0 - 0.3 * k, 1.0 + 0.3 * k, device).view(shape)
        contrast = self._uniform(n, 1.0 - 0.3 * k, 1.0 + 0.3 * k, device).view(shape)
        log_gamma = math.log(1.0 + 0.5 * k)
        gamma = self._uniform(n, -log_gamma, log_gamma, device).exp().view(shape)
        x = (x * brightness).clamp_(0.0, 1.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (contrast * x + (1.0 - contrast) * mean).clamp_(0.0, 1.0)
        return x.pow_(gamma)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        n, device = len(x), x.device
        sigma = self._uniform(n, 0.1, max(0.1, 1.5 * self.strength), device)
        taps = torch.arange(-2, 3, device=device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
        kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 5)
        blurred = pad(x.transpose(0, 1), (2, 2, 2, 2), mode="reflect")
        blurred = conv2d(blurred, kernel.view(n, 1, 1, 5), groups=n)
        blurred = conv2d(blurred, kernel.view(n, 1, 5, 1), groups=n)
        chosen = (torch.rand(n, device=device) < 0.3).view(n, 1, 1, 1)
        return torch.where(chosen, blurred.transpose(0, 1), x)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        n, device = len(x), x.device
        sigma = self._uniform(n, 0.0, 0.05 * self.strength, device)
        sigma = sigma * (torch.rand(n, device=device) < 0.5)
        return x.add_(torch.randn_like(x) * sigma.view(n, 1, 1, 1)).clamp_(0.0, 1.0)
