"""The OOD score: Mahalanobis distance, its validation threshold, storage, one-pass scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pneumolab.errors import RunDirError
from pneumolab.models.registry import create_classifier
from pneumolab.models.scored import ScoredModel
from pneumolab.scope.mahalanobis import MahalanobisScore, fit_mahalanobis
from pneumolab.scope.ood import METHOD, OodModel, validation_threshold

RNG = np.random.default_rng(0)


def two_classes(n: int = 400, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    features = RNG.normal(size=(n, dim)) + labels[:, None] * 3.0
    return features, labels


def test_score_is_the_smallest_mahalanobis_distance_to_a_class_mean():
    features, labels = two_classes()
    scorer = fit_mahalanobis(features, labels)
    whitening = scorer.whitening.double().numpy()
    precision = whitening.T @ whitening
    means = np.stack([features[labels == c].mean(0) for c in (0, 1)])
    probe = RNG.normal(size=(5, 8)) * 4
    expected = np.min(
        [np.einsum("nd,de,ne->n", probe - m, precision, probe - m) for m in means], axis=0
    )
    got = scorer(torch.from_numpy(probe).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_far_points_score_higher_than_training_like_points():
    features, labels = two_classes()
    scorer = fit_mahalanobis(features, labels)
    near = scorer(torch.from_numpy(two_classes(50)[0]).float())
    far = scorer(torch.from_numpy(RNG.normal(size=(50, 8)) + 10.0).float())
    assert far.min() > near.max()


@pytest.mark.parametrize("n", [1, 50, 99, 100, 101, 745])
def test_threshold_flags_at_most_one_percent_of_validation(n):
    scores = RNG.exponential(size=n)
    threshold = validation_threshold(scores)
    assert np.mean(scores > threshold) <= 0.01
    assert threshold in scores  # the lowest such threshold is one of the scores
    lower = scores[scores < threshold]
    assert not lower.size or np.mean(scores > lower.max()) > 0.01  # and it is the lowest


@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=300),  # many ties
    st.sampled_from([0.01, 0.05, 0.07, 0.29, 0.5]),
)
def test_the_threshold_is_the_lowest_score_flagging_at_most_the_share(scores, share):
    """With 100 scores and 1% it returned the largest score, flagging none (one was allowed)."""
    values = np.array(scores, dtype=float)
    threshold = validation_threshold(values, share)
    assert np.mean(values > threshold) <= share
    lower = values[values < threshold]
    assert not lower.size or np.mean(values > lower.max()) > share


def test_ood_model_round_trips_through_its_file(tmp_path):
    features, labels = two_classes()
    scorer = fit_mahalanobis(features, labels)
    val = scorer(torch.from_numpy(two_classes(200)[0]).float()).numpy()
    ood = OodModel.from_validation(METHOD, scorer, val, {"fitted_on": "test"})
    ood.save(tmp_path / "ood.safetensors")
    loaded = OodModel.load(tmp_path / "ood.safetensors")
    assert loaded.method == METHOD and loaded.threshold == ood.threshold
    assert loaded.provenance == {"fitted_on": "test"}
    np.testing.assert_array_equal(loaded.val_scores, ood.val_scores)
    probe = torch.randn(3, 8)
    torch.testing.assert_close(loaded.scorer(probe), scorer(probe))


def test_a_file_that_is_not_an_ood_model_is_refused_by_name(tmp_path):
    path = tmp_path / "ood.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(RunDirError, match=r"ood\.safetensors: not a pneumolab OOD model"):
        OodModel.load(path)


def test_scored_model_gives_the_classifier_probability_and_the_score_in_one_pass():
    model = create_classifier("pneumolab_cnn_small", pretrained=False).eval()
    pixels = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        dim = model.features(pixels).shape[1]
        scorer = MahalanobisScore(torch.eye(dim), torch.zeros(2, dim))
        probability, score = ScoredModel(model, scorer)(pixels)
        torch.testing.assert_close(probability, torch.sigmoid(model(pixels)))
        torch.testing.assert_close(score, (model.features(pixels) ** 2).sum(dim=1))
        assert torch.isnan(ScoredModel(model, None)(pixels)[1]).all()


def test_features_that_do_not_vary_are_warned_of(caplog):
    """A zero covariance made the whitening zero: every score 0, the threshold 0, and every
    input in scope, without a word."""
    fit_mahalanobis(np.ones((10, 96)), np.array([0] * 5 + [1] * 5))
    assert "the scope features do not vary" in caplog.text
    caplog.clear()
    rng = np.random.default_rng(0)
    fit_mahalanobis(rng.normal(size=(10, 4)), np.array([0] * 5 + [1] * 5))
    assert "do not vary" not in caplog.text
