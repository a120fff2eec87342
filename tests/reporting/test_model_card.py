"""MODEL_CARD.md: written at the end of training, with every section and the threshold."""

from __future__ import annotations

import json

from conftest import copy_run
from pneumolab.evaluation.bootstrap import INTERVAL_METHOD
from pneumolab.reporting.model_card import write_model_card
from pneumolab.run import RunDir
from pneumolab.run_meta import RunMeta

SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Training data",
    "## Validation metrics",
    "## Operating point",
    "## Limitations and failure modes",
    "## How to evaluate on the held-out test split",
)


def test_tiny_run_has_a_model_card(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    card = (run.root / "MODEL_CARD.md").read_text()
    for heading in SECTIONS:
        assert heading in card
    meta = run.read_meta()
    assert f"{meta.threshold:.4f}" in card
    assert "not a medical device" in card.lower()
    assert "without confidence intervals" in card
    for name in meta.operating_points:
        assert f"`{name}`" in card
    assert f"T = {meta.temperature:.3f}" in card
    assert f"sigmoid({meta.platt.slope:.3f}" in card
    assert "strategy: finetune" in card
    assert "No bacterial/viral distinction" in card  # a binary run says so
    assert meta.best_epoch == 0 and "- Best epoch: 1;" in card  # as training printed it (1/1)

    (run.eval_dir("val")).mkdir(parents=True)
    metrics = evaluation_of(meta) | {"ci95": {"roc_auc": [0.125, 0.875]}}
    (run.eval_dir("val") / "metrics.json").write_text(json.dumps(metrics))
    card = write_model_card(run).read_text()
    assert "0.1250 – 0.8750" in card
    assert "without confidence intervals" not in card
    # written before shares were bounded exactly: the card claimed the current method for it
    assert "by an earlier version's method" in card and "Clopper-Pearson" not in card
    uncounted = metrics | {"interval_method": INTERVAL_METHOD}  # before resamples were counted
    (run.eval_dir("val") / "metrics.json").write_text(json.dumps(uncounted))
    card = write_model_card(run).read_text()
    assert "written before the resamples behind them were counted" in card
    counts = {"drawn": 1000, "max_dropped": 24, "used": {"roc_auc": 1000}}
    current = uncounted | {"ci95_resamples": counts}
    (run.eval_dir("val") / "metrics.json").write_text(json.dumps(current))
    card = write_model_card(run).read_text()
    assert "Clopper-Pearson" in card and "earlier version" not in card
    assert "were counted" not in card


def evaluation_of(meta: RunMeta) -> dict[str, object]:
    """A validation evaluation's metrics.json with the run's own validation figures."""
    return meta.val_metrics.model_dump() | {"split": "val", "model": meta.model}


def test_the_card_reads_no_tta_evaluation_and_survives_a_broken_one(tiny_run, tmp_path, caplog):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    meta = run.read_meta()
    run.eval_dir("val").mkdir(parents=True)
    metrics_file = run.eval_dir("val") / "metrics.json"
    tta = evaluation_of(meta) | {"tta": True, "ci95": {"roc_auc": [0.125, 0.875]}}
    metrics_file.write_text(json.dumps(tta))  # figures at the TTA threshold, not the card's
    card = write_model_card(run).read_text()
    assert "0.1250 – 0.8750" not in card and "without confidence intervals" in card
    for broken in ('{"roc_auc": 0.9', json.dumps({"roc_auc": 0.9})):  # cut short; not metrics
        caplog.clear()
        metrics_file.write_text(broken)
        card = write_model_card(run).read_text()
        assert "without confidence intervals" in card
        assert f"{metrics_file}: not readable as an evaluation's metrics" in caplog.text
    assert "(accuracy: Field required)" in caplog.text  # the field is named


def test_the_card_names_the_export_that_scored_its_figures(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    run.eval_dir("val").mkdir(parents=True)
    metrics = evaluation_of(run.read_meta()) | {"ci95": {"roc_auc": [0.125, 0.875]}}
    for backend, named in (("torch", False), ("onnx-int8", True), ("openvino", True)):
        (run.eval_dir("val") / "metrics.json").write_text(
            json.dumps(metrics | {"backend": backend})
        )
        card = write_model_card(run).read_text()
        assert "0.1250 – 0.8750" in card
        assert (f"scored by the `{backend}` export" in card) is named


def test_the_operating_points_provenance_is_text_not_markup(tiny_run, tmp_path):
    """It names the run's folder, and ``r<b>x|[a](http:e)`` rendered as HTML and a link."""
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    meta = run.read_meta()
    odd = "validation split of r<b>x|[a](http:e)"
    points = {
        name: point.model_copy(update={"provenance": odd})
        for name, point in meta.operating_points.items()
    }
    run.write_meta(meta.model_copy(update={"operating_points": points}))
    card = write_model_card(run).read_text()
    assert "r<b>x" not in card and "[a](http:e)" not in card
    assert "r&lt;b&gt;x&#124;\\[a\\](http:e)" in card


def test_a_card_edited_since_pneumolab_wrote_it_is_kept(tiny_run, tmp_path, caplog):
    """A site's note in the card was deleted, without a word, by the next report."""
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    card = write_model_card(run)
    write_model_card(run)  # as pneumolab wrote it: rewritten, nothing kept
    assert sorted(p.name for p in run.root.glob("MODEL_CARD*")) == ["MODEL_CARD.md"]
    card.write_text(
        card.read_text().replace("## Intended use", "Site sign-off: 2026-12-07\n\n## Intended use")
    )
    edited = card.read_text()
    write_model_card(run)
    (kept,) = run.root.glob("MODEL_CARD.edited-*.md")
    assert kept.read_text() == edited and "Site sign-off" not in card.read_text()
    assert f"that version is kept as {kept.name}" in caplog.text
    write_model_card(run)  # the rewritten card is pneumolab's again: no second copy
    assert len(list(run.root.glob("MODEL_CARD.edited-*.md"))) == 1
    with card.open("a", encoding="utf-8") as f:  # a sign-off under the mark was not seen
        f.write("Signed off: Dr X\n")
    write_model_card(run)
    assert len(list(run.root.glob("MODEL_CARD.edited-*.md"))) == 2


def test_an_unedited_card_is_not_kept_under_a_locale_that_is_not_utf8(tiny_run, tmp_path):
    """Read back in the locale's encoding, its dashes and × differed: a copy at every report."""
    import os
    import subprocess
    import sys

    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    write_model_card(run)
    env = os.environ | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = (
        "import sys; from pneumolab.reporting.model_card import write_model_card; "
        "from pathlib import Path; from pneumolab.run import RunDir; "
        "write_model_card(RunDir(Path(sys.argv[1])))"
    )
    subprocess.run([sys.executable, "-c", code, str(run.root)], env=env, check=True)
    assert sorted(p.name for p in run.root.glob("MODEL_CARD*")) == ["MODEL_CARD.md"]


def test_the_card_names_the_seed_that_drew_the_split_and_the_images_left_out(tiny_run, tmp_path):
    """It named `seed` where `split_seed` drew the split (a study's members), and stated
    figures over the images it could read as the validation split's."""
    import yaml

    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    config = yaml.safe_load(run.config.read_text())
    run.config.write_text(yaml.safe_dump(config | {"seed": 3, "split_seed": 7}))
    run.eval_dir("val").mkdir(parents=True)
    skipped = {"skipped": ["/data/train/NORMAL/IM-0005-0001.png"], "n": 3}
    metrics = evaluation_of(run.read_meta()) | skipped
    (run.eval_dir("val") / "metrics.json").write_text(json.dumps(metrics))
    card = write_model_card(run).read_text()
    assert "no child on both sides), seed 7," in card
    assert (
        "1 image(s) of the split could not be read and are left out of these figures (n = 3)"
        in card
    )
    assert "IM-0005-0001.png" in card


def test_evaluate_on_validation_rewrites_the_card_with_its_intervals(tiny_run, tmp_path, capsys):
    """The card pointed at ``eval/val/metrics.json``, but nothing rewrote it after
    ``evaluate --split val``: it kept training's figures without intervals."""
    from pneumolab.cli import main

    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    card = run.root / "MODEL_CARD.md"
    assert "without confidence intervals" in card.read_text()
    assert main(["evaluate", str(run.root), "--data", str(tiny_run[1]), "--split", "val"]) == 0
    assert "without confidence intervals" not in card.read_text()
    assert "From `eval/val/metrics.json`" in card.read_text()
    assert f"rewrote {card}" in capsys.readouterr().err
    written = card.read_text()  # a TTA evaluation, at another threshold, leaves it as it is
    evaluate = ["evaluate", str(run.root), "--data", str(tiny_run[1]), "--split", "val", "--tta"]
    assert main(evaluate) == 0
    assert card.read_text() == written and "rewrote" not in capsys.readouterr().err


def test_the_python_evaluate_rewrites_the_card_as_the_command_does(tiny_run, tmp_path):
    """``pneumolab.evaluate`` (the Python API) left the card with training's figures while
    ``eval/val`` held the evaluation's: only the command line rewrote it."""
    import pneumolab
    from pneumolab.evaluation.bootstrap import interval_text

    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    card = run.root / "MODEL_CARD.md"
    assert "without confidence intervals" in card.read_text()
    metrics = pneumolab.evaluate(str(run.root), str(tiny_run[1]), split="val", device="cpu")
    written = card.read_text()
    assert "without confidence intervals" not in written
    assert "From `eval/val/metrics.json`" in written
    row = f"| accuracy | {metrics.accuracy:.4f} | {interval_text(metrics, 'accuracy')} |"
    assert row in written
    pneumolab.evaluate(run, tiny_run[1], split="val", device="cpu", tta=True)  # another threshold
    assert card.read_text() == written
