"""A three-class run's predictions carry its subtype call and class probabilities wherever they
are given (Python API, ``predict --json`` and ``--out``, the Ray replicas, the HTTP API); a
binary run's carry none, and a backend without class logits (ONNX) says so and gives none.
Predictions were NORMAL / PNEUMONIA only: a three-class model's subtypes could not be had."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    class_probabilities,
    copy_run,
    held_only,
    write_run,
    write_synthetic_dataset,
    xray_like,
)
from pneumolab.cli import main
from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_calls
from pneumolab.inference.batch import predict_to_file
from pneumolab.inference.prediction import (
    CLASS_PROBABILITY_FIELDS,
    OUT_OF_SCOPE_LABEL,
    SUBTYPE_FIELDS,
    Prediction,
    gated_prediction,
)
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.results_file import FIELDS, LEGACY_FIELDS, LINE_FIELDS
from pneumolab.scope.checks import ScopeChecks


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """12 X-ray-like PNGs of rising brightness."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(2)
    paths = []
    for i in range(12):
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(xray_like(rng, 40 + 15 * i, 10 + 3 * i, (48, 40))).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def three_class(tmp_path_factory, images) -> Path:
    """An untrained three-class run whose threshold calls half the images PNEUMONIA: of those,
    some are more likely bacterial, some viral; of the NORMAL ones, most are more likely
    bacterial than normal (the subtype is not the argmax of the three)."""
    return write_run(tmp_path_factory.mktemp("runs") / "three", images, task="three_class").root


@pytest.fixture(scope="module")
def binary(tmp_path_factory, images) -> Path:
    """The same, binary."""
    return write_run(tmp_path_factory.mktemp("runs") / "binary", images).root


@pytest.fixture(scope="module")
def expected(three_class, images) -> dict[str, Prediction]:
    """Each image's prediction by the Python API, by file name."""
    return {Path(r.source).name: r for r in Predictor.from_run(three_class).predict_paths(images)}


def subtype_values(prediction: Prediction) -> list[object]:
    return [getattr(prediction, name) for name in SUBTYPE_FIELDS]


def test_each_prediction_carries_the_subtype_the_evaluation_would_call(three_class, images):
    predictor = Predictor.from_run(three_class)
    results = list(predictor.predict_paths(images))
    pixels = np.stack([predictor.preprocess_array(path) for path in images])
    class_probs = class_probabilities(predictor.model, pixels)  # the evaluation's pass
    probs = np.array([r.probability for r in results])
    calls = subtype_calls(class_probs, probs >= predictor.threshold)  # its 3 x 3 matrix's rule
    for result, probabilities, call in zip(results, class_probs, calls, strict=True):
        got = [result.p_normal, result.p_bacterial, result.p_viral]
        assert got == pytest.approx(probabilities.tolist(), abs=1e-6)
        assert result.p_normal == pytest.approx(1 - result.probability, abs=1e-6)
        assert result.subtype == (SUBTYPE_NAMES[call] if call else None)
        assert (result.subtype is None) == (result.label == "NORMAL")
    assert {r.subtype for r in results} == {None, "BACTERIAL", "VIRAL"}
    normal = [r for r in results if r.label == "NORMAL"]
    assert any(r.p_bacterial > r.p_normal for r in normal)  # NORMAL by the threshold, not argmax
    one = predictor.predict(images[0])
    assert one.subtype == results[0].subtype and one.p_viral == pytest.approx(results[0].p_viral)
    assert list(one.to_dict())[-4:] == list(SUBTYPE_FIELDS)


