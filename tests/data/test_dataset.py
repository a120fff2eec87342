"""Tests for pneumolab.data.dataset: decoding samples once, and the in-memory XrayDataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from pneumolab.data.dataset import DecodedImages, XrayDataset, decode_samples
from pneumolab.data.layout import Sample
from pneumolab.data.patients import patient_id

SIZE = 16


def _sample(path: Path, label: int) -> Sample:
    return Sample(path=path, label=label, patient=patient_id(path.name))


def _write_image(path: Path, value: int, size: tuple[int, int] = (40, 30), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def good_samples(tmp_path: Path) -> list[Sample]:
    return [
        _sample(_write_image(tmp_path / "NORMAL" / "IM-0001-0001.png", 0), 0),
        _sample(_write_image(tmp_path / "NORMAL" / "IM-0002-0001.jpeg", 128, mode="RGB"), 0),
        _sample(_write_image(tmp_path / "PNEUMONIA" / "person1_virus_1.png", 255, (20, 50)), 1),
        _sample(_write_image(tmp_path / "PNEUMONIA" / "person2_bacteria_2.jpeg", 64), 1),
    ]


def test_decode_samples_shape_and_dtype(good_samples: list[Sample]) -> None:
    decoded = decode_samples(good_samples, SIZE, threads=2)
    assert isinstance(decoded, DecodedImages)
    assert decoded.pixels.shape == (4, 1, SIZE, SIZE)
    assert decoded.pixels.dtype == torch.uint8
    assert decoded.samples == good_samples  # order kept
    assert decoded.skipped == []
    assert int(decoded.pixels[0].max()) == 0
    assert int(decoded.pixels[2].min()) == 255
    assert abs(float(decoded.pixels[1].float().mean()) - 128) <= 2


def test_decode_samples_default_threads(good_samples: list[Sample]) -> None:
    decoded = decode_samples(good_samples, SIZE)
    assert decoded.pixels.shape == (4, 1, SIZE, SIZE)


def test_decode_samples_skips_corrupt_files(
    tmp_path: Path, good_samples: list[Sample], caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "PNEUMONIA" / "person9_bacteria_9.jpeg"
    corrupt.write_text("not an image")
    missing = tmp_path / "NORMAL" / "IM-0099-0001.jpeg"
    bad = [_sample(corrupt, 1), _sample(missing, 0)]
    samples = [good_samples[0], bad[0], *good_samples[1:3], bad[1], good_samples[3]]

    with caplog.at_level(logging.WARNING, logger="pneumolab.data.dataset"):
        decoded = decode_samples(samples, SIZE, threads=2)

    assert decoded.samples == good_samples
    assert decoded.pixels.shape == (len(good_samples), 1, SIZE, SIZE)
    assert [s for s, _ in decoded.skipped] == bad
    (_, reason_corrupt), (_, reason_missing) = decoded.skipped
    assert "person9_bacteria_9.jpeg" in reason_corrupt
    assert "IM-0099-0001.jpeg" in reason_missing
    assert "person9_bacteria_9.jpeg" in caplog.text
    # The pixels still line up with the kept samples (labels and images not shifted).
    assert int(decoded.pixels[0].max()) == 0
    assert int(decoded.pixels[2].min()) == 255


def test_decode_samples_all_corrupt_gives_empty_tensor(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpeg"
    path.write_bytes(b"\xff\xd8\xff\x00garbage")
    decoded = decode_samples([_sample(path, 0)], SIZE, threads=1)
    assert decoded.pixels.shape == (0, 1, SIZE, SIZE)
    assert decoded.pixels.dtype == torch.uint8
    assert decoded.samples == []
    assert len(decoded.skipped) == 1
    assert "broken.jpeg" in decoded.skipped[0][1]


def test_decode_samples_empty_input() -> None:
    decoded = decode_samples([], SIZE)
    assert decoded.pixels.shape == (0, 1, SIZE, SIZE)
    assert len(XrayDataset(decoded)) == 0


def test_xray_dataset_items(good_samples: list[Sample]) -> None:
    decoded = decode_samples(good_samples, SIZE, threads=2)
    dataset = XrayDataset(decoded)
    assert len(dataset) == 4
    for index, sample in enumerate(good_samples):
        image, label = dataset[index]
        assert image.shape == (1, SIZE, SIZE)
        assert image.dtype == torch.uint8
        assert torch.equal(image, decoded.pixels[index])
        assert label.dtype == torch.float32
        assert label.shape == ()
        assert float(label) == float(sample.label)
    assert int(dataset[0][0].max()) == 0
    assert int(dataset[2][0].min()) == 255
    assert dataset.labels.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_xray_dataset_given_targets(good_samples: list[Sample]) -> None:
    targets = torch.tensor([0, 2, 1, 1])
    dataset = XrayDataset(decode_samples(good_samples, SIZE, threads=2), targets)
    assert [int(dataset[i][1]) for i in range(4)] == [0, 2, 1, 1]
