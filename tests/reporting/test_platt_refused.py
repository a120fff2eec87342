"""A run whose Platt map does not increase with the score (slope ≤ 0, stored before such maps
were refused): no figure, card or report presents it; each says why there is none."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

import pneumolab
from conftest import copy_run
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.scoring import compute_evaluation
from pneumolab.inference.predictor import Predictor
from pneumolab.reporting.model_card import model_card_text
from pneumolab.reporting.report import _calibration_html
from pneumolab.run import RunDir
from pneumolab.serving.app import create_app


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


def test_an_old_run_with_a_backwards_map_says_so_once_and_scores_raw(
    tiny_run, tmp_path, caplog, capsys
):
    """The map was dropped on reading without a word: evaluate, predict and serve said nothing
    of it. Each tells once, naming the run folder, and scores as the run always did."""
    from pneumolab.cli import main

    image = next((tiny_run[1] / "train" / "NORMAL").iterdir())
    raw = Predictor.from_run(tiny_run[0], device="cpu").predict(image).probability
    runs = [_backwards(copy_run(tiny_run[0], tmp_path / name)) for name in ("p", "s", "e")]
    reason = runs[0].read_meta().platt_refused

    def told(run: RunDir) -> str:
        return (
            f"{run.root}: the Platt calibration map its meta.json stores (written before "
            f"2026-12-07, when such maps were still kept) is ignored: {reason}. Its predictions "
            "are the network's raw probabilities"
        )

    predicted, served, evaluated = runs
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        assert pneumolab.load_run(predicted.root, device="cpu").predict(image).probability == raw
        pneumolab.load_run(predicted.root, device="cpu")  # told once a run
        response = TestClient(create_app(served.root)).post(
            "/v1/predict", files={"file": (image.name, image.read_bytes())}
        )
    assert response.status_code == 200 and response.json()["probability"] == raw
    messages = [r.getMessage() for r in caplog.records if "Platt" in r.getMessage()]
    assert len(messages) == 2
    assert messages[0].startswith(told(predicted)) and messages[1].startswith(told(served))
    capsys.readouterr()
    assert main(["evaluate", str(evaluated.root), "--data", str(tiny_run[1])]) == 0
    printed = " ".join(capsys.readouterr().err.split())  # the terminal's lines joined
    assert printed.count("Platt calibration map") == 1 and told(evaluated) in printed
