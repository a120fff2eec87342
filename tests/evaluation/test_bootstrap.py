"""Bootstrap intervals: agreement with the point metrics, coverage, width, patient grouping."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from pneumolab.evaluation.bootstrap import (
    CI_METRICS,
    bootstrap_ci,
    most_dropped,
    paired_auc_difference,
    resample_weights,
    weighted_metrics,
)
from pneumolab.evaluation.metrics import binary_metrics


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_unit_weights_reproduce_binary_metrics_with_ties(threshold):
    y, p = _scores(300)
    p = np.round(p, 1)  # many tied scores
    point = binary_metrics(y, p, threshold)
    values = weighted_metrics(y, p, threshold, np.ones((1, len(y))))
    for name in CI_METRICS:
        assert values[name][0] == pytest.approx(getattr(point, name)), name


def test_integer_weights_equal_repeating_the_images():
    y, p = _scores(50)
    counts = np.random.default_rng(3).integers(0, 4, 50)
    repeated = binary_metrics(np.repeat(y, counts), np.repeat(p, counts), 0.5)
    values = weighted_metrics(y, p, 0.5, counts[None].astype(float))
    for name in CI_METRICS:
        assert values[name][0] == pytest.approx(getattr(repeated, name)), name


def test_intervals_contain_the_point_estimate():
    y, p = _scores(400)
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_resamples=500).bounds
    assert set(ci) == set(CI_METRICS)
    for name, (low, high) in ci.items():
        assert low <= getattr(point, name) <= high, name


def test_every_interval_holds_its_estimate_on_calibrated_scores():
    """ECE, which resampling biases upwards, had an interval wholly above it in about one
    calibrated sample of eight: it has no interval now."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p = rng.uniform(0, 1, 200)
        y = (rng.uniform(0, 1, 200) < p).astype(int)
        point = binary_metrics(y, p, 0.5)
        ci = bootstrap_ci(y, p, 0.5, n_resamples=300, seed=seed).bounds
        assert "ece" not in ci
        for name, (low, high) in ci.items():
            assert low <= getattr(point, name) <= high, (seed, name)


def test_intervals_narrow_with_more_data():
    small = bootstrap_ci(*_scores(200), 0.5, n_resamples=500).bounds
    large = bootstrap_ci(*_scores(3200), 0.5, n_resamples=500).bounds
    for name in ("accuracy", "roc_auc", "sensitivity", "brier"):
        assert large[name][1] - large[name][0] < 0.5 * (small[name][1] - small[name][0]), name


def test_patient_resampling_is_wider_when_images_of_a_patient_agree():
    # 60 patients with 10 images each; all images of a patient share its label and score
    y_patient, p_patient = _scores(60, seed=2)
    y, p = np.repeat(y_patient, 10), np.repeat(p_patient, 10)
    groups = np.repeat([f"patient{i}" for i in range(60)], 10)
    by_image = bootstrap_ci(y, p, 0.5, n_resamples=500).bounds
    by_patient = bootstrap_ci(y, p, 0.5, groups=groups, n_resamples=500).bounds
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        width_image = by_image[name][1] - by_image[name][0]
        assert by_patient[name][1] - by_patient[name][0] > 2 * width_image, name


def test_undefined_resamples_are_skipped():
    only_positive = bootstrap_ci(np.ones(20), np.linspace(0, 1, 20), 0.5, n_resamples=200)
    bounds, counts = only_positive.bounds, only_positive.resamples
    assert all(math.isnan(b) for b in bounds["specificity"] + bounds["roc_auc"])
    assert counts.used["roc_auc"] == counts.used["specificity"] == 0
    assert 0 < bounds["sensitivity"][0] <= bounds["sensitivity"][1] < 1
    assert counts.used["sensitivity"] == counts.drawn == 200


def _children(normal: int, pneumonia: int, images: int = 2) -> tuple[np.ndarray, np.ndarray, list]:
    """``images`` images of each of ``normal`` and ``pneumonia`` children, scores overlapping."""
    y = np.repeat([0] * normal + [1] * pneumonia, images)
    prob = np.r_[np.linspace(0.1, 0.6, normal * images), np.linspace(0.4, 0.95, pneumonia * images)]
    return y, prob, [f"child{i // images}" for i in range(len(y))]


