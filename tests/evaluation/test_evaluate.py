"""evaluate() end to end on a tiny synthetic run: new keys, figures, test-split log."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

import pneumolab
from conftest import copy_run, dirty_suffix, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.errors import DataLayoutError, ModelError
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.heldout import log_test_evaluation
from pneumolab.pipeline.train import train
from pneumolab.results import EvaluationMetrics, SubtypeMetrics
from pneumolab.run import RunDir

pytestmark = pytest.mark.slow  # trains its own models

TINY = dict(
    model="pneumolab_cnn_small", pretrained=False, image_size=32, batch_size=8, num_workers=0
)
NEW_KEYS = {
    "ci95",
    "brier",
    "ece",
    "pr_auc",
    "balanced_accuracy",
    "operating_points",
    "oracle",
    "temperature_scaled",
    "test_evaluations_count",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch run on synthetic ``train/``, plus a synthetic ``test/`` split."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_synthetic_dataset(root / "data", per_class=20)
    shutil.move(
        write_synthetic_dataset(root / "other", per_class=10, seed=1) / "train", data / "test"
    )
    run = train(data, root / "run", TrainConfig(epochs=1, **TINY))
    return run.root, data


def test_validation_evaluation_has_the_clinical_keys(trained):
    run_dir, data = trained
    metrics = evaluate(run_dir, data, split="val", device="cpu")
    assert metrics.test_evaluations_count == 0
    for name in ("accuracy", "brier"):
        low, high = metrics.ci95[name]
        assert low - 1e-9 <= getattr(metrics, name) <= high + 1e-9, name
    counts = metrics.ci95_resamples
    assert counts is not None and counts.drawn == 1000 and counts.dropped("accuracy") == 0
    # six validation children: about 3% of the resamples hold one class and have no ROC AUC,
    # more than a tail of the interval holds: it has none, and says why
    assert counts.dropped("roc_auc") > counts.max_dropped
    assert all(math.isnan(bound) for bound in metrics.ci95["roc_auc"])
    meta = json.loads((run_dir / "meta.json").read_text())
    points = metrics.operating_points
    assert set(points) == {"sensitivity_95", "youden", "cost_ratio_5"}
    assert points["sensitivity_95"].threshold == metrics.threshold == meta["threshold"]
    assert points["youden"].provenance.startswith("validation split of run, n=")
    assert points["sensitivity_95"].metrics.sensitivity >= 0.95  # chosen on this split
    assert metrics.oracle is not None and "diagnosis only" in metrics.oracle.note
    assert metrics.temperature_scaled is not None and metrics.platt_scaled is not None
    assert metrics.temperature_scaled.temperature == meta["temperature"]
    assert metrics.platt_scaled.slope == meta["platt"]["slope"]
    assert metrics.platt_scaled.ece >= 0
    written = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    assert written.keys() >= NEW_KEYS
    back = EvaluationMetrics.model_validate(written)
    assert back.to_json() == metrics.to_json()  # read back: the same figures (as JSON: NaN != NaN)
    for figure in ("reliability.png", "decision_curve.png"):
        assert (run_dir / "eval" / "val" / figure).stat().st_size > 0


def test_metrics_json_writes_undefined_figures_as_null_and_reads_them_back_as_nan(trained):
    """A split of one class: ROC AUC and specificity are undefined; metrics.json is plain JSON
    (null, not NaN) and reads back into the same metrics."""
    run_dir, data = trained
    metrics = evaluate(run_dir, data, split="val", device="cpu")
    one_class = metrics.model_copy(update={"roc_auc": math.nan, "specificity": math.nan})
    text = one_class.to_json(indent=2)
    assert "NaN" not in text
    written = json.loads(text)
    assert written["roc_auc"] is None and written["specificity"] is None
    assert "robustness" not in written and "shift" not in written  # not computed: left out
    assert written["temperature_scaled"] is not None and "oracle" in written
    back = EvaluationMetrics.model_validate_json(text)
    assert math.isnan(back.roc_auc) and math.isnan(back.specificity)
    assert back.to_json() == one_class.to_json()  # the same figures (as JSON: NaN != NaN)
    # a three-class evaluation whose split lacks a subtype: its undefined figures too
    subtypes = SubtypeMetrics(
        classes=["NORMAL", "BACTERIAL", "VIRAL"],
        per_class={},
        accuracy=0.5,
        macro_roc_auc=math.nan,
        bacterial_vs_viral_accuracy=math.nan,
        confusion_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 0]],
    )
    three = EvaluationMetrics.model_validate_json(
        one_class.model_copy(update={"subtypes": subtypes}).to_json()
    )
    assert three.subtypes is not None and math.isnan(three.subtypes.macro_roc_auc)


def test_every_test_evaluation_is_logged(trained):
    run_dir, data = trained
    log = run_dir / "test_evaluations.jsonl"
    log.unlink(missing_ok=True)
    assert evaluate(run_dir, data, split="test", device="cpu").test_evaluations_count == 1
    assert evaluate(run_dir, data, split="test", device="cpu").test_evaluations_count == 2
    assert evaluate(run_dir, data, split="val", device="cpu").test_evaluations_count == 2
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 2
    config_hash = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    for entry in entries:
        assert entry.keys() == {"time_utc", "pneumolab_version", "git_commit", "config_sha256"}
        assert entry["config_sha256"] == config_hash
        assert entry["time_utc"].endswith("+00:00")
    # the commit of the checkout the package runs from (None outside a git checkout)
    package = Path(pneumolab.__file__).parent
    found = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True)
    expected = (
        found.stdout.decode().strip() + dirty_suffix(package) if found.returncode == 0 else None
    )
    assert [entry["git_commit"] for entry in entries] == [expected, expected]


def test_a_look_that_cannot_be_recorded_is_not_taken(trained, tmp_path):
    """The held-out log could not be written (a read-only run folder): the test figures were
    written and shown, and the look was not counted."""
    run_dir, data = trained
    run = RunDir(copy_run(run_dir, tmp_path / "run"))
    shutil.rmtree(run.root / "eval", ignore_errors=True)
    (run.root / "test_evaluations.jsonl").unlink(missing_ok=True)
    (run.root / "test_evaluations.jsonl").mkdir()  # stands for a log that cannot be appended to
    with pytest.raises(OSError) as refused:
        evaluate(run.root, data, split="test", device="cpu")
    assert refused.value.filename == str(run.root / "test_evaluations.jsonl")
    assert not (run.root / "eval" / "test").exists()


def test_test_log_without_git_records_no_commit(trained, tmp_path, monkeypatch):
    run_dir, _ = trained
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program to run
    run = RunDir(copy_run(run_dir, tmp_path / "run"))
    log_test_evaluation(run)
    entry = json.loads((run.root / "test_evaluations.jsonl").read_text().splitlines()[-1])
    assert entry["git_commit"] is None and entry["config_sha256"]


def test_shift_protocol_adds_every_scenario_and_the_batch_breakdown(trained):
    from pneumolab.evaluation.shift import SCENARIOS

    run_dir, data = trained
    metrics = evaluate(run_dir, data, split="val", device="cpu", shift=True)
    assert metrics.shift is not None and list(metrics.shift) == list(SCENARIOS)
    summary = metrics.shift_summary
    assert summary is not None
    assert summary.compound_roc_auc == metrics.shift["compound"].mean_roc_auc
    assert summary.compound_sensitivity == metrics.shift["compound"].mean_sensitivity
    assert summary.worst_scenario_roc_auc <= summary.compound_roc_auc
    # the synthetic normals are all IM- files: one normal batch, with every normal counted
    batches = metrics.acquisition_batches
    assert batches is not None and list(batches) == ["IM"]
    assert batches["IM"].n_normal == sum(metrics.confusion_matrix[0])
    shifted = RunDir(run_dir).eval_dir("val") / "shift_predictions.csv"
    assert shifted.is_file()
    evaluate(run_dir, data, split="val", device="cpu")  # no shift: no earlier shifted scores
    assert not shifted.exists()  # (a study's margins would read them as this evaluation's)


def test_an_evaluation_stopped_while_writing_leaves_the_earlier_one_whole(trained, monkeypatch):
    """A kill (or full disk) while the figures are drawn must not leave the new predictions
    beside the earlier metrics, which a study's margins and the model card would mix."""
    from pneumolab.evaluation import writer

    run_dir, data = trained
    evaluate(run_dir, data, split="val", device="cpu", shift=True)
    folder = RunDir(run_dir).eval_dir("val")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "evaluation_figures", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run_dir, data, split="val", device="cpu")  # would drop shift_predictions.csv
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    leftovers = [*folder.iterdir(), *folder.parent.iterdir()]
    assert not [p.name for p in leftovers if p.name.startswith(".")]  # no staging folder


