"""Test-time augmentation: scores are the mean over the fixed views, in predict and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import copy_run
from pneumolab.cli import main
from pneumolab.data.transforms import TTA_VIEWS
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.inference.predictor import Predictor, predict_pixels


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
    assert metrics["tta"] is True and 0.0 <= metrics["accuracy"] <= 1.0
    image = next((data / "train" / "NORMAL").iterdir())
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--json", "--tta"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probability"] == pytest.approx(
        Predictor.from_run(run_dir, tta=True).predict(image).probability, abs=1e-6
    )
