"""Ensembles: mean probability of member runs, own threshold, usable like any run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAINING, copy_run, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.data.layout import Sample
from pneumolab.errors import DataLayoutError, RunDirError
from pneumolab.evaluation.comparison import compare_runs
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.shift import SCENARIOS
from pneumolab.evaluation.writer import SHIFT_PREDICTIONS
from pneumolab.explain.gradcam import explain_paths
from pneumolab.inference.predictor import Predictor
from pneumolab.pipeline.ensemble import build_ensemble
from pneumolab.pipeline.ood_fit import fit_run_ood
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir, read_predictions, read_shift_predictions, write_predictions
from pneumolab.scope.ood import ENSEMBLE_METHOD, OodModel
from pneumolab.serving.export import export_onnx
from pneumolab.study.runner import _ensemble_is_current

pytestmark = pytest.mark.slow  # trains its own models


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    data = write_synthetic_dataset(root / "data")
    runs = [
        train(data, root / name, TrainConfig(epochs=1, **(TINY_TRAINING | {"model": model})))
        for name, model in (("a", "pneumolab_cnn_small"), ("b", "pneumolab_cnn_separable"))
    ]
    return data, runs


def test_ensemble_scores_the_mean_with_its_own_threshold(members, tmp_path):
    data, runs = members
    ensemble = build_ensemble([r.root for r in runs], tmp_path / "ens")
    meta = json.loads(ensemble.meta.read_text())
    member_rows = [read_predictions(r.val_predictions) for r in runs]
    expected = np.mean([[row.probability for row in rows] for rows in member_rows], axis=0)
    got = [row.probability for row in read_predictions(ensemble.val_predictions)]
    assert np.allclose(sorted(got), sorted(expected), atol=1e-6)
    patients = {row.path: row.patient for row in member_rows[0]}
    assert all(  # the members' patients, not an empty column
        row.patient == patients[row.path] and row.patient
        for row in read_predictions(ensemble.val_predictions)
    )
    members_found = [(ensemble.root / m).resolve() for m in meta["members"]]
    assert members_found == [r.root.resolve() for r in runs]
    assert meta["val_metrics"]["sensitivity"] >= 0.95  # its own threshold, chosen on validation
    assert meta["parameters"] == sum(json.loads(r.meta.read_text())["parameters"] for r in runs)
    card = (ensemble.root / "MODEL_CARD.md").read_text()
    assert card.count("Ensemble member") == 2
    assert "Best epoch: None" not in card and "- Training: each member's" in card
    assert "seed 0, validation fraction" in card  # its members' split, not "seed —"
    typed = ensemble.read_meta()  # the fields a single run's meta has, from the same writer
    assert typed.is_ensemble and not (ensemble.root / "members.json").exists()
    assert (typed.intensity, typed.task) == ("clahe", "binary")
    assert typed.preprocessing.intensity == "clahe" and typed.torch_version
    assert typed.preprocessing.mean == runs[0].read_meta().preprocessing.mean
    assert typed.compute is None and all(r.read_meta().compute for r in runs)  # members have it

    predictor = Predictor.from_run(ensemble.root)
    image = runs[0].read_split(data, "val")[0].path
    singles = [Predictor.from_run(r.root).predict(image).probability for r in runs]
    assert predictor.predict(image).probability == pytest.approx(np.mean(singles), abs=1e-6)
    metrics = evaluate(ensemble.root, data, "val")
    assert metrics.model.startswith("ensemble(")
    assert metrics.roc_auc == pytest.approx(meta["val_metrics"]["roc_auc"], abs=1e-6)


def test_a_comparison_scores_members_once_and_the_ensemble_from_their_passes(
    members, tmp_path, caplog
):
    data, runs = members
    copies = [copy_run(r.root, tmp_path / r.root.name) for r in runs]  # evaluation writes there
    ensemble = build_ensemble(copies, tmp_path / "ens")
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        rows, _ = compare_runs([*copies, ensemble.root], data, "val", tmp_path / "cmp", shift=True)
    passes = 1 + len(SCENARIOS) * 3  # the clean split, then every scenario's draws
    # the members' passes were scored once each; all the ensemble's were answered from them
    assert f"answered from the cache: {2 * passes} of {4 * passes}" in caplog.text
    assert all(row.cpu_ms_per_image > 0 for row in rows)  # timed without the cache

    scored = {c.name: c / "eval" / "val" / SHIFT_PREDICTIONS for c in copies}
    scored["ensemble"] = ensemble.eval_dir("val") / SHIFT_PREDICTIONS
    for scenario in SCENARIOS:
        by_run = {name: read_shift_predictions(path, scenario) for name, path in scored.items()}
        for image, draws in by_run["ensemble"].items():
            mean = np.mean([by_run[c.name][image] for c in copies], axis=0)
            assert draws == pytest.approx(mean, abs=2e-6)  # files keep 6 decimals
    uncached = evaluate(ensemble.root, data, "val", shift=True)
    assert uncached.roc_auc == rows[2].roc_auc
    assert uncached.shift_summary is not None
    assert uncached.shift_summary.compound_roc_auc == rows[2].shift_roc_auc


def test_single_network_tools_name_the_members(members, tmp_path):
    data, runs = members
    ensemble = build_ensemble([r.root for r in runs], tmp_path / "ens")
    image = runs[0].read_split(data, "val")[0].path
    with pytest.raises(RunDirError, match=r"is an ensemble.*member runs") as refused:
        list(explain_paths(ensemble.root, [image], tmp_path / "maps"))
    assert all(run.root.name in str(refused.value) for run in runs)  # named, not "see meta.json"
    with pytest.raises(RunDirError, match="is an ensemble") as refused:
        export_onnx(ensemble.root, tmp_path / "model.onnx")
    assert all(run.root.name in str(refused.value) for run in runs)


def test_members_on_different_splits_are_refused(members, tmp_path):
    data, runs = members
    other = train(data, tmp_path / "c", TrainConfig(epochs=1, seed=5, **TINY_TRAINING))
    with pytest.raises(RunDirError, match="different splits"):
        build_ensemble([runs[0].root, other.root], tmp_path / "ens")
    with pytest.raises(RunDirError, match="at least two"):
        build_ensemble([runs[0].root], tmp_path / "ens1")
    with pytest.raises(RunDirError, match=r"a: the same run is given twice"):  # another spelling
        build_ensemble([runs[0].root, runs[0].root / ".." / "a"], tmp_path / "ens1")
    twin = copy_run(runs[0].root, tmp_path / "twin")  # a copy: its network counted twice
    with pytest.raises(RunDirError, match=r"twin and .*a: the same weights \(a copy of one run\)"):
        build_ensemble([runs[0].root, runs[1].root, twin], tmp_path / "ens1")
    assert not (tmp_path / "ens").exists()
    unsplit = copy_run(runs[0].root, tmp_path / "unsplit")  # accepted silently, then failed
    (unsplit / "split.csv").unlink()  # half-built, at copying its split
    with pytest.raises(RunDirError, match=r"unsplit: has no split\.csv"):
        build_ensemble([unsplit, runs[1].root], tmp_path / "ens2")
    assert not (tmp_path / "ens2").exists()
    moved = copy_run(runs[1].root, tmp_path / "moved")  # trained from another copy of the data
    rows = read_predictions(moved / "val_predictions.csv")
    write_predictions(
        moved / "val_predictions.csv",
        [Sample(Path("/elsewhere") / Path(r.path).name, r.label, "") for r in rows],
        np.array([r.probability for r in rows]),
    )
    with pytest.raises(RunDirError, match=r"no path in common.*different copies of the dataset"):
        build_ensemble([runs[0].root, moved], tmp_path / "ens2")


def test_an_ensemble_whose_member_was_retrained_is_refused(members, tmp_path):
    """It kept scoring with the threshold and OOD model chosen on the old weights."""
    _, runs = members
    a = copy_run(runs[0].root, tmp_path / "a")
    ensemble = build_ensemble([a, runs[1].root], tmp_path / "ens")
    Predictor.from_run(ensemble.root)
    (a / "model.safetensors").write_bytes((runs[1].root / "model.safetensors").read_bytes())
    with pytest.raises(RunDirError, match=r"ens: the weights of its member .*a changed since"):
        Predictor.from_run(ensemble.root)
    gate = ensemble.ood.read_bytes()  # fit-ood wrote a gate for the new weights, and said OK
    with pytest.raises(RunDirError, match=r"ens: the weights of its member .*a changed since"):
        fit_run_ood(ensemble.root, members[0])
    assert ensemble.ood.read_bytes() == gate


def test_an_ensemble_with_a_member_of_unknown_size_is_of_unknown_size(members, tmp_path):
    """A member whose meta.json records no parameter count (an older run) counted as 0, so the
    ensemble looked smaller than its other member to a study's `prefer_smaller`."""
    _, runs = members
    a = copy_run(runs[0].root, tmp_path / "a")
    meta = json.loads((a / "meta.json").read_text())
    meta["parameters"] = None
    (a / "meta.json").write_text(json.dumps(meta))
    ensemble = build_ensemble([a, runs[1].root], tmp_path / "ens")
    assert json.loads(ensemble.meta.read_text())["parameters"] is None


