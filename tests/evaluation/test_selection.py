"""Margins: the leading model's paired AUC lead over each other model, read from their
evaluations' score files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumolab.data.layout import Sample
from pneumolab.evaluation import selection
from pneumolab.evaluation.bootstrap import PairedDifference, paired_auc_difference
from pneumolab.evaluation.selection import Margin, Margins, margins_over, smallest_untold
from pneumolab.evaluation.writer import METRICS, PREDICTIONS, SHIFT_PREDICTIONS
from pneumolab.run import RunDir, read_shift_predictions, write_predictions, write_shift_predictions

N = 120


def _samples(n: int = N) -> list[Sample]:
    labels = np.arange(n) % 2
    return [
        Sample(Path(f"/data/val/person{i // 2}_{i}.jpeg"), int(y), f"person{i // 2}")
        for i, y in enumerate(labels)
    ]


def _scored_run(root: Path, clean: np.ndarray, compound: list[np.ndarray], n: int = N) -> RunDir:
    """A run directory holding only what an evaluation of ``val`` with the shift protocol writes."""
    run = RunDir(root)
    folder = run.eval_dir("val")
    folder.mkdir(parents=True)
    samples = _samples(n)
    write_predictions(folder / PREDICTIONS, samples, clean)
    shifted = {"reframe": [clean], "compound": compound}
    write_shift_predictions(folder / SHIFT_PREDICTIONS, samples, shifted)
    (folder / METRICS).write_text("{}")
    return run


@pytest.fixture
def runs(tmp_path) -> dict[str, RunDir]:
    rng = np.random.default_rng(0)
    y = np.arange(N) % 2
    sharp = np.clip(0.8 * y + 0.2 * rng.random(N), 0, 1)
    blurry = np.clip(0.3 * y + 0.7 * rng.random(N), 0, 1)
    near = np.clip(sharp + 0.01 * rng.standard_normal(N), 0, 1)
    return {
        "sharp": _scored_run(tmp_path / "sharp", sharp, [sharp, sharp]),
        "near": _scored_run(tmp_path / "near", near, [near, near]),
        "blurry": _scored_run(tmp_path / "blurry", blurry, [blurry, blurry]),
    }


@pytest.mark.parametrize("criterion", ["roc_auc", "shift_roc_auc"])
def test_a_clear_lead_is_resolved_and_a_near_tie_is_not(runs, criterion):
    margins = margins_over(runs, "sharp", criterion)
    assert margins.untested is None
    by_name = {m.other: m.difference for m in margins.margins}
    assert set(by_name) == {"near", "blurry"}
    assert by_name["blurry"].resolved and by_name["blurry"].difference > 0
    assert not by_name["near"].resolved
    assert margins.untold == ["near"]
    text = margins.markdown("val")
    assert f"## `{criterion}`: **sharp** leads" in text
    assert "| near |" in text and text.count("| no |") == 1 and text.count("| yes |") == 1


def test_the_smallest_model_the_data_cannot_tell_from_the_leader(runs):
    margins = margins_over(runs, "sharp", "shift_roc_auc")  # near: untold; blurry: told apart
    assert smallest_untold(margins, {"sharp": 20, "near": 5, "blurry": 1}) == "near"
    assert smallest_untold(margins, {"sharp": 5, "near": 20, "blurry": 1}) == "sharp"
    assert smallest_untold(margins, {"sharp": 5, "near": 5, "blurry": 1}) == "sharp"  # a tie
    assert smallest_untold(margins, {"sharp": 5, "near": None, "blurry": 1}) == "sharp"
    assert smallest_untold(margins, {"sharp": None, "near": 5, "blurry": 1}) == "sharp"  # unknown


def test_criteria_without_per_image_scores_are_not_tested(runs):
    margins = margins_over(runs, "sharp", "worst_roc_auc")
    assert margins.margins == [] and margins.untold == []
    assert "Not tested: no per-image scores" in margins.markdown("val")


def test_runs_scored_on_other_images_or_without_scores_are_not_compared(runs, tmp_path):
    fewer = np.full(N - 2, 0.5)
    others = runs | {"fewer": _scored_run(tmp_path / "fewer", fewer, [fewer], N - 2)}
    assert (
        margins_over(others, "sharp", "roc_auc").untested
        == "the models were scored on other images"
    )
    unscored = runs | {"unscored": RunDir(tmp_path / "unscored")}
    missing = margins_over(unscored, "sharp", "shift_roc_auc")
    assert missing.margins == [] and "scores are missing" in (missing.untested or "")


def test_an_unfinished_evaluation_is_not_compared(runs):
    """A folder without metrics.json (an evaluation stopped while writing) may hold one
    evaluation's predictions beside another's shifted scores."""
    (runs["near"].eval_dir("val") / METRICS).unlink()
    margins = margins_over(runs, "sharp", "shift_roc_auc")
    assert margins.margins == [] and "unfinished evaluation" in (margins.untested or "")


def test_shift_predictions_round_trip(tmp_path):
    samples = _samples(4)
    draws = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8])]
    path = tmp_path / SHIFT_PREDICTIONS
    write_shift_predictions(path, samples, {"compound": draws, "markers": [draws[0]]})
    read = read_shift_predictions(path, "compound")
    assert read == {str(s.path): [draws[0][i], draws[1][i]] for i, s in enumerate(samples)}
    assert read_shift_predictions(path, "reframe") == {}


def test_saturated_scores_keep_the_order_the_table_shows(tmp_path):
    """Scores rounded to six decimals tied a confident model's positives with its one confident
    false positive: the margin read back said the table's leader was behind."""
    from sklearn.metrics import roc_auc_score

    samples = _samples(60)
    y = np.array([s.label for s in samples])
    confident = np.where(y == 1, np.float32(0.9999999), 0.1).astype(float)
    confident[np.flatnonzero(y == 0)[0]] = float(np.float32(0.9999996))  # one confident FP
    other = np.where(y == 1, np.linspace(0.6, 0.99, 60), 0.1)
    other[np.flatnonzero(y == 0)[0]] = 0.7
    runs = {
        "confident": _scored_run(tmp_path / "a", confident, [confident], n=60),
        "other": _scored_run(tmp_path / "b", other, [other], n=60),
    }
    expected = roc_auc_score(y, confident) - roc_auc_score(y, other)
    (margin,) = margins_over(runs, "confident", "roc_auc", "val").margins
    assert expected > 0 and margin.difference.difference == pytest.approx(expected)


