"""The scope gate end to end: every answer says whether the input is in scope, and why not."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import copy_run
from pneumolab.cli import main
from pneumolab.inference.prediction import OUT_OF_SCOPE_LABEL
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir
from pneumolab.scope.ood import METHOD, OodModel

CT = get_testdata_file("CT_small.dcm")
gradcam = importlib.import_module("pneumolab.explain.gradcam")  # the module, not the function


@pytest.fixture
def run_dir(tiny_run) -> Path:
    return tiny_run[0]


@pytest.fixture
def data(tiny_run) -> Path:
    return tiny_run[1]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    arrays = {
        "black": np.zeros((300, 300), dtype=np.uint8),
        "one_pixel": np.full((1, 1), 128, dtype=np.uint8),
        "strip": rng.integers(0, 256, (3, 4000), dtype=np.uint8),
    }
    paths = {}
    for name, pixels in arrays.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths


def test_training_stores_an_ood_model_that_flags_at_most_one_percent_of_validation(run_dir):
    ood = OodModel.load(RunDir(run_dir).ood)
    assert ood.method == METHOD and ood.scorer is not None
    assert len(ood.val_scores) > 0 and ood.val_flagged_fraction <= 0.01


def test_training_images_are_in_scope_with_their_class_label(run_dir, data):
    """The threshold flags at most 1% of validation, so a training image may sit just above it;
    the typical one (median OOD score of the class folder) is in scope, with a class label."""
    predictor = Predictor.from_run(run_dir)
    results = [predictor.predict(p) for p in sorted((data / "train" / "PNEUMONIA").iterdir())]
    typical = sorted(results, key=lambda r: r.ood_score or 0.0)[len(results) // 2]
    assert typical.in_scope and typical.reasons == ()
    assert typical.label in ("NORMAL", "PNEUMONIA")
    assert typical.ood_score is not None and typical.ood_threshold is not None
    assert sum(r.in_scope for r in results) >= 0.5 * len(results)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("black", "empty image"), ("one_pixel", "too small"), ("strip", "aspect ratio")],
)
def test_sanity_failures_are_out_of_scope_but_keep_their_probability(
    run_dir, odd_images, name, reason
):
    predictor = Predictor.from_run(run_dir)
    result = predictor.predict(odd_images[name])
    assert not result.in_scope and result.label == OUT_OF_SCOPE_LABEL
    assert any(reason in r for r in result.reasons), result.reasons
    # the network's own probability for those pixels, not a placeholder
    raw = predictor.backend(predictor.preprocess_array(odd_images[name])[None])[0]
    assert 0.0 < raw < 1.0
    assert result.probability == pytest.approx(float(raw), abs=1e-6)


def test_a_ct_slice_is_out_of_scope_from_its_header(run_dir):
    result = Predictor.from_run(run_dir).predict(CT)
    assert not result.in_scope and result.label == OUT_OF_SCOPE_LABEL
    assert "DICOM Modality CT: not a radiograph (CR, DX, RG expected)" in result.reasons


def test_explain_titles_a_ct_slice_out_of_scope_as_predict_does(run_dir, tmp_path, monkeypatch):
    titles: list[str] = []
    monkeypatch.setattr(gradcam, "_figure", lambda image, heat, title, *out: titles.append(title))
    written = list(gradcam.explain_paths(run_dir, [CT], tmp_path / "maps"))
    assert written == [tmp_path / "maps" / "CT_small.png"]
    assert f"→ {OUT_OF_SCOPE_LABEL}" in titles[0]
    # and why, as predict says (the figure named no reason)
    assert "out of scope: DICOM Modality CT: not a radiograph" in titles[0]


def test_scope_verdict_off_keeps_the_class_label_and_the_flag(run_dir):
    result = Predictor.from_run(run_dir, scope_verdict=False).predict(CT)
    assert not result.in_scope and result.label in ("NORMAL", "PNEUMONIA")


def test_cli_json_and_csv_carry_the_gate(run_dir, odd_images, tmp_path, capsys):
    paths = [CT, str(odd_images["black"])]
    assert main(["predict", str(run_dir), *paths, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["in_scope"] for r in rows] == [False, False]
    assert all(r["label"] == OUT_OF_SCOPE_LABEL and r["reasons"] for r in rows)
    assert {"ood_score", "ood_threshold", "warnings"} <= rows[0].keys()
    assert main(["predict", str(run_dir), *paths, "--json", "--keep-label"]) == 0
    kept = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["label"] in ("NORMAL", "PNEUMONIA") and not r["in_scope"] for r in kept)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), *paths, "--out", str(out)]) == 0
    with out.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["in_scope"] for r in table] == ["false", "false"]
    assert "Modality CT" in table[0]["reasons"]


def test_fit_ood_refits_an_existing_run(run_dir, data, tmp_path, capsys):
    run_dir = copy_run(run_dir, tmp_path / "run")
    run = RunDir(run_dir)
    before = OodModel.load(run.ood)
    run.ood.unlink()
    assert main(["fit-ood", str(run_dir), "--data", str(data)]) == 0
    n_val = sum(1 for row in csv.DictReader(run.split.open()) if row["subset"] == "val")
    err = capsys.readouterr().err  # it counted the augmented copies as validation images
    assert f"of {n_val} validation images and as many augmented copies" in " ".join(err.split())
    after = OodModel.load(run.ood)
    assert after.threshold == pytest.approx(before.threshold, rel=1e-4)
    np.testing.assert_allclose(after.val_scores, before.val_scores, rtol=1e-4)


def test_fit_ood_without_one_readable_validation_image_names_the_split(
    run_dir, data, tmp_path, capsys
):
    """It stopped with ``ValueError: need at least one array to stack``, naming no file."""
    run_dir, broken = copy_run(run_dir, tmp_path / "run"), tmp_path / "data"
    shutil.copytree(data, broken)
    for row in csv.DictReader(RunDir(run_dir).split.open()):
        if row["subset"] == "val":
            (broken / row["path"]).write_bytes(b"junk")
    assert main(["fit-ood", str(run_dir), "--data", str(broken)]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "(validation side): none of its" in err and "images could be read" in err
    assert "Traceback" not in err


def test_fit_ood_on_a_data_folder_mostly_unreadable_keeps_the_gate_it_had(
    run_dir, data, tmp_path, capsys
):
    """With all but two training images unreadable it fitted a gate on those two, replaced the
    run's own and said OK."""
    run_dir, broken = copy_run(run_dir, tmp_path / "run"), tmp_path / "data"
    shutil.copytree(data, broken)
    train = [
        r["path"] for r in csv.DictReader(RunDir(run_dir).split.open()) if r["subset"] == "train"
    ]
    for path in train[2:]:
        (broken / path).write_bytes(b"junk")
    gate = RunDir(run_dir).ood.read_bytes()
    assert main(["fit-ood", str(run_dir), "--data", str(broken)]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"(train side): only 2 of its {len(train)} images could be read; at least 90%" in err
    assert RunDir(run_dir).ood.read_bytes() == gate and "Traceback" not in err


def test_a_run_without_an_ood_model_still_gates_by_sanity_and_header(run_dir, tmp_path):
    copy = tmp_path / "old-run"
    copy.mkdir()
    for name in ("meta.json", "model.safetensors"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    result = Predictor.from_run(copy).predict(CT)
    assert result.ood_score is None and result.ood_threshold is None
    assert not result.in_scope


def test_a_missing_ood_score_under_a_threshold_is_out_of_scope():
    from pneumolab.inference.prediction import ood_reason

    (reason,) = ood_reason(float("nan"), 100.0)
    assert reason.startswith("OOD score unavailable")
    assert ood_reason(float("nan"), None) == ()  # no OOD model at all: nothing to say


@pytest.mark.parametrize("scope_verdict", [True, False])
def test_a_score_that_is_not_a_number_gives_no_class(scope_verdict):
    """NaN >= threshold is false: a network whose output was NaN called every image NORMAL,
    in scope; predict --json then wrote NaN, which is not JSON."""
    from pneumolab.inference.prediction import gated_prediction
    from pneumolab.scope.checks import ScopeChecks

    result = gated_prediction(
        "x.png",
        float("nan"),
        0.5,
        ["NORMAL", "PNEUMONIA"],
        ScopeChecks(),
        ood_score=1.0,
        ood_threshold=10.0,
        scope_verdict=scope_verdict,
    )
    assert result.label == OUT_OF_SCOPE_LABEL and not result.in_scope
    assert result.reasons == ("the model's output is not a finite number (no class can be given)",)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["probability"] is None


def test_a_refitted_gate_is_another_model_version(run_dir, tmp_path):
    run = RunDir(copy_run(run_dir, tmp_path / "run"))
    before = run.model_version()
    ood = OodModel.load(run.ood)
    ood.threshold *= 2
    ood.save(run.ood)
    after = run.model_version()
    assert after != before and after.rsplit(".", 1)[0] == before.rsplit(".", 1)[0]  # same weights


def test_the_audit_compares_with_the_validation_images_themselves(run_dir, tmp_path):
    from pneumolab.evaluation.audit import audit_folder

    folder = tmp_path / "site"
    folder.mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(folder / "a.png")
    ood = OodModel.load(RunDir(run_dir).ood)
    audited = audit_folder(run_dir, folder)
    assert len(audited.val_ood_scores) == len(ood.val_scores) // 2  # not their augmented copies