def test_an_ensemble_away_from_its_members_says_where_it_looked(members, tmp_path):
    """A copied ensemble folder said only '.../../a: run directory not found'."""
    _, runs = members
    a, b = copy_run(runs[0].root, tmp_path / "a"), copy_run(runs[1].root, tmp_path / "b")
    ensemble = build_ensemble([a, b], tmp_path / "ens")
    deployed = copy_run(ensemble.root, tmp_path / "deploy" / "ens")
    with pytest.raises(RunDirError, match=r"deploy/ens: its member \.\./a \(stored relative to"):
        Predictor.from_run(deployed)


def test_members_of_different_image_sizes_and_intensities_form_an_ensemble(members, tmp_path):
    from PIL import Image

    from pneumolab.data.imageio import resize_square

    data, runs = members
    larger = train(
        data, tmp_path / "c", TrainConfig(epochs=1, **(TINY_TRAINING | {"image_size": 40}))
    )
    ensemble = build_ensemble([runs[0].root, larger.root], tmp_path / "ens")
    assert ensemble.read_meta().image_size == 40  # decoded at the largest size
    assert "(32 px)" in (ensemble.root / "MODEL_CARD.md").read_text()

    image = runs[0].read_split(data, "val")[0].path
    predictor = Predictor.from_run(ensemble.root)
    pixels = predictor.preprocess_array(image)[None]
    smaller = resize_square(Image.fromarray(pixels[0, 0]), 32)[None, None].copy()
    expected = np.mean(
        [
            Predictor.from_run(runs[0].root).scorer(smaller).probability,
            Predictor.from_run(larger.root).scorer(pixels).probability,
        ]
    )
    assert predictor.predict(image).probability == pytest.approx(expected, abs=1e-6)

    # with test-time views, each member takes them at its own size, as its stored TTA scores
    # (the ensemble's TTA threshold was chosen on) did: views of the 48 px image, resized after,
    # scored otherwise
    full = train(
        data, tmp_path / "e", TrainConfig(epochs=1, **(TINY_TRAINING | {"image_size": 48}))
    )
    sized = build_ensemble([runs[0].root, full.root], tmp_path / "ens48")  # 48 px: the files'
    stored = {r.path: r.tta_probability for r in read_predictions(sized.val_predictions)}
    viewed = Predictor.from_run(sized.root, tta=True)
    for sample in runs[0].read_split(data, "val")[:4]:
        scored = viewed.predict(sample.path).probability
        assert scored == pytest.approx(stored[str(sample.path)], abs=1e-6)

    # another intensity normalisation and border suppression: each member prepares its own input
    other = TrainConfig(epochs=1, intensity="equalize", border_fade=0.1, **TINY_TRAINING)
    raw = train(data, tmp_path / "d", other)
    mixed = build_ensemble([runs[0].root, raw.root], tmp_path / "ens2")
    assert mixed.read_meta().intensity is None
    assert mixed.read_meta().preprocessing.border_fade is None
    card = (mixed.root / "MODEL_CARD.md").read_text()
    assert "Intensity normalisation: `each member its own`" in card
    assert "Border suppression: each member its own" in card
    assert "an ensemble averages its members' P(pneumonia)" in card  # not "task: three_class"
    assert "`task: three_class` trains one" not in card
    singles = [Predictor.from_run(r).predict(image).probability for r in (runs[0].root, raw.root)]
    got = Predictor.from_run(mixed.root).predict(image).probability
    assert got == pytest.approx(np.mean(singles), abs=1e-6)


