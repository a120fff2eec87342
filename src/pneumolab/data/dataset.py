"""In-memory X-ray dataset: every image decoded and resized once, so later epochs do no JPEG work."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from pneumolab.data.imageio import load_image, resize_square
from pneumolab.data.layout import Sample
from pneumolab.errors import DataLayoutError, ImageLoadError

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """Images decoded to ``(N, 1, S, S)`` uint8, with the samples kept and those skipped."""

    pixels: torch.Tensor
    samples: list[Sample]
    skipped: list[tuple[Sample, str]] = field(default_factory=list)


def decode_samples(
    samples: Sequence[Sample], image_size: int, threads: int | None = None
) -> DecodedImages:
    """Decode and resize every sample in parallel; unreadable files are skipped and reported."""

    def decode(sample: Sample) -> np.ndarray | str:
        try:
            return resize_square(load_image(sample.path, size_hint=image_size), image_size)
        except ImageLoadError as exc:
            return str(exc)

    threads = threads or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(decode, samples))
    kept = [(s, r) for s, r in zip(samples, results, strict=True) if isinstance(r, np.ndarray)]
    skipped = [(s, r) for s, r in zip(samples, results, strict=True) if isinstance(r, str)]
    for _, reason in skipped:
        log.warning("skipped %s", reason)
    pixels = (
        torch.from_numpy(np.stack([r for _, r in kept]))[:, None]
        if kept
        else torch.empty((0, 1, image_size, image_size), dtype=torch.uint8)
    )
    return DecodedImages(pixels=pixels, samples=[s for s, _ in kept], skipped=skipped)


def decode_readable(
    samples: Sequence[Sample], image_size: int, what: str, min_share: float = 0.0
) -> DecodedImages:
    """:func:`decode_samples`, refused (DataLayoutError) where not one image of ``what`` (words
    naming the images, e.g. ``"DATA: the val split"``) could be read, or fewer than
    ``min_share`` of them."""
    decoded = decode_samples(samples, image_size)
    read, total = len(decoded.samples), len(decoded.samples) + len(decoded.skipped)
    if not read or read < min_share * total:
        first = f" (the first: {decoded.skipped[0][1]})" if decoded.skipped else ""
        count = "none" if not read else f"only {read}"
        needed = f"; at least {min_share:.0%} must be" if read else ""
        raise DataLayoutError(f"{what}: {count} of its {total} images could be read{needed}{first}")
    return decoded


class XrayDataset(Dataset):
    """Yields ``(image, target)``: the decoded uint8 image ``(1, S, S)`` as it is (augmentation,
    intensity normalisation and scaling run on whole batches: :class:`XrayDataModule`'s batch
    hook), and its target: float32 (1 = pneumonia) by default, or the given ``targets``
    (e.g. subtype indices)."""

    def __init__(self, decoded: DecodedImages, targets: torch.Tensor | None = None) -> None:
        self.decoded = decoded
        self.labels = (
            torch.tensor([s.label for s in decoded.samples], dtype=torch.float32)
            if targets is None
            else targets
        )

    def __len__(self) -> int:
        return len(self.decoded.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoded.pixels[index], self.labels[index]
