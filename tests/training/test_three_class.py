"""Three-class mode: NORMAL / BACTERIAL / VIRAL from the file names, per-class metrics, 3x3."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_tiny_run
from pneumolab.cli import main
from pneumolab.data.layout import Sample
from pneumolab.data.subtypes import subtype_labels, subtype_of
from pneumolab.errors import DataLayoutError
from pneumolab.evaluation.subtypes import subtype_metrics
from pneumolab.inference.predictor import Predictor
from pneumolab.models.classifier import pneumonia_logit


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("IM-0001-0001.jpeg", 0, 0),
        ("person12_bacteria_45.jpeg", 1, 1),
        ("person3_virus_9.jpeg", 1, 2),
        ("PERSON3_VIRUS_9.JPEG", 1, 2),
        ("scan.jpeg", 1, None),
    ],
)
def test_subtype_from_file_name(name, label, expected):
    assert subtype_of(Sample(Path(name), label, "p")) == expected


def test_pneumonia_without_subtype_is_a_clear_error():
    samples = [Sample(Path("person1_bacteria_1.jpeg"), 1, "a"), Sample(Path("x.jpeg"), 1, "b")]
    with pytest.raises(DataLayoutError, match=r"1 file\(s\) have neither \(first: x.jpeg\)"):
        subtype_labels(samples)


def test_pneumonia_logit_is_the_log_odds_of_any_pneumonia_class():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.0, 1.0]])
    probs = torch.softmax(logits, dim=1)
    expected = torch.logit(probs[:, 1] + probs[:, 2])
    assert torch.allclose(pneumonia_logit(logits), expected, atol=1e-5)
    assert torch.equal(pneumonia_logit(torch.tensor([[0.7]])), torch.tensor([0.7]))
    huge = torch.tensor([[0.0, 1000.0, 999.0]])  # no overflow: the log-sum-exp shifts by its max
    assert pneumonia_logit(huge).item() == pytest.approx(1000.0 + np.log1p(np.exp(-1.0)))


def test_the_pneumonia_logit_exports_to_openvino_image_by_image(tmp_path):
    """torch.logsumexp's ONNX ReduceLogSumExp was reduced over the whole batch by OpenVINO's
    converter: every three-class OpenVINO export failed its parity check."""
    ov = pytest.importorskip("openvino")

    class Head(torch.nn.Module):
        def forward(self, logits: torch.Tensor) -> torch.Tensor:
            return pneumonia_logit(logits)

    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "head.onnx"
    torch.onnx.export(
        Head(), (logits,), str(path), dynamo=False, opset_version=17,
        input_names=["logits"], dynamic_axes={"logits": {0: "batch"}},
    )  # fmt: skip
    scored = ov.Core().compile_model(str(path), "CPU")(logits.numpy())[0]
    assert np.allclose(scored, pneumonia_logit(logits).numpy(), atol=1e-5)


def test_subtype_metrics_by_hand():
    true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.1, 0.4],
            [0.1, 0.2, 0.7],
            [0.1, 0.6, 0.3],
        ]
    )
    m = subtype_metrics(true, probs, probs[:, 1:].sum(axis=1) >= 0.5)
    # row 3 (P(pneumonia) 0.5, at the threshold) is called VIRAL: the binary decision calls it
    # pneumonia, and the argmax's NORMAL contradicted that
    assert m.confusion_matrix == [[1, 1, 0], [0, 1, 1], [0, 1, 1]]
    assert m.accuracy == pytest.approx(3 / 6)
    strict = subtype_metrics(true, probs, probs[:, 1:].sum(axis=1) >= 0.85)  # 0.9 only
    assert strict.confusion_matrix == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    # among the 4 pneumonias, bacterial vs viral: rows 2 (b), 3 (0.1 vs 0.4 -> v, wrong),
    # 4 (v), 5 (0.6 vs 0.3 -> b, wrong)
    assert m.bacterial_vs_viral_accuracy == pytest.approx(2 / 4)
    assert m.per_class["BACTERIAL"].recall == pytest.approx(0.5)
    assert m.per_class["BACTERIAL"].precision == pytest.approx(1 / 3)
    assert m.per_class["VIRAL"].recall == pytest.approx(0.5)
    assert m.per_class["VIRAL"].support == 2
    never_viral = subtype_metrics(true, probs, probs[:, 1:].sum(axis=1) >= 0.95)  # none called
    assert never_viral.per_class["VIRAL"].recall == 0.0
    # a class never called has no precision (it was 0.0, "0% of calls", for calls never made)
    assert math.isnan(never_viral.per_class["VIRAL"].precision)


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory) -> Path:
    """One tiny three-class run shared by this module's tests."""
    return train_tiny_run(tmp_path_factory.mktemp("three-class"), task="three_class")


