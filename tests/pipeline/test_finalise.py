"""The post-training step on its own: scores in, a finished run out (single runs and ensembles
share it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumolab.data.layout import Sample
from pneumolab.pipeline.finalise import finalise
from pneumolab.run import RunDir, read_predictions
from pneumolab.run_meta import RunDescription, TrainingSummary


def test_finalise_chooses_the_rule_and_writes_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.weights.write_bytes(b"")  # a single run needs its weights file to count as finished
    labels = np.repeat([0, 1], 10)
    samples = [Sample(tmp_path / f"{i}.png", int(y), f"p{i}") for i, y in enumerate(labels)]
    probs = np.r_[np.linspace(0.05, 0.5, 10), np.linspace(0.4, 0.95, 10)]  # overlapping classes
    training = TrainingSummary(strategy="finetune", parameters=10, train_seconds=1.0)
    description = RunDescription("m", 32, "none", "binary", [0.5], [0.25], training)
    official = (np.array([0, 1, 1]), np.array([0.1, 0.2, 0.99]))
    meta = finalise(run, description, samples, probs, 0.95, official_val=official)

    assert run.read_meta().model_dump_json() == meta.model_dump_json()
    assert meta.model == "m" and not meta.is_ensemble
    # every positive kept (sensitivity 1 >= 0.95): halfway between 0.4 and the score below it
    assert meta.threshold == pytest.approx((0.4 + 0.35) / 2)
    assert meta.val_metrics.confusion_matrix == [[7, 3], [0, 10]]  # negatives 0.4, 0.45, 0.5
    assert meta.official_val_metrics is not None  # scored at the chosen threshold
    assert meta.official_val_metrics.confusion_matrix == [[1, 0], [1, 1]]
    rows = read_predictions(run.val_predictions)
    assert [r.probability for r in rows] == pytest.approx(probs, abs=1e-6)
    assert f"{meta.threshold:.4f}" in (run.root / "MODEL_CARD.md").read_text()
    assert json.loads(run.meta.read_text())["preprocessing"]["mean"] == [0.5]