def test_a_split_with_no_readable_image_is_a_clear_error(trained, tmp_path):
    run_dir, data = trained
    broken = tmp_path / "data"
    for image in (data / "test").rglob("*.png"):
        copy = broken / image.relative_to(data)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(b"not an image")
    run = RunDir(copy_run(run_dir, tmp_path / "run"))
    (run.root / "test_evaluations.jsonl").unlink(missing_ok=True)
    with pytest.raises(
        DataLayoutError, match=r"the test split: none of its 20 images could be read"
    ):
        evaluate(run.root, broken, split="test", device="cpu")
    # a look that failed left an empty held-out log behind, as if the run had one
    assert not (run.root / "test_evaluations.jsonl").exists()


def test_scores_that_are_not_numbers_are_named_not_a_traceback(trained):
    """sklearn's "Input contains NaN." ended a traceback naming neither run nor image."""
    from pneumolab.evaluation.scoring import compute_evaluation
    from pneumolab.inference.predictor import Predictor
    from pneumolab.inference.scores import Scores

    run_dir, data = trained
    predictor = Predictor.from_run(run_dir)
    scorer = predictor.scorer

    def one_nan(pixels):
        scores = scorer(pixels)
        scores.probability[1] = math.nan
        return Scores(scores.probability, scores.ood)

    predictor.scorer = one_nan
    with pytest.raises(ModelError, match=r"not a finite number for 1 of \d+ images \(first: /"):
        compute_evaluation(predictor, data, "val")