def test_the_ensemble_command(members, tmp_path, capsys):
    from pneumolab.cli import main

    _, runs = members
    out = tmp_path / "ens"
    assert main(["ensemble", str(runs[0].root), str(runs[1].root), "--out", str(out)]) == 0
    assert out.joinpath("meta.json").is_file() and "ensemble written to" in capsys.readouterr().err
    assert main(["ensemble", str(runs[0].root), "--out", str(tmp_path / "one")]) == 2
    assert "at least two finished runs" in capsys.readouterr().err
    assert main(["ensemble", str(runs[0].root), str(runs[1].root), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_ensemble_is_served(members, tmp_path):
    from fastapi.testclient import TestClient

    from pneumolab.serving.app import create_app

    data, runs = members
    ensemble = build_ensemble([r.root for r in runs], tmp_path / "ens")
    client = TestClient(create_app(ensemble.root))
    info = client.get("/v1/model").json()
    assert info["model"].startswith("ensemble(") and info["heatmap_available"] is False
    image = runs[0].read_split(data, "val")[0].path
    files = {"file": (image.name, image.read_bytes(), "image/png")}
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200
    expected = Predictor.from_run(ensemble.root).predict(image).probability
    assert response.json()["probability"] == pytest.approx(expected, abs=1e-6)
    refused = client.post("/v1/predict?heatmap=true", files=files)
    assert refused.status_code == 409 and "ensemble" in refused.json()["detail"]


def test_ensemble_ood_is_the_mean_of_its_members_with_its_own_threshold(members, tmp_path):
    data, runs = members
    ensemble = build_ensemble([r.root for r in runs], tmp_path / "ens")
    ood = OodModel.load(ensemble.ood)
    assert ensemble.ood.stat().st_mtime_ns <= ensemble.meta.stat().st_mtime_ns  # meta.json last
    member_scores = [OodModel.load(r.ood).val_scores for r in runs]
    np.testing.assert_allclose(ood.val_scores, np.mean(member_scores, axis=0), rtol=1e-6)
    assert ood.method == ENSEMBLE_METHOD and ood.val_flagged_fraction <= 0.01
    image = runs[0].read_split(data, "val")[0].path
    singles = [Predictor.from_run(r.root).predict(image).ood_score for r in runs]
    result = Predictor.from_run(ensemble.root).predict(image)
    assert result.ood_score == pytest.approx(np.mean(singles), rel=1e-5)
    assert result.ood_threshold == ood.threshold


def test_a_member_with_an_older_ood_model_leaves_the_ensemble_without_one_until_fit_ood(
    members, tmp_path, caplog
):
    import dataclasses
    import shutil

    data, runs = members
    old = tmp_path / "old"
    shutil.copytree(runs[0].root, old)
    model = OodModel.load(old / "ood.safetensors")
    legacy = dataclasses.replace(model, method="mahalanobis", val_scores=model.val_scores[:3])
    legacy.save(old / "ood.safetensors")
    ensemble = build_ensemble([old, runs[1].root], tmp_path / "ens")
    assert ensemble.is_complete() and not ensemble.ood.is_file()
    assert "has no current OOD model" in caplog.text and "fit-ood" in caplog.text

    fitted = fit_run_ood(ensemble.root, data)  # refits the older member, then the ensemble
    assert OodModel.load(old / "ood.safetensors").method != "mahalanobis"
    assert fitted.method == ENSEMBLE_METHOD and ensemble.ood.is_file()


def test_a_member_refitted_since_the_ensemble_gate_is_refused_until_fit_ood(members, tmp_path):
    """After `fit-ood MEMBER` the ensemble averaged the member's new OOD scores against the
    threshold chosen on its old ones, without a word."""
    import dataclasses

    data, runs = members
    member = copy_run(runs[0].root, tmp_path / "m0")
    ensemble = build_ensemble([member, runs[1].root], tmp_path / "ens")
    members_now = [RunDir(member), runs[1]]
    assert _ensemble_is_current(ensemble, members_now)
    model = OodModel.load(member / "ood.safetensors")  # a refit: other validation scores
    dataclasses.replace(model, val_scores=model.val_scores * 2).save(member / "ood.safetensors")
    assert not _ensemble_is_current(ensemble, members_now)  # a study's rerun rebuilds it
    with pytest.raises(RunDirError, match=r"a member's OOD model changed .*fit-ood"):
        Predictor.from_run(ensemble.root)
    with pytest.raises(DataLayoutError, match=r"no data: dataset folder not found"):
        fit_run_ood(ensemble.root, tmp_path / "no data")
    fit_run_ood(ensemble.root, data)  # the ensemble's gate, from the members' current ones
    assert Predictor.from_run(ensemble.root).ood is not None


def test_ensemble_tta_threshold_from_its_members_tta_scores(members, tmp_path, caplog):
    _, runs = members
    ensemble = build_ensemble([r.root for r in runs], tmp_path / "ens")
    by_path = [{r.path: r for r in read_predictions(run.val_predictions)} for run in runs]
    for row in read_predictions(ensemble.val_predictions):
        expected = np.mean([rows[row.path].tta_probability for rows in by_path])
        assert row.tta_probability == pytest.approx(expected, abs=1e-6)
    assert ensemble.read_meta().tta_threshold is not None

    old = copy_run(runs[1].root, tmp_path / "old")  # a member written before the TTA column
    rows = read_predictions(runs[1].val_predictions)
    write_predictions(
        old / "val_predictions.csv",
        [Sample(Path(r.path), r.label, "") for r in rows],
        np.array([r.probability for r in rows]),
    )
    mixed = build_ensemble([runs[0].root, old], tmp_path / "mixed")
    assert mixed.read_meta().tta_threshold is None
    assert "no tta_probability" in caplog.text


def test_an_ensemble_keeps_its_members_target_sensitivity(members, tmp_path):
    """`pneumolab ensemble` chose for 0.95 whatever its members were trained for, and took
    members of different targets without a word (a study refuses them)."""
    from pneumolab.errors import ConfigError

    data, runs = members
    settings = TINY_TRAINING | {"target_sensitivity": 0.8}
    low = [
        train(data, tmp_path / n, TrainConfig(epochs=1, seed=s, split_seed=0, **settings))
        for n, s in (("l1", 1), ("l2", 2))
    ]
    ensemble = build_ensemble([r.root for r in low], tmp_path / "ens")
    point = low[0].read_meta().default_operating_point
    assert ensemble.read_meta().default_operating_point == point == "sensitivity_80"
    with pytest.raises(ConfigError, match=r"different target sensitivities \(\[0\.8, 0\.95\]\)"):
        build_ensemble([runs[0].root, low[0].root], tmp_path / "mixed")
    given = build_ensemble([runs[0].root, low[0].root], tmp_path / "given", 0.9)
    assert given.read_meta().default_operating_point == "sensitivity_90"