def test_a_leader_without_others_says_so_instead_of_an_empty_table():
    text = Margins("roc_auc", "only").markdown("val")
    assert "No other model to compare it with." in text and "| other model |" not in text


def test_margins_say_how_many_resamples_an_interval_rests_on_and_where_there_is_none():
    """Resamples with one class had no AUC difference and were left out unsaid; where so many
    were that a tail of the interval could be among them, the table gave one all the same."""
    kept = PairedDifference(0.02, -0.01, 0.05, 990, 1000, 24)
    withheld = PairedDifference(0.02, float("nan"), float("nan"), 900, 1000, 24)
    whole = PairedDifference(0.02, 0.01, 0.05, 1000, 1000, 24)
    margins = Margins("roc_auc", "lead", [Margin("a", kept), Margin("b", withheld)])
    text = margins.markdown("val")
    assert "| a | +0.0200 | [-0.0100, +0.0500] (990 of 1,000 resamples) | no |" in text
    assert "| b | +0.0200 | none (900 of 1,000 resamples define it) | no |" in text
    assert "with more than 24 of 1,000 left out it has none" in text and "nan" not in text
    text = Margins("roc_auc", "lead", [Margin("c", whole)]).markdown("val")
    assert "| c | +0.0200 | [+0.0100, +0.0500] | yes |" in text and "left out" not in text


def test_margins_group_by_the_patients_the_evaluation_recorded(tmp_path, monkeypatch):
    """A DICOM's patient is its PatientID tag, read when it was evaluated: the margins take it
    from predictions.csv, not from the path (which may have moved, or name a UID)."""
    y = (np.arange(N) % 2).astype(float)
    recorded = [Sample(s.path, s.label, f"dicom:P{i // 4}") for i, s in enumerate(_samples())]
    runs = {}
    for name, scores in {"a": y, "b": 1 - y}.items():
        folder = RunDir(tmp_path / name).eval_dir("val")
        folder.mkdir(parents=True)
        write_predictions(folder / PREDICTIONS, recorded, scores)
        (folder / METRICS).write_text("{}")
        runs[name] = RunDir(tmp_path / name)
    seen: list[list[str]] = []

    def recording(labels, leader, other, patients):
        seen.append(sorted(patients))
        return paired_auc_difference(labels, leader, other, patients)

    monkeypatch.setattr(selection, "paired_auc_difference", recording)
    margins_over(runs, "a", "roc_auc")
    assert seen == [sorted(s.patient for s in recorded)]

    for run in runs.values():  # files written before patients were recorded: read from names
        rows = (run.eval_dir("val") / PREDICTIONS).read_text().splitlines()
        (run.eval_dir("val") / PREDICTIONS).write_text(
            "\n".join(line.rsplit(",", 1)[0] for line in rows) + "\n"
        )
    seen.clear()
    margins_over(runs, "a", "roc_auc")
    assert seen == [sorted(s.patient for s in _samples())]
