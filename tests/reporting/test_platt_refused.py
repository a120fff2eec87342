"""A run whose Platt map does not increase with the score (slope ≤ 0, stored before such maps
were refused): no figure, card or report presents it; each says why there is none."""

from __future__ import annotations

import json

from conftest import copy_run
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.scoring import compute_evaluation
from pneumolab.inference.predictor import Predictor
from pneumolab.reporting.model_card import model_card_text
from pneumolab.reporting.report import _calibration_html
from pneumolab.run import RunDir


def _backwards(run_dir) -> RunDir:
    """The run with the backwards Platt map a fit on inversely ranked scores gave."""
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["platt"] = {"slope": -0.861, "intercept": 0.0}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return RunDir(run_dir)


def test_a_backwards_platt_map_is_neither_applied_nor_shown(tiny_run, tmp_path):
    run = _backwards(copy_run(tiny_run[0], tmp_path / "run"))
    reason = run.read_meta().platt_refused
    assert reason is not None and "slope -0.861" in reason
    card = model_card_text(run)
    assert f"- Platt: none — {reason}" in card and "sigmoid(" not in card
    evaluation = compute_evaluation(Predictor.from_run(run.root, device="cpu"), tiny_run[1])
    assert not any(label.startswith("Platt") for label in evaluation.calibrated.curves)
    metrics = evaluation.metrics
    assert metrics.platt_scaled is None and metrics.platt_refused == reason
    assert metrics.temperature_scaled is not None  # the other map stays
    html = _calibration_html({"reliability.png": b"\x89PNG"}, "val", metrics)
    assert f"No Platt map: {reason}." in html and "The temperature map was fitted" in html
    written = evaluate(run.root, tiny_run[1], split="val", device="cpu")
    stored = json.loads((run.eval_dir("val") / "metrics.json").read_text())
    assert stored["platt_refused"] == written.platt_refused == reason
    assert stored["platt_scaled"] is None
