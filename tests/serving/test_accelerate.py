"""INT8 and OpenVINO exports: written only after the parity check, then usable as backends."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import SIZE, with_ood_model

from conftest import copy_run, fixed_threshold_meta, write_run, xray_like
from pneumolab.cli import main
from pneumolab.errors import ExportError, ModelError, OutputError, RunDirError
from pneumolab.evaluation.parity import Parity
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.run import RunDir
from pneumolab.scope.ood import METHOD, OodModel
from pneumolab.serving import accelerate
from pneumolab.serving.accelerate import export_int8, export_openvino
from pneumolab.serving.export import export_onnx


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    """A tiny run whose 40 validation images are the 20 lowest- and 20 highest-scored of 60
    (labelled so), with the threshold in the gap: INT8 rounding cannot reorder the classes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    images = []
    for i in range(60):
        pixels = xray_like(rng, 30 + 3 * i, 12, (40, 36))
        images.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(images[-1])
    run = write_run(tmp_path_factory.mktemp("runs") / "run", images, intensity="equalize")
    predictor = Predictor.from_run(run.root)
    pixels = np.stack([predictor.preprocess_array(p) for p in images])
    probs = predict_pixels(predictor.model, pixels, predictor.intensity)
    order = np.argsort(probs)
    low, high = order[:20], order[-20:]
    rows = [(images[i], 0) for i in low] + [(images[i], 1) for i in high]
    run.val_predictions.write_text(
        "path,label,probability\n" + "".join(f"{p},{y},0.5\n" for p, y in rows)
    )
    threshold = float(probs[low[-1]] + probs[high[0]]) / 2
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", SIZE, threshold, "equalize"))
    export_onnx(run.root, run.onnx)  # the fp32 reference that parity compares with
    return run


def test_int8_export_passes_parity_and_serves_predictions(run, capsys):
    assert main(["export", str(run.root), "--format", "onnx-int8"]) == 0
    err = capsys.readouterr().err
    assert "parity with fp32 on 20 validation images" in err
    assert "scope verdict" not in err  # the run has no OOD model
    int8 = Predictor.from_run(run.root, backend="onnx-int8")
    assert int8.scorer.metadata["precision"] == "int8"
    assert int8.scorer.metadata["intensity"] == "equalize"
    fp32 = Predictor.from_run(run.root, backend="onnx")
    rows = [r.split(",")[0] for r in run.val_predictions.read_text().splitlines()[1:]]
    got = [p.label for p in int8.predict_paths(rows)]
    assert got == [p.label for p in fp32.predict_paths(rows)]


def test_int8_keeps_the_logit_in_fp32(run):
    """The classifier's output was quantised: probabilities in steps of about 0.017 near the
    threshold, clamped to [2e-5, 0.99997] (docs: the sigmoid's input stays fp32)."""
    import onnx

    if not run.root.joinpath("model.int8.onnx").is_file():
        assert main(["export", str(run.root), "--format", "onnx-int8"]) == 0
    graph = onnx.load(str(run.root / "model.int8.onnx")).graph
    classifier = [n for n in graph.node if n.op_type == "Gemm"][-1]  # the last: the logit
    readers = [n.op_type for n in graph.node if classifier.output[0] in n.input]
    assert readers and "QuantizeLinear" not in readers