def test_a_split_readable_in_one_class_only(trained, tmp_path, capsys):
    """Evaluate reports what one class allows (dashes elsewhere, robustness and shift tables
    included: they raised a TypeError); compare, which ranks by AUC, refuses by name."""
    from pneumolab.cli import main

    run_dir, data = trained
    one_class = tmp_path / "data"
    for image in (data / "test").rglob("*.png"):
        copy = one_class / image.relative_to(data)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(b"junk" if image.parent.name == "NORMAL" else image.read_bytes())
    run = copy_run(run_dir, tmp_path / "run")
    args = ["--data", str(one_class), "--split", "test"]
    assert main(["evaluate", str(run), *args, "--robustness", "--shift"]) == 0
    printed = capsys.readouterr().out  # the tables are the result: stdout (they went to stderr)
    assert "robustness" in printed and "shift protocol" in printed and "— (—)" in printed
    compare = ["compare", str(run), str(run_dir), *args, "--out", str(tmp_path / "cmp")]
    assert main(compare) == 2
    assert "the test images that could be read are all of one class" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_hostile_run_names_stay_inside_their_cells_and_figures(trained, tmp_path):
    """A run folder named with '|', HTML and mathtext: the Markdown table kept its columns,
    no markup got through, and the figures drew the '$' as written (matplotlib's mathtext
    crashed compare after results.csv was written)."""
    from pneumolab.cli import main
    from pneumolab.reporting.model_card import write_model_card

    run_dir, data = trained
    hostile = copy_run(run_dir, tmp_path / "r<img src=x onerror=alert(1)>|$\\foo$")
    formula = copy_run(run_dir, tmp_path / "=HYPERLINK(1)")
    out = tmp_path / "cmp"
    args = ["compare", str(hostile), str(run_dir), str(formula), "--data", str(data)]
    assert main([*args, "--split", "test", "--out", str(out)]) == 0
    with (out / "results.csv").open(newline="") as f:  # a spreadsheet shows it as text
        assert "'=HYPERLINK(1)" in [row["name"] for row in csv.DictReader(f)]
    table = (out / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| r&lt;img")]
    assert len(rows) == 1 and rows[0].count("|") == table[2].count("|")  # the header's columns
    assert "<img" not in (out / "results.md").read_text() + (out / "margins.md").read_text()
    assert (out / "results.png").is_file()
    card = write_model_card(RunDir(hostile)).read_text()
    assert "# Model card: r&lt;img src=x onerror=alert(1)&gt;&#124;$\\\\foo$" in card
    assert f"pneumolab evaluate '{hostile}' --data" in card  # quoted for the shell