def test_an_out_of_scope_image_gets_no_subtype_even_with_its_label_kept(three_class, tmp_path):
    wide = tmp_path / "wide.png"  # 5:1, out of scope
    Image.fromarray(xray_like(np.random.default_rng(0), 200, 20, (40, 200))).save(wide)
    predictor = Predictor.from_run(three_class, scope_verdict=False)
    predictor.threshold = 0.0  # every image called PNEUMONIA
    result = predictor.predict(wide)
    assert not result.in_scope and result.label == "PNEUMONIA"
    assert result.subtype is None and result.p_viral is not None  # the probabilities stand
    assert Predictor.from_run(three_class).predict(wide).label == OUT_OF_SCOPE_LABEL


def test_class_probabilities_that_are_not_numbers_give_no_subtype():
    def gated(probability: float, class_probs: np.ndarray | None) -> Prediction:
        return gated_prediction(
            "x.png",
            probability,
            0.5,
            ("NORMAL", "PNEUMONIA"),
            ScopeChecks(),
            ood_score=float("nan"),
            ood_threshold=None,
            scope_verdict=True,
            class_probs=class_probs,
        )

    assert subtype_values(gated(0.9, np.array([0.1, 0.2, 0.7]))) == ["VIRAL", 0.1, 0.2, 0.7]
    assert subtype_values(gated(0.4, np.array([0.6, 0.3, 0.1]))) == [None, 0.6, 0.3, 0.1]
    unscored = gated(float("nan"), np.full(3, np.nan))
    assert unscored.label == OUT_OF_SCOPE_LABEL and subtype_values(unscored) == [None] * 4
    assert subtype_values(gated(0.9, None)) == [None] * 4


def test_a_binary_runs_predictions_have_the_fields_empty(binary, images):
    result = Predictor.from_run(binary).predict(images[-1])
    assert subtype_values(result) == [None] * 4
    assert {k: result.to_dict()[k] for k in SUBTYPE_FIELDS} == dict.fromkeys(SUBTYPE_FIELDS)


