"""RunDir and RunMeta: reading, writing, the unfinished and broken cases, and the migration of
run directories written by pneumolab 0.1 (the unversioned meta.json format)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_run, fixed_threshold_meta, held_only
from pneumolab.data.layout import Sample
from pneumolab.errors import RunDirError
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir, read_predictions, write_predictions
from pneumolab.run_meta import RECORDED_LIBRARIES, SCHEMA_VERSION
from pneumolab.training.fit import resolve_precision

FIXTURES = Path(__file__).parent / "fixtures"


def legacy_meta(name: str) -> dict:
    """meta.json exactly as pneumolab 0.1 wrote it (tests/fixtures/meta_v1_*.json, copied from
    runs trained by main before the schema had a version)."""
    return json.loads((FIXTURES / f"meta_v1_{name}.json").read_text())


def as_legacy_run(run_dir: Path, dest: Path, meta: dict) -> RunDir:
    """A copy of ``run_dir`` whose meta.json is replaced by ``meta`` in the old format."""
    run = RunDir(copy_run(run_dir, dest))
    run.meta.write_text(json.dumps(meta, indent=2) + "\n")
    return run


def test_meta_round_trips_with_nan(tmp_path):
    run = RunDir(tmp_path)
    meta = fixed_threshold_meta("pneumolab_cnn_small", 32, 0.25)
    meta = meta.model_copy(
        update={"val_metrics": meta.val_metrics.model_copy(update={"roc_auc": math.nan})}
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    run.write_meta(meta)
    assert "NaN" in run.meta.read_text()
    read = run.read_meta()
    assert math.isnan(read.val_metrics.roc_auc)
    assert read.model_copy(update={"val_metrics": meta.val_metrics}) == meta
    assert read.schema_version == SCHEMA_VERSION and not read.is_ensemble


def test_tiny_run_meta_is_complete(tiny_run):
    run_dir, _ = tiny_run
    meta = RunDir(run_dir).read_meta()
    assert meta.schema_version == SCHEMA_VERSION
    assert (meta.intensity, meta.task, meta.strategy) == ("clahe", "binary", "finetune")
    assert meta.preprocessing.mean == [0.5, 0.5, 0.5] and meta.torch_version
    assert meta.default_point.threshold == meta.threshold
    assert set(meta.library_versions) == set(RECORDED_LIBRARIES)  # all installed with pneumolab
    assert meta.library_versions["timm"] == version("timm")
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert f"opencv-python-headless {version('opencv-python-headless')}" in card
    assert meta.compute is not None and meta.compute.threads == torch.get_num_threads()
    assert meta.compute.precision.startswith(resolve_precision("auto"))  # "32" is "32-true"
    assert f"`{meta.compute.precision}` precision on {meta.compute.device}" in card
    assert json.loads((run_dir / "meta.json").read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid run metadata file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"model": "x"}', "not a valid run metadata file"),
        (json.dumps({"schema_version": SCHEMA_VERSION + 1}), "newer than this pneumolab"),
    ],
)
def test_broken_meta_is_a_clear_error(tmp_path, content, message):
    run = RunDir(tmp_path)
    run.meta.write_text(content)
    with pytest.raises(RunDirError, match=message) as caught:
        run.read_meta()
    assert str(run.meta) in str(caught.value)
    assert not run.is_complete()


def test_missing_and_unfinished_runs(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        RunDir(tmp_path / "nowhere").read_meta()
    run = RunDir(tmp_path)
    with pytest.raises(RunDirError, match="not a finished run"):
        run.read_meta()
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", 32, 0.5))
    with pytest.raises(RunDirError, match="not a finished run"):  # a single run needs weights
        run.read_meta()
    assert not run.is_complete()


def test_a_file_given_as_the_run_is_pointed_to_its_run_only_when_it_is_in_one(tmp_path):
    """``predict x.png y.png`` (the run forgotten) was told "x.png: is a file; give the run
    folder (<the images' folder>)", which is no run either."""
    image = tmp_path / "images" / "x.png"
    image.parent.mkdir()
    image.write_bytes(b"png")
    with pytest.raises(RunDirError) as error:
        RunDir(image).read_meta()
    assert str(error.value) == (
        f"{image}: is a file, not a run folder (one holds meta.json and model.safetensors; "
        "a command takes the run folder first, then its other inputs)"
    )
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", 32, 0.5))
    with pytest.raises(RunDirError, match=r"meta\.json: is a file; give the run folder \(.*run\)$"):
        RunDir(run.meta).read_meta()


def test_a_data_folder_that_does_not_exist_is_named_as_such(tiny_run, tmp_path):
    """``--data`` mistyped was "4 of the run's val images are not under d/nope (first: ...)"."""
    from pneumolab.errors import DataLayoutError

    run = RunDir(tiny_run[0])
    with pytest.raises(DataLayoutError, match=r"nope: not found; give the data folder the run"):
        run.read_split(tmp_path / "nope", "val")
    (tmp_path / "data.zip").write_bytes(b"zip")
    with pytest.raises(DataLayoutError, match=r"data\.zip: is a file, not a dataset folder"):
        run.read_split(tmp_path / "data.zip", "val")
    with pytest.raises(RunDirError, match=r"4 of the run's val images are not under"):
        run.read_split(tmp_path, "val")  # a folder, without the images: as before


def test_legacy_single_run_still_predicts_and_evaluates(tiny_run, tmp_path):
    run_dir, data = tiny_run
    old = legacy_meta("single")
    run = as_legacy_run(run_dir, tmp_path / "old", old)
    meta = run.read_meta()
    assert (meta.threshold, meta.intensity, meta.task) == (old["threshold"], "equalize", "binary")
    assert meta.val_metrics.confusion_matrix == old["val_metrics"]["confusion_matrix"]
    image = next((data / "train" / "PNEUMONIA").iterdir())
    assert Predictor.from_run(run.root).predict(image).threshold == old["threshold"]
    metrics = evaluate(run.root, data, split="val", device="cpu")
    assert list(metrics.operating_points) == list(old["operating_points"])
    # its stored Platt map has slope 0 (every score one probability): not applied, and why
    assert old["platt"]["slope"] == 0 and metrics.platt_scaled is None
    assert metrics.platt_refused is not None and "slope 0" in metrics.platt_refused


def test_legacy_ensemble_still_predicts_and_evaluates(tiny_run, tmp_path):
    run_dir, data = tiny_run
    for name in ("a", "b"):
        as_legacy_run(run_dir, tmp_path / name, legacy_meta("single"))
    old = legacy_meta("ensemble")
    ensemble = RunDir(tmp_path / "ens")
    ensemble.root.mkdir()
    shutil.copyfile(run_dir / "split.csv", ensemble.split)
    ensemble.meta.write_text(json.dumps(old, indent=2))
    (ensemble.root / "members.json").write_text(json.dumps(old["members"]))
    meta = ensemble.read_meta()
    assert meta.is_ensemble and meta.members == ["../a", "../b"]
    assert meta.torch_version is None and meta.preprocessing.mean is None
    assert [m.root.name for m in ensemble.member_runs()] == ["a", "b"]
    predictor = Predictor.from_run(ensemble.root)
    assert predictor.model is None and predictor.threshold == old["threshold"]
    metrics = evaluate(ensemble.root, data, split="val", device="cpu")
    single = Predictor.from_run(tmp_path / "a")
    image = next((data / "train" / "NORMAL").iterdir())
    assert predictor.predict(image).probability == pytest.approx(
        single.predict(image).probability, abs=1e-6
    )  # two identical members: the mean is the member's score
    val_rows = [line for line in ensemble.split.read_text().splitlines() if line.endswith(",val")]
    assert metrics.n == len(val_rows) > 0


def test_legacy_three_class_meta_keeps_its_subtype_metrics(tmp_path):
    old = legacy_meta("three_class")
    run = RunDir(tmp_path)
    run.meta.write_text(json.dumps(old))
    (tmp_path / "model.safetensors").write_bytes(b"")
    meta = run.read_meta()
    assert meta.task == "three_class" and meta.subtype_names == ["NORMAL", "BACTERIAL", "VIRAL"]
    subtypes = meta.val_subtype_metrics
    assert subtypes is not None
    assert (
        subtypes.per_class["BACTERIAL"].f1
        == old["val_subtype_metrics"]["per_class"]["BACTERIAL"]["f1-score"]
    )
    run.write_meta(meta)
    rewritten = json.loads(run.meta.read_text())
    assert rewritten["val_subtype_metrics"] == old["val_subtype_metrics"]
    assert rewritten["schema_version"] == SCHEMA_VERSION


def test_oldest_runs_without_operating_points_or_calibration_still_evaluate(tiny_run, tmp_path):
    run_dir, data = tiny_run
    old = legacy_meta("single")
    for key in ("operating_points", "default_operating_point", "temperature", "platt"):
        del old[key]
    for key in ("intensity", "preprocessing", "class_names", "task", "torch_version"):
        del old[key]
    run = as_legacy_run(run_dir, tmp_path / "old", old)
    meta = run.read_meta()
    assert meta.intensity == "none"  # what those runs were trained with
    assert list(meta.operating_points) == ["stored"]
    metrics = evaluate(run.root, data, split="val", device="cpu")
    assert list(metrics.operating_points) == ["stored"]
    assert metrics.operating_points["stored"].threshold == old["threshold"]
    assert metrics.temperature_scaled is None and metrics.platt_scaled is None
    assert (run.root / "eval" / "val" / "reliability.png").stat().st_size > 0


def test_ensemble_flag_comes_from_meta_only(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    (run.root / "members.json").write_text('["../elsewhere"]')  # a stray file changes nothing
    assert not run.read_meta().is_ensemble and run.member_runs() == []


@pytest.mark.parametrize("with_tta", [True, False])
def test_validation_predictions_round_trip(tmp_path, with_tta):
    samples = [Sample(Path(f"x/{i}.png"), i % 2, "") for i in range(3)]
    probs, tta_probs = np.array([0.1, 0.7, 0.25]), np.array([0.2, 0.8, 0.3])
    write_predictions(tmp_path / "p.csv", samples, probs, tta_probs if with_tta else None)
    rows = read_predictions(tmp_path / "p.csv")
    assert [r.path for r in rows] == [str(s.path) for s in samples]
    assert [r.label for r in rows] == [0, 1, 0]
    assert [r.probability for r in rows] == pytest.approx(probs.tolist())
    expected = tta_probs.tolist() if with_tta else [None] * 3
    assert [r.tta_probability for r in rows] == pytest.approx(expected)


@pytest.mark.parametrize("column", ["probability", "tta_probability"])
def test_a_score_that_is_not_a_number_names_its_file_and_line(tmp_path, column):
    """An edited validation file with a NaN chose an ensemble's threshold below its target
    sensitivity (NaN sorts first and is never called positive), or failed in scikit-learn."""
    samples = [Sample(Path(f"x/{i}.png"), i % 2, "") for i in range(3)]
    probs = np.array([0.1, 0.7, 0.25])
    scores = {"probability": probs.copy(), "tta_probability": probs.copy()}
    scores[column][1] = np.nan
    path = tmp_path / "p.csv"
    write_predictions(path, samples, scores["probability"], scores["tta_probability"])
    with pytest.raises(RunDirError, match=r"p\.csv: line 3: a score that is not a finite number"):
        read_predictions(path)


def test_files_written_as_utf8_are_read_back_as_utf8_under_an_ascii_locale(tmp_path):
    """split.csv and the prediction files are written as UTF-8; they were read back in the
    locale's encoding, so a non-ASCII image name failed to decode under LC_ALL=C."""
    samples = [Sample(Path("x/é.png"), 0, "p")]
    write_predictions(tmp_path / "p.csv", samples, np.array([0.25]), None)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.split.write_text("path,label,patient,subset\nx/é.png,0,p,val\n", encoding="utf-8")
    script = (
        "import sys; from pathlib import Path; from pneumolab.run import RunDir, read_predictions; "
        "assert sys.flags.utf8_mode == 0; "
        f"print(read_predictions(Path({str(tmp_path / 'p.csv')!r}))[0].path == 'x/\\u00e9.png', "
        f"RunDir(Path({str(run.root)!r})).saved_split().rows('val')[0]['path'] == 'x/\\u00e9.png')"
    )
    env = os.environ | {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


def test_split_mismatch_names_a_run_of_another_split_and_the_first(tmp_path):
    """It compares the splits as the caller read them (each once: the first run's was read
    again beside every other run's, then each again for its images)."""
    from pneumolab.run import split_mismatch

    runs = [RunDir(tmp_path / name) for name in ("a", "b", "c", "d")]
    for run in runs:
        run.root.mkdir()
        run.split.write_text("path,label,patient,subset\nx.png,0,p,val\n")
    assert split_mismatch(run.saved_split() for run in runs) is None
    runs[2].split.write_text("path,label,patient,subset\ny.png,0,p,val\n")
    assert split_mismatch(run.saved_split() for run in runs) == (runs[2], runs[0])
    assert split_mismatch([]) is None


def test_the_platt_warning_checks_and_adds_its_run_under_one_lock(tmp_path, monkeypatch, caplog):
    """The once-per-run warning checked its set and added to it in two steps: two threads
    loading the run at once (the HTTP server loads on threads) both passed the check and both
    warned. The check and the add are one step under a lock (:class:`pneumolab.once.Once`,
    asserted by a stand-in, so no thread timing is needed), and a run is told once."""
    import logging

    from pneumolab import run as run_module
    from pneumolab.once import Once

    monkeypatch.setattr(run_module, "_TOLD_PLATT_IGNORED", Once())
    steps = held_only(run_module._TOLD_PLATT_IGNORED)
    with caplog.at_level(logging.WARNING, logger="pneumolab.run"):
        for _ in range(2):
            run_module._tell_stored_platt_ignored(tmp_path, "its slope is -0.861")
    assert steps == ["check", "claim", "check"]
    assert len([r for r in caplog.records if "Platt calibration map" in r.getMessage()]) == 1
