"""Temperature and Platt scaling, and the reliability diagram."""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from pneumolab.evaluation.calibration import (
    apply_platt,
    apply_temperature,
    fit_platt,
    fit_temperature,
    nll,
    to_logits,
)
from pneumolab.evaluation.figures import reliability_figure, save_figure
from pneumolab.evaluation.metrics import ECE_BINS, expected_calibration_error


@pytest.fixture
def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), scores sigmoid(3 z): logits three times too large."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < expit(z)).astype(int)
    return y, expit(3 * z)


def test_temperature_recovers_the_scale_and_lowers_nll(overconfident):
    y, prob = overconfident
    temperature = fit_temperature(y, prob)
    assert temperature == pytest.approx(3.0, rel=0.08)
    scaled = apply_temperature(prob, temperature)
    assert nll(y, to_logits(scaled)) < nll(y, to_logits(prob)) - 0.05
    assert expected_calibration_error(y, scaled) < expected_calibration_error(y, prob) / 3
    assert roc_auc_score(y, scaled) == pytest.approx(roc_auc_score(y, prob))


def test_calibrated_scores_keep_temperature_near_one():
    rng = np.random.default_rng(1)
    prob = expit(rng.normal(0, 2, 20000))
    y = (rng.random(prob.size) < prob).astype(int)
    assert fit_temperature(y, prob) == pytest.approx(1.0, abs=0.1)


