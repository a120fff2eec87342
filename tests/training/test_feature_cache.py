"""The frozen strategy's feature cache: reused when nothing changed, recomputed when anything did."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_TRAINING, write_backbone_weights, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.data.layout import Sample
from pneumolab.pipeline.train import train
from pneumolab.training.feature_cache import FeatureCache


class CountingExtractor:
    """Stands in for the backbone: feature = mean pixel; counts the images it was asked for."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen += len(pixels)
        return pixels.float().mean(dim=(1, 2, 3))[:, None]


def features(cache: FeatureCache, samples, pixels, compute):
    """One process's use of the cache, as the frozen strategy's loader makes it: look up, compute
    the missing rows, complete."""
    found = cache.lookup(samples)
    return cache.complete(found, compute(pixels[found.missing]) if found.missing else None)


def _samples(tmp_path, n=4):
    samples = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x" * (i + 1))
        samples.append(Sample(path, i % 2, f"p{i}"))
    return samples, torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2)


def test_cache_is_reused_extended_and_refreshed_per_file(tmp_path):
    samples, pixels = _samples(tmp_path)
    key = {"model": "m", "weights": "sha256:abc", "image_size": 2, "intensity": "none"}
    extractor = CountingExtractor()
    first, stats = features(
        FeatureCache(tmp_path / "cache", key), samples[:3], pixels[:3], extractor
    )
    assert (stats.reused, stats.computed, extractor.seen) == (0, 3, 3)
    again, stats = features(
        FeatureCache(tmp_path / "cache", key), samples[:3], pixels[:3], extractor
    )
    assert (stats.reused, stats.computed, extractor.seen) == (3, 0, 3)
    assert torch.equal(first, again)
    # a new image is computed alone; order follows the request
    both, stats = features(
        FeatureCache(tmp_path / "cache", key), samples[::-1], pixels.flip(0), extractor
    )
    assert (stats.reused, stats.computed) == (3, 1)
    assert torch.equal(both[:, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    # an edited file (new modification time) gets a fresh row
    stat = samples[0].path.stat()
    os.utime(samples[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, stats = features(FeatureCache(tmp_path / "cache", key), samples, pixels, extractor)
    assert (stats.reused, stats.computed) == (3, 1)


@pytest.mark.parametrize(
    "change",
    [{"model": "other"}, {"weights": "sha256:def"}, {"image_size": 3}, {"intensity": "equalize"}],
)
def test_any_key_change_recomputes(tmp_path, change):
    samples, pixels = _samples(tmp_path)
    key = {"model": "m", "weights": "sha256:abc", "image_size": 2, "intensity": "none"}
    features(FeatureCache(tmp_path / "cache", key), samples, pixels, CountingExtractor())
    changed = FeatureCache(tmp_path / "cache", key | change)
    _, stats = features(changed, samples, pixels, CountingExtractor())
    assert stats.computed == len(samples)
    assert changed.folder != FeatureCache(tmp_path / "cache", key).folder


def test_unreadable_cache_file_is_recomputed(tmp_path):
    samples, pixels = _samples(tmp_path)
    cache = FeatureCache(tmp_path / "cache", {"model": "m"})
    features(cache, samples, pixels, CountingExtractor())
    (cache.folder / "features.pt").write_bytes(b"torn")
    _, stats = features(cache, samples, pixels, CountingExtractor())
    assert stats.computed == len(samples)


@pytest.mark.slow
def test_frozen_training_reuses_features_until_weights_or_size_change(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data")
    base = TINY_TRAINING | dict(
        pretrained=True,
        strategy="frozen",
        weights=write_backbone_weights(tmp_path / "a.safetensors", 0),
        feature_cache=str(tmp_path / "cache"),
        epochs=2,
    )

    def cache_stats(name, **change):
        run = train(data, tmp_path / name, TrainConfig(**(base | change)))
        meta = json.loads(run.meta.read_text())
        assert meta["strategy"] == "frozen"
        assert meta["trainable_parameters"] < meta["parameters"]
        return meta["feature_cache"]

    first = cache_stats("run1")
    assert (first["reused"], first["computed"]) == (0, 24)
    second = cache_stats("run2", seed=1)  # another split of the same images: all reused
    assert (second["reused"], second["computed"]) == (24, 0)
    assert second["key"] == first["key"]
    other_weights = cache_stats(
        "run3", weights=write_backbone_weights(tmp_path / "b.safetensors", 1)
    )
    assert other_weights["computed"] == 24 and other_weights["key"] != first["key"]
    other_size = cache_stats("run4", image_size=40)
    assert other_size["computed"] == 24 and other_size["key"] != first["key"]
    fp32, bf16 = (cache_stats(f"run5-{p}", precision=p) for p in ("32", "bf16-mixed"))
    assert fp32["key"] != bf16["key"]  # autocast changes the features
    assert first["key"] in (fp32["key"], bf16["key"])  # precision auto: one of the two


def test_frozen_without_pretrained_weights_is_refused_as_a_config(tmp_path):
    """A config error (a study refuses it before training any model; it stopped a study
    after the models before it had trained)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs pretrained weights"):
        TrainConfig(**(TINY_TRAINING | dict(strategy="frozen")))
    study = tmp_path / "study.yaml"
    study.write_text(
        "models:\n  - {name: a, model: pneumolab_cnn_small, pretrained: false}\n"
        "  - {name: f, model: pneumolab_cnn_small, pretrained: false, strategy: frozen}\n"
    )
    data = write_synthetic_dataset(tmp_path / "data")
    from pneumolab.cli import main

    assert main(["study", str(study), "--data", str(data), "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()  # refused before model a trained