def test_an_fp32_export_under_the_int8_name_is_not_served_as_int8(run, tmp_path, capsys):
    """`export --format onnx --out RUN/model.int8.onnx` wrote fp32 weights that the onnx-int8
    backend then served, its rows saying onnx-int8."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    assert main(["export", str(copy), "--out", str(copy / "model.int8.onnx"), "--overwrite"]) == 0
    capsys.readouterr()
    with pytest.raises(ModelError, match=r"not an INT8 export.*--format onnx-int8 --overwrite"):
        Predictor.from_run(copy, backend="onnx-int8")


def test_failed_parity_writes_nothing(run, tmp_path, monkeypatch):
    failing = Parity(20, 1.0, 0.9, 0.3, 4, 4)
    monkeypatch.setattr(accelerate, "score_parity", lambda *args, **kwargs: failing)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(
        ExportError, match=r"parity check against fp32 failed.*change -0\.1000"
    ) as error:
        export_int8(run.root, out)
    assert str(error.value).startswith(f"{out}: not written")  # the file asked for, not a temporary
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("export", "name"), [(export_int8, "m.int8.onnx"), (export_openvino, "m.xml")]
)
def test_an_export_finished_meanwhile_by_another_process_is_kept(
    run, tmp_path, monkeypatch, export, name
):
    if export is export_openvino:
        pytest.importorskip("openvino")
    out, accept = tmp_path / name, accelerate._accept

    def another_process_finishes_first(*args, **kwargs):
        out.write_text("their export")  # its graph; OpenVINO's weights of ours are taken back
        return accept(*args, **kwargs)

    monkeypatch.setattr(accelerate, "_accept", another_process_finishes_first)
    with pytest.raises(OutputError, match=rf"{name}: written by another process"):
        export(run.root, out)
    assert out.read_text() == "their export"
    assert list(tmp_path.iterdir()) == [out]  # its temporary folder is gone


def test_two_exports_at_once_keep_their_own_temporaries(run, tmp_path, monkeypatch):
    out, accept = tmp_path / "m.int8.onnx", accelerate._accept
    second: list[Parity] = []
    checked: list[bytes] = []

    def another_export_meanwhile(exported, *args, **kwargs):
        checked.append(exported.file.read_bytes())
        if not second:  # the first export: a second one runs to its end while it checks
            second.append(accept(exported, *args, **kwargs))
            second.append(export_int8(run.root, out, overwrite=True))
            assert exported.file.read_bytes() == checked[0]  # its file untouched by the second
        return accept(exported, *args, **kwargs)

    monkeypatch.setattr(accelerate, "_accept", another_export_meanwhile)
    assert export_int8(run.root, out, overwrite=True).accepted and second[1].accepted
    assert list(tmp_path.iterdir()) == [out]
    assert (
        Predictor.from_run(run.root, backend="onnx-int8", onnx_file=out).scorer.metadata[
            "precision"
        ]
        == "int8"
    )


def test_an_int8_export_makes_its_folder_and_never_replaces_the_fp32_reference(run, tmp_path):
    out = tmp_path / "new" / "folder" / "m.int8.onnx"
    export_int8(run.root, out)
    assert out.is_file()
    with pytest.raises(OutputError, match="the parity check compares against"):
        export_int8(run.root, run.onnx, overwrite=True)


def test_an_ensemble_is_exported_member_by_member(run, tmp_path):
    ensemble = RunDir(copy_run(run.root, tmp_path / "ens"))
    ensemble.write_meta(ensemble.read_meta().model_copy(update={"members": ["a", "b"]}))
    for export, name in ((export_int8, "m.int8.onnx"), (export_openvino, "m.xml")):
        with pytest.raises(RunDirError, match="is an ensemble: export each member run"):
            export(ensemble.root, tmp_path / name)


@pytest.mark.parametrize(
    ("fmt", "name", "problem"),
    [
        ("onnx", "model.txt", "an ONNX model is an .onnx file; give --out a name ending in .onnx"),
        ("onnx-int8", "m.int8", "an INT8 ONNX model is an .onnx file"),
        ("openvino", "m.onnx", "an OpenVINO model is an .xml file"),
    ],
)
def test_an_out_name_of_another_kind_of_file_is_refused(run, tmp_path, capsys, fmt, name, problem):
    """``export --out model.txt`` wrote ONNX into a .txt file; every format now refuses a name
    that says it is another kind of file, before anything is exported."""
    out = tmp_path / name
    assert main(["export", str(run.root), "--format", fmt, "--out", str(out)]) == 2
    assert f"{out}: {problem}" in " ".join(capsys.readouterr().err.split())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--format", "onnx-int8", "--opset", "13"], "--opset with --format onnx-int8"),
        (["--format", "openvino", "--verify", "a.png"], "--verify with --format openvino"),
        (["--opset", "24"], "24 is out of range: must be >= 11 and <= 20"),
        (["--opset", "9"], "9 is out of range: must be >= 11"),  # PyTorch: batch axis may be fixed
    ],
)
def test_export_flags_that_would_do_nothing_or_fail_are_refused(run, flags, problem, capsys):
    try:
        code = main(["export", str(run.root), *flags])
    except SystemExit as exit:  # argparse's own refusal
        code = exit.code
    assert code == 2
    assert problem in " ".join(capsys.readouterr().err.split())


def test_an_existing_file_is_replaced_only_when_asked(run, tmp_path, capsys):
    out = tmp_path / "mine.int8.onnx"
    out.write_text("someone's work")
    assert main(["export", str(run.root), "--format", "onnx-int8", "--out", str(out)]) == 2
    assert f"{out}: already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "someone's work"
    with pytest.raises(OutputError, match="never overwritten"):
        export_int8(run.root, run.root / "model.safetensors", overwrite=True)
    export_int8(run.root, out, overwrite=True)
    assert (
        Predictor.from_run(run.root, backend="onnx-int8", onnx_file=out).scorer.metadata[
            "precision"
        ]
        == "int8"
    )


def test_openvino_export_needs_an_xml_name_and_keeps_existing_weights(run, tmp_path):
    with pytest.raises(OutputError, match=r"model\.openvino: an OpenVINO model is an \.xml file"):
        export_openvino(run.root, tmp_path / "model.openvino")
    (tmp_path / "m.bin").write_text("someone's weights")
    with pytest.raises(OutputError, match=r"m\.bin: already exists"):
        export_openvino(run.root, tmp_path / "m.xml")
    assert (tmp_path / "m.bin").read_text() == "someone's weights"


def test_backend_without_its_export_says_how_to_make_it(tmp_path, run):
    with pytest.raises(ModelError, match=r"--format openvino.*parity check"):
        Predictor.from_run(run.root, backend="openvino", onnx_file=tmp_path / "none.xml")


def test_openvino_export_passes_parity_and_predicts(run, capsys):
    pytest.importorskip("openvino")
    assert main(["export", str(run.root), "--format", "openvino"]) == 0
    assert (run.root / "model.openvino.xml").is_file() and (
        run.root / "model.openvino.bin"
    ).is_file()
    capsys.readouterr()
    image = run.val_predictions.read_text().splitlines()[1].split(",")[0]
    assert main(["predict", str(run.root), image, "--json", "--backend", "openvino"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == image and result["label"] == "NORMAL"
    assert Path(image).is_file()


def test_an_openvino_name_in_capitals_is_refused_up_front(run, tmp_path):
    """``--out M.XML`` passed the parity check, then failed to publish a graph saved as
    ``M.xml``, leaving its ``M.bin`` behind (a retry was then refused)."""
    with pytest.raises(OutputError, match=r"M\.XML: OpenVINO needs .* \.xml, lower case"):
        export_openvino(run.root, tmp_path / "M.XML")
    assert not list(tmp_path.iterdir())


def test_both_exports_keep_the_ood_score_and_are_refused_after_a_refit(run, tmp_path):
    scoped = RunDir(copy_run(run.root, tmp_path / "scoped"))
    ood = with_ood_model(scoped)
    export_onnx(scoped.root, scoped.onnx, overwrite=True)
    pixels = np.stack([Predictor.from_run(scoped.root).preprocess_array(p) for p in _images(run)])
    expected = Predictor.from_run(scoped.root, backend="onnx").scorer(pixels).ood
    backends = ["onnx-int8"]
    parities = [export_int8(scoped.root, overwrite=True)]  # (copied from the run with the others)
    if importlib.util.find_spec("openvino"):
        parities.append(export_openvino(scoped.root, overwrite=True))
        backends.append("openvino")
    for parity in parities:  # the scope gate's scores are part of the parity check
        assert parity.max_ood_change is not None and parity.scope_flips_outside_margin == 0
    for backend in backends:
        got = Predictor.from_run(scoped.root, backend=backend).scorer(pixels).ood
        np.testing.assert_allclose(got, expected, rtol=0.05, err_msg=backend)
    OodModel.from_validation(METHOD, ood.scorer, np.linspace(0, 2, 100), {}).save(scoped.ood)
    for backend in backends:
        with pytest.raises(RunDirError, match=f"OOD model.*--format {backend}"):
            Predictor.from_run(scoped.root, backend=backend)


def _images(run: RunDir) -> list[str]:
    return [row.split(",")[0] for row in run.val_predictions.read_text().splitlines()[1:]]


@pytest.mark.parametrize("overwrite", [False, True])
def test_weights_are_taken_back_when_their_graph_cannot_follow(tmp_path, monkeypatch, overwrite):
    """Under --overwrite the weights were moved, so the check by name found nothing to take
    back: new weights stayed beside the old graph."""
    import pneumolab.serving.accelerate as accelerate

    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    (staging / "m.xml").write_text("new graph")
    (staging / "m.bin").write_text("new weights")
    if overwrite:
        (out / "m.xml").write_text("old graph")
        (out / "m.bin").write_text("old weights")
    publish = accelerate.publish

    def graph_fails(partial, path, replace=True):
        if path.suffix == ".xml":
            raise KeyboardInterrupt
        publish(partial, path, replace)

    monkeypatch.setattr(accelerate, "publish", graph_fails)
    with pytest.raises(KeyboardInterrupt):
        accelerate._publish_pair(staging / "m.xml", out / "m.xml", overwrite)
    assert not (out / "m.bin").exists() or (out / "m.bin").read_text() != "new weights"
