"""The datamodule's batch hook: uint8 batches in, augmented (training only) and normalised out."""

from pathlib import Path
from types import SimpleNamespace

import torch

from pneumolab.config import TrainConfig
from pneumolab.data.transforms import normalize_intensity
from pneumolab.run import RunDir
from pneumolab.training.datamodule import XrayDataModule


def _datamodule(training: bool, **config: object) -> XrayDataModule:
    data = XrayDataModule(RunDir(Path("unused")), Path("unused"), TrainConfig(**config))
    data.trainer = SimpleNamespace(training=training)  # type: ignore[assignment]
    return data


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (6, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    return images.to(torch.uint8), torch.tensor([0.0, 1.0] * 3)


def test_validation_batches_are_only_normalised() -> None:
    images, targets = _batch()
    out, out_targets = _datamodule(training=False).on_after_batch_transfer((images, targets), 0)
    expected = normalize_intensity(images, "clahe").float() / 255
    assert out.dtype == torch.float32 and torch.allclose(out, expected)
    assert torch.equal(out_targets, targets)


def test_training_batches_are_augmented_then_normalised() -> None:
    images, targets = _batch()
    torch.manual_seed(0)
    out, _ = _datamodule(training=True).on_after_batch_transfer((images, targets), 0)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, normalize_intensity(images, "clahe").float() / 255)


def test_zero_strength_trains_on_the_images_as_validated() -> None:
    images, targets = _batch()
    data = _datamodule(training=True, augment_strength=0.0, intensity="none")
    out, _ = data.on_after_batch_transfer((images, targets), 0)
    assert torch.allclose(out, images.float() / 255)


def test_acquisition_policy_reaches_the_augmentation() -> None:
    assert _datamodule(training=True, augmentation="acquisition").augmentation.acquisition
    assert not _datamodule(training=True, augmentation="standard").augmentation.acquisition
