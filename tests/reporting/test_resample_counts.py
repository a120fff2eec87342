"""Where bootstrap resamples were left out of an interval (a metric undefined there), every place
that shows the interval says on how many it rests, or that there is none."""

from __future__ import annotations

import json
import math

import numpy as np
from rich.console import Console

from conftest import copy_run
from pneumolab.cli.tables import metrics_table
from pneumolab.evaluation.bootstrap import (
    INTERVAL_METHOD,
    bootstrap_ci,
    interval_text,
    left_out_note,
)
from pneumolab.evaluation.metrics import binary_metrics, format_interval
from pneumolab.reporting.model_card import model_card_text
from pneumolab.reporting.report import _metrics_html
from pneumolab.results import EvaluationMetrics
from pneumolab.run import RunDir

WITHHELD = "none (900 of 1,000 resamples define it)"
RULE = "with more than 24 of 1,000 left out it has none"


def _evaluation(normal: int, pneumonia: int) -> EvaluationMetrics:
    """An evaluation of two images of each of ``normal`` and ``pneumonia`` children, its
    intervals as :func:`~pneumolab.evaluation.scoring.compute_evaluation` computes them."""
    y = np.repeat([0] * normal + [1] * pneumonia, 2)
    prob = np.r_[np.linspace(0.1, 0.6, 2 * normal), np.linspace(0.4, 0.95, 2 * pneumonia)]
    children = [f"child{i // 2}" for i in range(len(y))]
    intervals = bootstrap_ci(y, prob, 0.5, groups=children)
    return EvaluationMetrics(
        **dict(binary_metrics(y, prob, 0.5)),
        split="val",
        model="m",
        ci95=intervals.bounds,
        interval_method=INTERVAL_METHOD,
        ci95_resamples=intervals.resamples,
    )


def test_an_interval_says_on_how_many_resamples_it_rests_and_none_where_too_few():
    few = _evaluation(2, 10)  # a tenth of the resamples hold no normal child
    assert interval_text(few, "roc_auc") == WITHHELD
    assert interval_text(few, "accuracy") == format_interval(few.ci95["accuracy"])  # all used
    some = _evaluation(4, 4)  # about 1% hold one class
    used = some.ci95_resamples.used["roc_auc"]
    assert 976 <= used < 1000
    text = f"{format_interval(some.ci95['roc_auc'])} ({used} of 1,000 resamples)"
    assert interval_text(some, "roc_auc") == text
    assert RULE in left_out_note(some, ["roc_auc"]) and not left_out_note(some, ["accuracy"])
    older = some.model_copy(update={"ci95_resamples": None})  # a file written before the count
    assert interval_text(older, "roc_auc") == format_interval(some.ci95["roc_auc"])


def test_metrics_json_records_the_resamples_and_no_interval_as_null():
    few = _evaluation(2, 10)
    written = json.loads(few.to_json())
    assert written["ci95"]["roc_auc"] == [None, None]
    counts = written["ci95_resamples"]
    assert (counts["drawn"], counts["max_dropped"], counts["used"]["roc_auc"]) == (1000, 24, 900)
    back = EvaluationMetrics.model_validate_json(few.to_json())
    assert back.ci95_resamples == few.ci95_resamples and math.isnan(back.ci95["roc_auc"][0])


def test_the_cli_table_and_the_report_say_so():
    few = _evaluation(2, 10)
    console = Console(width=250, record=True)
    console.print(metrics_table(few, "val"))
    shown = console.export_text()
    assert WITHHELD in shown and RULE in shown
    html = _metrics_html(few, "val")
    assert WITHHELD in html and RULE in html
    whole = _evaluation(20, 20)  # no resample lacks a class: nothing to say
    console = Console(width=250, record=True)
    console.print(metrics_table(whole, "val"))
    assert "resamples" not in console.export_text() and "resamples" not in _metrics_html(
        whole, "val"
    )


def test_the_model_card_says_so(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    few = _evaluation(2, 10)
    card = model_card_text(run, few)
    assert f"| roc_auc | {few.roc_auc:.4f} | {WITHHELD} |" in card and RULE in card
    run.eval_dir("val").mkdir(parents=True)  # read back from metrics.json
    (run.eval_dir("val") / "metrics.json").write_text(few.to_json())
    assert model_card_text(run) == card.replace(
        "From an evaluation on the validation split", "From `eval/val/metrics.json`"
    )