def test_left_out_resamples_are_counted_and_the_interval_rests_on_the_others():
    """Four children of each class: about 1% of patient resamples hold one class only. They are
    left out of the intervals they have no figure for, and counted (they were dropped unsaid)."""
    y, prob, children = _children(4, 4)
    result = bootstrap_ci(y, prob, 0.5, groups=children, n_resamples=1000)
    values = weighted_metrics(y, prob, 0.5, resample_weights(len(y), children, 1000, 0))
    counts = result.resamples
    assert (counts.drawn, counts.max_dropped) == (1000, 24)
    assert counts.used == {name: int(np.isfinite(values[name]).sum()) for name in CI_METRICS}
    assert 0 < counts.dropped("roc_auc") <= 24 and counts.dropped("accuracy") == 0
    defined = values["roc_auc"][np.isfinite(values["roc_auc"])]
    assert result.bounds["roc_auc"] == pytest.approx(np.percentile(defined, [2.5, 97.5]))


def test_no_interval_where_too_many_resamples_lack_a_class():
    """Two normal children among twelve: a tenth of the resamples hold none, more than the
    2.5% a tail holds: ROC AUC and specificity get no interval (scipy.stats.bootstrap gives
    NaN where its statistic is undefined); accuracy, defined everywhere, keeps its own."""
    y, prob, children = _children(2, 10)
    result = bootstrap_ci(y, prob, 0.5, groups=children, n_resamples=1000)
    counts = result.resamples
    for name in ("roc_auc", "pr_auc", "specificity", "balanced_accuracy"):
        assert counts.dropped(name) > counts.max_dropped, name
        assert all(math.isnan(b) for b in result.bounds[name]), name
    assert counts.dropped("accuracy") == 0
    low, high = result.bounds["accuracy"]
    assert 0 < low < high <= 1
    # one negative in eight: a third of the resamples miss it, a 95% AUC interval is not known
    lone = bootstrap_ci(np.r_[0, np.ones(7)], np.linspace(0.1, 0.9, 8), 0.5, n_resamples=200)
    assert all(math.isnan(b) for b in lone.bounds["roc_auc"])
    assert 100 < lone.resamples.used["roc_auc"] < 175


@pytest.mark.parametrize(
    ("n_resamples", "level", "most"),
    [(1000, 0.95, 24), (200, 0.95, 4), (300, 0.95, 7), (1000, 0.5, 249), (10, 0.95, 0)],
)
def test_an_interval_allows_fewer_left_out_than_a_tail_holds(n_resamples, level, most):
    assert most_dropped(n_resamples, level) == most


def test_reproducible_and_level_checked():
    y, p = _scores(100)
    assert bootstrap_ci(y, p, 0.5, seed=4) == bootstrap_ci(y, p, 0.5, seed=4)
    assert (
        bootstrap_ci(y, p, 0.5, level=0.5).bounds["roc_auc"][0]
        > bootstrap_ci(y, p, 0.5).bounds["roc_auc"][0]
    )
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(y, p, 0.5, level=95)


def test_a_thousand_patient_resamples_of_900_images_draw_whole_patients():
    # (speed is not asserted here: speed goals live in benchmarks/)
    y, p = _scores(900)
    groups = np.arange(900) // 3
    weights = resample_weights(900, groups, n_resamples=1000)
    assert weights.shape == (1000, 900)
    by_patient = weights.reshape(1000, 300, 3)
    assert (by_patient == by_patient[..., :1]).all()  # a patient's images count together
    assert (by_patient[..., 0].sum(axis=1) == 300).all()  # 300 patients drawn per resample
    point = binary_metrics(y, p, 0.5)
    for name, (low, high) in bootstrap_ci(
        y, p, 0.5, groups=groups, n_resamples=1000
    ).bounds.items():
        assert low <= getattr(point, name) <= high, name