def test_predict_json_the_table_and_results_files_carry_the_subtype(
    three_class, images, expected, tmp_path, capsys
):
    paths = [str(p) for p in images]
    assert main(["predict", str(three_class), *paths, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 12 and all(tuple(line) == LINE_FIELDS for line in lines)
    for line in lines:
        want = expected[Path(line["source"]).name]
        assert line["subtype"] == want.subtype
        assert [line[k] for k in CLASS_PROBABILITY_FIELDS] == pytest.approx(
            subtype_values(want)[1:], abs=1e-6
        )
    assert main(["predict", str(three_class), *paths]) == 0
    table = capsys.readouterr().out
    assert "subtype" in table and "VIRAL" in table and "BACTERIAL" in table
    out = tmp_path / "results.csv"
    assert main(["predict", str(three_class), *paths, "--out", str(out)]) == 0
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == FIELDS == (*LEGACY_FIELDS, *SUBTYPE_FIELDS)
        rows = list(reader)
    assert len(rows) == 12
    for row in rows:
        want = expected[Path(row["source"]).name]
        assert row["subtype"] == (want.subtype or "")
        assert float(row["p_viral"]) == pytest.approx(want.p_viral, abs=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_results_file_of_before_the_subtype_columns_is_resumed_with_them(
    three_class, images, expected, tmp_path, suffix
):
    """A file written before the columns existed was refused as 'not a pneumolab results
    file': its rows are kept (no subtype: not known) and the file is rewritten with them."""
    out = tmp_path / f"results{suffix}"
    predictor = Predictor.from_run(three_class)
    predict_to_file(predictor, images[:3], out, progress=False)
    if suffix == ".csv":
        with out.open(newline="") as f:
            records = [record[: len(LEGACY_FIELDS)] for record in csv.reader(f)]
        with out.open("w", newline="") as f:
            csv.writer(f, lineterminator="\r\n").writerows(records)
    else:
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        legacy = [{k: line[k] for k in LEGACY_FIELDS} for line in lines]
        out.write_text("".join(json.dumps(line) + "\n" for line in legacy))
    summary = predict_to_file(predictor, images, out, progress=False)
    assert (summary.already_done, summary.written, summary.failed) == (3, 9, 0)
    if suffix == ".csv":
        with out.open(newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames or ()) == FIELDS
            rows = list(reader)
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(tuple(row) == FIELDS for row in rows)
    assert len(rows) == 12
    empty = "" if suffix == ".csv" else None
    for index, row in enumerate(rows):
        want = expected[Path(row["source"]).name]
        assert row["subtype"] == (empty if index < 3 else want.subtype or empty)


def test_backends_without_class_logits_say_so_once_and_give_no_subtype(
    three_class, images, expected, tmp_path, caplog
):
    from pneumolab.serving.export import export_onnx

    run = copy_run(three_class, tmp_path / "run")
    export_onnx(run, run / "model.onnx")
    with caplog.at_level(logging.WARNING):
        results = list(Predictor.from_run(run, backend="onnx").predict_paths(images))
    said = [r.getMessage() for r in caplog.records if "three-class run" in r.getMessage()]
    assert len(said) == 1 and "subtypes (BACTERIAL / VIRAL) are unavailable" in said[0]
    assert "the onnx backend's" in said[0]
    assert all(subtype_values(r) == [None] * 4 for r in results)
    assert [r.label for r in results] == [expected[Path(r.source).name].label for r in results]


def test_tta_predictions_carry_the_class_probabilities_averaged_over_the_views(
    three_class, images, caplog
):
    """TTA averaged P(pneumonia) over the views and gave no subtype (a warning said so): the
    softmax is averaged as the probability is, so p_normal stays 1 - P(pneumonia)."""
    from pneumolab.data.transforms import TTA_VIEWS

    predictor = Predictor.from_run(three_class)
    pixels = torch.as_tensor(np.stack([predictor.preprocess_array(path) for path in images]))
    views = [class_probabilities(predictor.model, v(pixels)) for v in TTA_VIEWS.values()]
    with caplog.at_level(logging.WARNING):
        results = list(Predictor.from_run(three_class, tta=True).predict_paths(images))
    assert not [r for r in caplog.records if "three-class run" in r.getMessage()]
    for result, probabilities in zip(results, np.mean(views, axis=0), strict=True):
        got = [result.p_normal, result.p_bacterial, result.p_viral]
        assert got == pytest.approx(probabilities.tolist(), abs=1e-6)
        assert result.p_normal == pytest.approx(1 - result.probability, abs=1e-6)
        assert (result.subtype is None) == (result.label == "NORMAL")


def test_the_missing_subtypes_are_told_once_under_the_predictors_lock(three_class, images, caplog):
    """The warn-once flag was checked and then set, in two steps: two threads predicting at
    once (the HTTP server's) could both pass the check and both warn. The check and the claim
    are one step under the predictor's lock now (:class:`pneumolab.once.Once`, asserted by a
    stand-in, so no thread timing is needed), and the warning is said once."""
    from dataclasses import replace

    predictor = Predictor.from_run(three_class)
    scorer = predictor.scorer
    predictor.scorer = lambda pixels: replace(scorer(pixels), class_probs=None)
    steps = held_only(predictor._no_subtypes_told)
    with caplog.at_level(logging.WARNING):
        list(predictor.predict_paths(images[:2]))
        predictor.predict(images[2])
    said = [r for r in caplog.records if "three-class run" in r.getMessage()]
    assert len(said) == 1 and "its scorer gives no class probabilities" in said[0].getMessage()
    assert steps == ["check", "claim", "check", "check"]


def test_an_evaluation_with_tta_or_an_exported_backend_does_not_warn_of_predictions(
    tmp_path, caplog
):
    """Loading a three-class run with TTA or an exported backend warned that its subtypes were
    unavailable: ``evaluate --tta`` said so while it computed the 3 x 3 matrix, and an ONNX
    evaluation said it beside its own warning. Only predictions, which leave the four fields
    empty, say so (above)."""
    from pneumolab.evaluation.evaluate import evaluate
    from pneumolab.serving.export import export_onnx

    data = write_synthetic_dataset(tmp_path / "data")
    (data / "train").rename(data / "test")
    images = sorted((data / "test").rglob("*.png"))
    run = write_run(tmp_path / "run", images, task="three_class").root
    export_onnx(run, run / "model.onnx")
    for options in ({"tta": True}, {"backend": "onnx"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            metrics = evaluate(run, data, split="test", device="cpu", **options)  # type: ignore[arg-type]
        said = [r.getMessage() for r in caplog.records if "three-class" in r.getMessage()]
        if "tta" in options:
            assert metrics.subtypes is not None and said == []
        else:
            assert metrics.subtypes is None
            assert said == [
                "three-class metrics (subtypes) need the torch backend: not computed with onnx"
            ]


def _network_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of each pass through any network, as they happen."""
    from pneumolab.models.classifier import XrayClassifier

    seen: list[int] = []
    network_input = XrayClassifier._backbone_input

    def counted(self: XrayClassifier, x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return network_input(self, x)

    monkeypatch.setattr(XrayClassifier, "_backbone_input", counted)
    return seen


def test_a_three_class_evaluation_scores_each_image_once(tmp_path, monkeypatch):
    """An evaluation of a three-class run scored the split twice: the binary scores, then the
    3 x 3 matrix's class probabilities in a second pass over the same images. Both come from
    one pass now, and the matrix is the one the separate pass gave."""
    from pneumolab.data.layout import Sample
    from pneumolab.data.subtypes import subtype_labels
    from pneumolab.evaluation.evaluate import evaluate
    from pneumolab.evaluation.subtypes import subtype_metrics

    data = write_synthetic_dataset(tmp_path / "data", per_class=6)
    (data / "train").rename(data / "test")
    images = sorted((data / "test").rglob("*.png"))
    run = write_run(tmp_path / "run", images, task="three_class").root
    predictor = Predictor.from_run(run)
    pixels = np.stack([predictor.preprocess_array(path) for path in images])
    probs = predictor.backend(pixels)
    class_probs = class_probabilities(predictor.model, pixels)  # the separate pass
    truth = np.array(subtype_labels([Sample(p, int("PNEUMONIA" in p.parts), "") for p in images]))
    expected = subtype_metrics(truth, class_probs, probs >= predictor.threshold)
    seen = _network_passes(monkeypatch)
    metrics = evaluate(run, data, split="test", device="cpu")
    assert seen == [len(images)]
    assert metrics.subtypes is not None  # NaN (a class never called) as text, to compare
    assert json.dumps(metrics.subtypes.model_dump()) == json.dumps(expected.model_dump())


def test_a_three_class_evaluation_with_tta_scores_each_image_once_per_view(tmp_path, monkeypatch):
    """With --tta, the 3 x 3 matrix's class probabilities took a pass of their own over the
    single view, after the views' passes: they are the views' mean softmax now, from those
    passes, as P(pneumonia) is."""
    from pneumolab.data.layout import Sample
    from pneumolab.data.subtypes import subtype_labels
    from pneumolab.data.transforms import TTA_VIEWS
    from pneumolab.evaluation.evaluate import evaluate
    from pneumolab.evaluation.subtypes import subtype_metrics

    data = write_synthetic_dataset(tmp_path / "data", per_class=6)
    (data / "train").rename(data / "test")
    images = sorted((data / "test").rglob("*.png"))
    run = write_run(tmp_path / "run", images, task="three_class").root
    predictor = Predictor.from_run(run, tta=True)
    pixels = torch.as_tensor(np.stack([predictor.preprocess_array(path) for path in images]))
    views = [class_probabilities(predictor.model, v(pixels)) for v in TTA_VIEWS.values()]
    truth = np.array(subtype_labels([Sample(p, int("PNEUMONIA" in p.parts), "") for p in images]))
    called = predictor.backend(pixels) >= predictor.threshold
    expected = subtype_metrics(truth, np.mean(views, axis=0), called)
    seen = _network_passes(monkeypatch)
    metrics = evaluate(run, data, split="test", device="cpu", tta=True)
    assert seen == [len(images)] * len(TTA_VIEWS)
    assert metrics.subtypes is not None  # NaN (a class never called) as text, to compare
    assert json.dumps(metrics.subtypes.model_dump()) == json.dumps(expected.model_dump())


def test_the_ray_replicas_rows_carry_the_subtype(three_class, images, expected, tmp_path):
    pytest.importorskip("pyarrow")
    from pneumolab.inference.ray_engine import ModelReplica, decode_batch

    sources = np.array([*map(str, images), str(tmp_path / "gone.png")], dtype=object)
    batch = decode_batch({"source": sources, "chunk": np.zeros(len(sources))}, 32)
    rows = ModelReplica(str(three_class), "torch", False, True)(batch).to_pylist()
    assert [tuple(row) for row in rows] == [FIELDS] * 13
    for row in rows[:-1]:
        want = expected[Path(row["source"]).name]
        assert row["subtype"] == want.subtype
        assert row["p_bacterial"] == pytest.approx(want.p_bacterial, abs=1e-6)
    assert rows[-1]["error"] and [rows[-1][k] for k in SUBTYPE_FIELDS] == [None] * 4


def test_the_http_api_answers_the_subtype_of_a_three_class_run_only(
    three_class, images, expected, binary, tmp_path
):
    from fastapi.testclient import TestClient

    from pneumolab.serving.app import create_app
    from pneumolab.serving.export import export_onnx

    image = next(p for p in images if expected[p.name].subtype)

    def answer(run: Path, backend: str = "torch") -> dict:
        client = TestClient(create_app(run, backend=backend))  # type: ignore[arg-type]
        files = {"file": (image.name, image.read_bytes())}
        params = {"heatmap": backend == "torch"}  # the heat map's prediction too
        response = client.post("/v1/predict", files=files, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    body, want = answer(three_class), expected[image.name]
    assert body["label"] == "PNEUMONIA" and body["subtype"] == want.subtype
    assert [body[k] for k in CLASS_PROBABILITY_FIELDS] == pytest.approx(
        subtype_values(want)[1:], abs=1e-6
    )
    assert not set(SUBTYPE_FIELDS) & set(answer(binary))  # a binary run's: absent
    run = copy_run(three_class, tmp_path / "run")
    export_onnx(run, run / "model.onnx")
    exported = answer(run, backend="onnx")
    assert [exported[k] for k in SUBTYPE_FIELDS] == [None] * 4
    info = TestClient(create_app(run, backend="onnx")).get("/v1/model").json()
    assert info["task"] == "three_class" and info["subtypes_available"] is False  # as answered


def test_the_model_endpoint_says_whether_predictions_carry_subtypes(three_class, binary):
    """``GET /v1/model`` did not say whether the served run gives subtypes: an API client
    learnt whether to expect the four fields from its first answer. It says so now, typed in
    the OpenAPI schema (the endpoint's schema was an untyped object)."""
    from fastapi.testclient import TestClient

    from pneumolab.serving.app import create_app

    offered = {}
    for run in (three_class, binary):
        client = TestClient(create_app(run))
        info = client.get("/v1/model").json()
        offered[info["task"]] = (info["subtype_names"], info["subtypes_available"])
    assert offered == {"three_class": (list(SUBTYPE_NAMES), True), "binary": (None, False)}
    schema = client.get("/openapi.json").json()
    answer = schema["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelInfo"}
    fields = schema["components"]["schemas"]["ModelInfo"]["properties"]
    assert fields["task"]["enum"] == ["binary", "three_class"]
    assert fields["subtypes_available"]["type"] == "boolean"
    assert "p_bacterial" in fields["subtype_names"]["description"]
