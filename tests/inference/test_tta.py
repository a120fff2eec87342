"""Test-time augmentation: scores are the mean over the fixed views, in predict and evaluate,
decided at the run's own TTA threshold."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import copy_run
from pneumolab.cli import main
from pneumolab.data.transforms import TTA_VIEWS
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.operating_points import choose_operating_points
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.reporting.model_card import CARD_NAME
from pneumolab.run import RunDir, read_predictions


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the shared tiny run (evaluate writes into it)."""
    return copy_run(tiny_run[0], tmp_path_factory.mktemp("tta") / "run")


def test_tta_score_is_the_mean_over_views(run_dir):
    plain = Predictor.from_run(run_dir)
    tta = Predictor.from_run(run_dir, tta=True)
    pixels = plain.preprocess(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))[
        None
    ]
    expected = np.mean(
        [predict_pixels(plain.model, view(pixels), plain.intensity) for view in TTA_VIEWS.values()],
        axis=0,
    )
    assert tta.backend(pixels) == pytest.approx(expected, abs=1e-6)
    views = [view(pixels) for view in TTA_VIEWS.values()]
    assert torch.equal(views[0], pixels)  # the image itself, then views that each change it
    assert len({v.numpy().tobytes() for v in views}) == len(views) >= 3


def test_evaluate_and_predict_accept_tta(run_dir, tiny_run, capsys):
    data = tiny_run[1]
    metrics = evaluate(run_dir, data, "val", tta=True)
    assert metrics.tta is True and 0.0 <= metrics.accuracy <= 1.0
    # the calibration maps were fitted on scores without the views: not applied to TTA scores
    assert metrics.temperature_scaled is None and metrics.platt_scaled is None
    # scored over the views: the validation TTA scores stored at training, image by image
    run = RunDir(run_dir)
    stored = {r.path: r for r in read_predictions(run.val_predictions)}
    scored = read_predictions(run.eval_dir("val") / "predictions.csv")
    assert sorted(r.path for r in scored) == sorted(stored)
    for row in scored:
        assert row.probability == pytest.approx(stored[row.path].tta_probability, abs=1e-6)
    labels = np.array([stored[r.path].label for r in scored])
    tta_probs = np.array([stored[r.path].tta_probability for r in scored])
    assert metrics.brier == pytest.approx(np.mean((tta_probs - labels) ** 2), abs=1e-6)
    image = next((data / "train" / "NORMAL").iterdir())
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--json", "--tta"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probability"] == pytest.approx(
        Predictor.from_run(run_dir, tta=True).predict(image).probability, abs=1e-6
    )


def test_a_trained_run_stores_a_threshold_for_tta_scores(tiny_run):
    run = RunDir(tiny_run[0])
    meta = run.read_meta()
    rows = read_predictions(run.val_predictions)
    labels = np.array([r.label for r in rows])
    tta_probs = np.array([r.tta_probability for r in rows])
    assert not np.allclose(tta_probs, [r.probability for r in rows])  # scored over the views
    chosen = choose_operating_points(labels, tta_probs, "val", 0.95)["sensitivity_95"].threshold
    assert meta.tta_threshold == pytest.approx(chosen, abs=1e-5)
    assert "With test-time augmentation (`--tta`): threshold" in (run.root / CARD_NAME).read_text()


def test_tta_decides_at_the_tta_threshold(run_dir, tiny_run):
    meta = RunDir(run_dir).read_meta()
    assert Predictor.from_run(run_dir).threshold == meta.threshold
    assert Predictor.from_run(run_dir, tta=True).threshold == meta.tta_threshold
    points = evaluate(run_dir, tiny_run[1], "val", tta=True).operating_points
    assert list(points) == ["tta"] and points["tta"].threshold == meta.tta_threshold


def test_a_run_without_tta_threshold_keeps_its_threshold_and_says_so(tiny_run, tmp_path, caplog):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "old"))
    meta = run.read_meta().model_copy(update={"tta_threshold": None})
    run.write_meta(meta)
    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_run(run.root, tta=True)
    assert predictor.threshold == meta.threshold
    assert "has no TTA threshold" in caplog.text and str(run.root) in caplog.text
    # its evaluation's metrics.json said so too (the log line is gone once the run ends)
    (point,) = evaluate(run.root, tiny_run[1], "val", tta=True).operating_points.values()
    assert "on validation scores WITHOUT test-time views" in point.provenance