def test_a_model_against_itself_differs_by_exactly_nothing():
    y, p = _scores(200)
    same = paired_auc_difference(y, [p], [p.copy()], n_resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.resolved


def test_a_clearly_better_model_is_told_apart_and_a_close_one_is_not():
    y, weak = _scores(300)
    strong = np.clip(0.9 * y + 0.1 * np.random.default_rng(1).random(300), 0, 1)
    clear = paired_auc_difference(y, [strong], [weak], n_resamples=300)
    assert clear.difference == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))
    assert clear.low > 0 and clear.resolved
    nudged = weak + 1e-3 * np.random.default_rng(2).standard_normal(300)
    close = paired_auc_difference(y, [nudged], [weak], n_resamples=300)
    assert close.low < 0 < close.high and not close.resolved


def test_a_paired_difference_too_few_resamples_define_has_no_interval_and_says_so():
    rng = np.random.default_rng(0)
    y, a, children = _children(2, 10)
    b = np.clip(a + rng.normal(0, 0.2, len(a)), 0, 1)
    paired = paired_auc_difference(y, [a], [b], children, n_resamples=1000)
    assert math.isnan(paired.low) and math.isnan(paired.high) and not paired.resolved
    assert paired.drawn - paired.used > paired.max_dropped == 24
    y, a, children = _children(4, 4)
    b = np.clip(a + rng.normal(0, 0.2, len(a)), 0, 1)
    paired = paired_auc_difference(y, [a], [b], children, n_resamples=1000)
    assert 0 < paired.drawn - paired.used <= 24 and paired.low <= paired.high


def test_several_draws_compare_their_mean_auc():
    y, p = _scores(150)
    rng = np.random.default_rng(3)
    draws_a = [np.clip(p + 0.1 * rng.standard_normal(150), 0, 1) for _ in range(3)]
    draws_b = [np.clip(p + 0.3 * rng.standard_normal(150), 0, 1) for _ in range(2)]
    expected = np.mean([roc_auc_score(y, d) for d in draws_a]) - np.mean(
        [roc_auc_score(y, d) for d in draws_b]
    )
    paired = paired_auc_difference(y, draws_a, draws_b, n_resamples=100)
    assert paired.difference == pytest.approx(expected)


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), grouped=st.booleans())
def test_swapping_the_models_negates_the_difference_and_its_interval(seed, grouped):
    y, a = _scores(80, seed)
    _, b = _scores(80, seed + 1)
    groups = np.arange(80) // 2 if grouped else None  # two images per patient
    ab = paired_auc_difference(y, [a], [b], groups, n_resamples=200, seed=seed)
    ba = paired_auc_difference(y, [b], [a], groups, n_resamples=200, seed=seed)
    assert ba.difference == pytest.approx(-ab.difference)
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low))


def test_a_share_is_never_narrower_than_its_exact_interval_over_its_patients():
    """No false positive among 191 normal images of 173 children: every resample gave
    specificity [1, 1], printed as a 95% interval; Clopper-Pearson over the 173 children
    allows down to 0.979. And one false positive must not look more certain than none."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(191), np.ones(554)]
    prob = np.r_[rng.uniform(0, 0.4, 191), rng.uniform(0.3, 1, 554)]
    children = [f"n{i % 173}" for i in range(191)] + [f"p{i}" for i in range(554)]
    ci = bootstrap_ci(y, prob, 0.5, groups=children, n_resamples=200).bounds
    exact = binomtest(173, 173).proportion_ci(method="exact")
    assert ci["specificity"] == pytest.approx([exact.low, 1.0])
    assert ci["specificity"][0] == pytest.approx(0.9789, abs=1e-4)
    assert ci["precision"][1] == 1.0 and ci["precision"][0] < 1.0
    assert ci["sensitivity"][0] < ci["sensitivity"][1] < 1  # not at a bound: the bootstrap's
    by_image = bootstrap_ci(y, prob, 0.5, n_resamples=200).bounds
    assert by_image["specificity"][0] == pytest.approx(0.025 ** (1 / 191))  # (α/2)^(1/n)
    lows = []
    for false_positives in (0, 1, 2):
        called = prob.copy()
        called[:false_positives] = 0.9
        lows.append(
            bootstrap_ci(y, called, 0.5, groups=children, n_resamples=200).bounds["specificity"][0]
        )
    assert lows[0] > lows[1] > lows[2]