def test_apply_temperature_handles_saturated_probabilities():
    prob = np.array([0.0, 0.2, 0.5, 1.0], dtype=np.float32)
    assert np.allclose(apply_temperature(prob, 1.0), prob, atol=1e-6)
    softened = apply_temperature(prob, 2.0)
    assert np.all(np.isfinite(softened)) and 0 < softened[0] < 0.01 and 0.99 < softened[-1] < 1
    assert softened[2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(prob, 0.0)


def test_reliability_diagram_is_drawn(overconfident, tmp_path):
    y, prob = overconfident
    curves = {"raw": prob, "T = 3": apply_temperature(prob, 3.0)}
    fig = reliability_figure(y, curves, "title")
    assert save_figure(fig, tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    # the diagonal, then one line per curve: its bins, with its ECE in the legend
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 1 + len(curves)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "perfectly calibrated"
    for line, text, (label, p) in zip(lines[1:], legend[1:], curves.items(), strict=True):
        assert text == f"{label} (ECE {expected_calibration_error(y, p):.3f})"
        observed, predicted = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
        np.testing.assert_allclose(line.get_xdata(), predicted)
        np.testing.assert_allclose(line.get_ydata(), observed)


def test_platt_removes_a_shift_that_temperature_cannot():
    """Scores sigmoid(z - 1.5): the shift class-weighted training leaves towards one class."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < expit(z)).astype(int)
    prob = expit(z - 1.5)
    platt = fit_platt(y, prob)
    assert platt.slope == pytest.approx(1.0, abs=0.08)
    assert platt.intercept == pytest.approx(1.5, abs=0.1)
    by_platt = apply_platt(prob, platt.slope, platt.intercept)
    by_temperature = apply_temperature(prob, fit_temperature(y, prob))
    assert expected_calibration_error(y, by_platt) < 0.02
    assert (
        expected_calibration_error(y, by_platt) < expected_calibration_error(y, by_temperature) / 3
    )
    assert nll(y, to_logits(by_platt)) < nll(y, to_logits(by_temperature))
    assert roc_auc_score(y, by_platt) == pytest.approx(roc_auc_score(y, prob))


def test_a_figure_written_on_a_full_disk_leaves_the_earlier_one(
    overconfident, tmp_path, monkeypatch
):
    """Figures were drawn straight into their file: a full disk left a cut PNG in place."""
    import errno
    import os

    y, prob = overconfident
    path = save_figure(reliability_figure(y, {"raw": prob}), tmp_path / "reliability.png")
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_figure(reliability_figure(y, {"raw": 1 - prob}), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_separable_validation_scores_give_finite_maps():
    """Scores that separate the classes left 0/1 targets without an optimum: the tiny run's four
    validation scores got a Platt slope of 680, wherever the solver stopped, and mapped its own
    validation images to 1e-9 and 0.99999 (a step function). Platt's targets (1/4 and 3/4 here)
    keep the map where the data puts it."""
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.4929, 0.4949, 0.4964, 0.4985])
    platt = fit_platt(y, prob)
    scaled = apply_platt(prob, platt.slope, platt.intercept)
    assert np.all((scaled > 0.15) & (scaled < 0.85))
    assert np.mean(scaled[y == 1]) == pytest.approx(0.75, abs=0.1)  # the positives' target


def test_platt_targets_follow_platt_1999():
    from pneumolab.evaluation.calibration import platt_targets

    targets = platt_targets(np.array([1, 1, 1, 0]))
    np.testing.assert_allclose(targets, [4 / 5, 4 / 5, 4 / 5, 1 / 3])


def test_a_temperature_at_its_bound_is_told_as_such():
    """The tiny run's card stated "T = 0.050" as a fitted map: the search's lower end."""
    from pneumolab.evaluation.calibration import at_bound

    y = np.array([0, 0, 1, 1])
    prob = np.array([0.4929, 0.4949, 0.4964, 0.4985])  # logits within 0.02 of each other
    assert at_bound(fit_temperature(y, prob))
    assert not at_bound(1.0) and at_bound(20.0)


def test_figures_keep_their_legends_and_read_as_numbers(overconfident):
    """The reliability legend ran 48 px off a 540 px figure (cutting the calibrated ECEs); a
    log axis's ticks read ``$\\mathdefault{10^{2}}$`` once mathtext was off; the ROC legend
    said AUC = 1.00 beside a table's 0.9986."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pneumolab.evaluation.figures import figure_png, roc_curve_figure

    y, prob = overconfident
    curves = {
        "raw": prob,
        "temperature, fitted on val. (T = 1.46)": apply_temperature(prob, 1.46),
        "Platt, fitted on val. (a = 1.23, b = 4.40)": apply_platt(prob, 1.23, 4.4),
    }
    fig = reliability_figure(y, curves, "title")
    figure_png(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width and legend.y0 >= 0

    histogram = Figure()
    ax = histogram.subplots()
    ax.hist(prob, bins=20)
    ax.set_yscale("log")
    figure_png(histogram)
    ticks = [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_text()]
    assert ticks and not any("$" in tick for tick in ticks)
    ax.set_ylim(0.97, 2.07)  # within one decade: the minor ticks carry the labels
    figure_png(histogram)
    minor = [t.get_text() for t in ax.yaxis.get_ticklabels(minor=True) if t.get_text()]
    assert "2" in minor and not any("$" in tick for tick in minor)

    (auc_line, *_) = roc_curve_figure(y[:200], prob[:200]).axes[0].get_legend().get_texts()
    assert f"AUC = {roc_auc_score(y[:200], prob[:200]):.4f}" in auc_line.get_text()


def test_a_platt_fit_that_does_not_increase_is_refused_with_its_reason(caplog):
    """Validation scores that rank the classes backwards got a Platt slope of -0.86, and the
    "calibrated" probability ran backwards (0.87 for a score of 0.1, 0.13 for 0.9); constant
    scores a slope of 0 (one probability for every score). Neither is kept as a map."""
    from pneumolab.evaluation.decision import decision_rule

    y = np.array([0, 0, 0, 1, 1, 1])
    backwards = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert fit_platt(y, backwards).slope < 0  # what the fit gives: the map must not be kept
    rule = decision_rule(y, backwards, "validation split of run", 0.95)
    assert rule.platt is None and rule.platt_refused is not None
    assert "slope -0.861" in rule.platt_refused and "a higher score a lower" in rule.platt_refused
    assert f"validation split of run: {rule.platt_refused}" in caplog.text
    flat = decision_rule(y, np.full(6, 0.5), "validation split of run", 0.95)
    assert flat.platt is None and "every score one probability" in (flat.platt_refused or "")
    kept = decision_rule(y, backwards[::-1], "validation split of run", 0.95)
    assert kept.platt is not None and kept.platt.slope > 0 and kept.platt_refused is None


def test_a_stored_platt_map_that_does_not_increase_is_read_as_refused():
    """meta.json of before 2026-12-07 may hold such a map: it is not applied, nor shown."""
    from pneumolab.results import DecisionRule, Platt

    stored = {
        "threshold": 0.5,
        "threshold_rule": "",
        "default_operating_point": "stored",
        "operating_points": {"stored": {"threshold": 0.5}},
        "temperature": 1.0,
        "val_metrics": {
            **dict.fromkeys(("accuracy", "sensitivity", "specificity", "precision", "npv")),
            **dict.fromkeys(("f1", "balanced_accuracy", "roc_auc", "pr_auc", "brier", "ece")),
            "confusion_matrix": [[0, 0], [0, 0]],
            "n": 0,
            "threshold": 0.5,
        },
    }
    rule = DecisionRule.model_validate(stored | {"platt": {"slope": -0.5, "intercept": 0.2}})
    assert rule.platt is None and "slope -0.5" in (rule.platt_refused or "")
    back = DecisionRule.model_validate_json(rule.model_dump_json())  # written and read again
    assert back.platt is None and back.platt_refused == rule.platt_refused
    kept = DecisionRule.model_validate(stored | {"platt": {"slope": 0.9, "intercept": 0.2}})
    assert kept.platt == Platt(slope=0.9, intercept=0.2) and kept.platt_refused is None