@pytest.mark.slow
def test_three_class_run_trains_evaluates_and_predicts(three_class_run, capsys):
    run_dir = three_class_run
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["task"] == "three_class"
    assert meta["subtype_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    subtypes = meta["val_subtype_metrics"]
    assert np.array(subtypes["confusion_matrix"]).shape == (3, 3)
    assert set(subtypes["per_class"]) == {"NORMAL", "BACTERIAL", "VIRAL"}
    data = run_dir.parent / "data"
    capsys.readouterr()  # drop the training output
    assert main(["evaluate", str(run_dir), "--data", str(data), "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["subtypes"]["confusion_matrix"] == subtypes["confusion_matrix"]
    assert 0 <= metrics["roc_auc"] <= 1  # the binary metrics still hold, on P(pneumonia)
    assert (run_dir / "eval" / "val" / "confusion_matrix_3class.png").is_file()
    assert main(["evaluate", str(run_dir), "--data", str(data), "--split", "val"]) == 0
    assert "bacterial vs viral" in capsys.readouterr().out
    image = next((data / "train" / "PNEUMONIA").iterdir())
    assert 0 <= Predictor.from_run(run_dir).predict(image).probability <= 1


@pytest.mark.slow
def test_three_class_model_card_and_report_show_the_classes(three_class_run):
    from pneumolab.reporting.report import build_report

    run_dir = three_class_run
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "## Three classes (validation)" in card
    assert "No bacterial/viral distinction" not in card
    assert "NORMAL vs PNEUMONIA (and bacterial vs viral pneumonia)." in card
    # the 3x3 matrix the docs promised: each class's row of calls
    matrix = json.loads((run_dir / "meta.json").read_text())["val_subtype_metrics"]
    header = "| class | precision | recall | F1 | support | → NORMAL | → BACTERIAL | → VIRAL |"
    assert header in card
    normal_row = next(line for line in card.splitlines() if line.startswith("| NORMAL |"))
    assert normal_row.endswith(" | ".join(map(str, matrix["confusion_matrix"][0])) + " |")
    html = build_report(run_dir, run_dir.parent / "data", "val").read_text()
    assert 'id="subtypes"' in html and "bacterial vs viral" in html


@pytest.mark.slow
def test_subtype_calls_agree_with_the_binary_decision_and_outside_names_keep_it(
    three_class_run, tmp_path, capsys, caplog
):
    """The 3x3 matrix took the argmax, not the run's threshold: 258 of 527 pneumonias the
    binary matrix called PNEUMONIA were 'NORMAL' in it. And images whose names carry no
    subtype (any outside data) refused the whole evaluation."""
    import shutil

    data = three_class_run.parent / "data"
    capsys.readouterr()
    assert main(["evaluate", str(three_class_run), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    (tn, _), (fn, _) = metrics["confusion_matrix"]
    subtypes = metrics["subtypes"]["confusion_matrix"]
    assert subtypes[0][0] == tn and subtypes[1][0] + subtypes[2][0] == fn
    outside = tmp_path / "outside"
    for label in ("NORMAL", "PNEUMONIA"):
        folder = outside / "test" / label
        folder.mkdir(parents=True)
        for i, image in enumerate(sorted((data / "train" / label).iterdir())[:6]):
            shutil.copy(image, folder / f"case{i}.png")
    shutil.copytree(data / "train", outside / "train")
    command = ["evaluate", str(three_class_run), "--data", str(outside), "--split", "test"]
    assert main([*command, "--json"]) == 0
    assert json.loads(capsys.readouterr().out).get("subtypes") is None  # binary metrics kept
    assert "three-class metrics (subtypes) not computed" in caplog.text


@pytest.mark.slow
def test_a_three_class_training_scores_the_validation_images_once(tmp_path, monkeypatch):
    """The end of a three-class training scored the validation images twice: probabilities and
    OOD scores, then the subtype metrics' class probabilities in a second pass over the same
    pixels. One pass gives both now (the other views of the TTA pass and the augmented copy the
    OOD threshold reads are other pixels), and the metrics are the ones the second pass gave."""
    import pneumolab.pipeline.train as pipeline
    from conftest import class_probabilities
    from pneumolab.data.dataset import decode_samples
    from pneumolab.data.transforms import normalize_intensity
    from pneumolab.models.classifier import XrayClassifier
    from pneumolab.run import RunDir

    validation: list[torch.Tensor] = []  # the validation images as the trained network gets them
    passes: list[int] = []  # images in each pass over them
    train_model, network_input = pipeline.train_model, XrayClassifier._backbone_input

    def trained(*args: object) -> object:
        result = train_model(*args)
        pixels = result.fitted.val_images.pixels
        intensity = result.split.config.intensity
        validation.append(normalize_intensity(pixels, intensity).float() / 255.0)
        return result

    def counted(self: XrayClassifier, x: torch.Tensor) -> torch.Tensor:
        if validation and x.shape == validation[0].shape and torch.equal(x, validation[0]):
            passes.append(len(x))
        return network_input(self, x)

    monkeypatch.setattr(pipeline, "train_model", trained)
    monkeypatch.setattr(XrayClassifier, "_backbone_input", counted)
    run_dir = train_tiny_run(tmp_path, task="three_class")
    assert passes == [len(validation[0])]
    monkeypatch.undo()
    predictor = Predictor.from_run(run_dir)
    samples = RunDir(run_dir).read_split(run_dir.parent / "data", "val")
    pixels = decode_samples(samples, predictor.image_size).pixels
    called = predictor.backend(pixels) >= predictor.threshold
    class_probs = class_probabilities(predictor.model, pixels, predictor.intensity)
    expected = subtype_metrics(np.array(subtype_labels(samples)), class_probs, called)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert json.dumps(meta["val_subtype_metrics"]) == json.dumps(expected.model_dump())
