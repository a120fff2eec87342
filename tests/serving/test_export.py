"""ONNX export: metadata, dynamic batch, agreement with PyTorch, the onnx backend, loud failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pydicom.examples
import pytest
import torch
from PIL import Image

import pneumolab
from conftest import write_run, xray_like
from pneumolab.cli import main
from pneumolab.errors import ExportError, RunDirError
from pneumolab.inference.onnx_backend import OnnxBackend
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import Scores
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.run import RunDir
from pneumolab.scope.mahalanobis import MahalanobisScore
from pneumolab.scope.ood import METHOD, OodModel
from pneumolab.serving.export import export_onnx

SIZE = 32
METADATA_KEYS = {
    "image_size",
    "intensity",
    "mean",
    "std",
    "threshold",
    "class_names",
    "model",
    "pneumolab_version",
    "weights_sha256",
}


def write_images(folder: Path, count: int = 6) -> list[Path]:
    """PNGs of varied brightness and texture, plus one real DICOM (pydicom's CT example)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        pixels = xray_like(rng, 40 + 35 * i, 10 + 8 * i, (48, 40))
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return [*paths, Path(pydicom.examples.get_path("ct"))]


def _pixels(predictor: Predictor, images: list[Path]) -> torch.Tensor:
    return torch.stack([predictor.preprocess(path) for path in images])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, images) -> RunDir:
    return write_run(tmp_path_factory.mktemp("runs") / "run", images)


def test_export_writes_the_preprocessing_contract_and_verifies(run, tmp_path):
    report = export_onnx(run.root, tmp_path / "m.onnx")
    assert report.verified_on == "7 validation images"
    assert report.max_abs_diff <= 1e-5 and report.labels_identical
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props.keys() >= METADATA_KEYS
    assert props["image_size"] == "32" and props["intensity"] == "none"
    assert "after the resize, before / 255: nothing" in props["intensity_applied"]
    assert float(props["threshold"]) == run.read_meta().threshold
    assert json.loads(props["class_names"]) == ["NORMAL", "PNEUMONIA"]
    assert len(json.loads(props["mean"])) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no partial file left


def test_export_prints_no_tracer_warning(run, tmp_path):
    """The head-width branch of ``pneumonia_logit`` is static: the user sees no TorchScript noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        export_onnx(run.root, tmp_path / "m.onnx")


def test_dynamic_batch_and_agreement_with_torch(run, images, tmp_path):
    export_onnx(run.root, tmp_path / "m.onnx", verify_images=images[:2])
    backend, predictor = OnnxBackend(tmp_path / "m.onnx"), Predictor.from_run(run.root)
    pixels = _pixels(predictor, images)  # includes the DICOM
    for batch in (pixels[:1], pixels[1:6]):
        got = backend(batch)
        assert got.probability.shape == (len(batch),) and np.isnan(got.ood).all()  # no OOD model
        np.testing.assert_allclose(
            got.probability, predict_pixels(predictor.model, batch), atol=1e-5
        )


def test_loading_the_onnx_backend_never_writes(run):
    run.onnx.unlink(missing_ok=True)
    before = sorted(p.name for p in run.root.iterdir())
    with pytest.raises(RunDirError, match=r"no ONNX export.*`pneumolab export "):
        Predictor.from_run(run.root, backend="onnx")
    assert sorted(p.name for p in run.root.iterdir()) == before


def test_an_onnxruntime_that_cannot_be_imported_is_one_line(run, images, monkeypatch, capsys):
    """A broken install (a wheel without its platform, a missing system library) ended every
    exported backend in a traceback."""
    import sys

    from pneumolab.cli import main

    export_onnx(run.root, run.onnx)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a failing import does
    assert main(["predict", str(run.root), str(images[0]), "--backend", "onnx"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "need onnxruntime, which cannot be imported here" in err and "Traceback" not in err


def test_predict_backend_onnx_matches_torch_and_exports_only_when_asked(run, images, capsys):
    paths = [str(p) for p in images]
    assert main(["predict", str(run.root), *paths, "--json", "--keep-label"]) == 0
    torch_results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    run.onnx.unlink(missing_ok=True)
    assert main(["predict", str(run.root), *paths, "--json", "--backend", "onnx"]) == 2
    assert "pneumolab export" in capsys.readouterr().err and not run.onnx.exists()
    command = [
        "predict",
        str(run.root),
        *paths,
        "--json",
        "--keep-label",
        "--backend",
        "onnx",
        "--export",
    ]
    assert main(command) == 0
    captured = capsys.readouterr()
    onnx_results = [json.loads(line) for line in captured.out.splitlines()]
    assert run.onnx.is_file() and "was missing: exported (--export)" in captured.err
    assert [r["label"] for r in onnx_results] == [r["label"] for r in torch_results]
    assert {r["label"] for r in torch_results} == {"NORMAL", "PNEUMONIA"}
    for a, b in zip(onnx_results, torch_results, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_equalize_run_matches_torch(images, tmp_path):
    run = write_run(tmp_path / "run", images, intensity="equalize")
    export_onnx(run.root, run.onnx)
    torch_predictor = Predictor.from_run(run.root)
    onnx_predictor = Predictor.from_run(run.root, backend="onnx")
    assert onnx_predictor.scorer.intensity == "equalize"
    for path in images:
        expected, got = torch_predictor.predict(path), onnx_predictor.predict(path)
        assert got.probability == pytest.approx(expected.probability, abs=1e-5)
        assert got.label == expected.label


def test_export_fails_loudly_when_onnxruntime_disagrees(run, tmp_path, monkeypatch, capsys):
    real_call = OnnxBackend.__call__
    monkeypatch.setattr(
        OnnxBackend,
        "__call__",
        lambda self, px: Scores(real_call(self, px).probability + 0.01, real_call(self, px).ood),
    )
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to 1\.00e-02"):
        export_onnx(run.root, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing written
    out = tmp_path / "cli.onnx"
    assert main(["export", str(run.root), "--format", "onnx", "--out", str(out)]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err and not out.exists()


def test_cli_export_reports_the_verification(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(run.root), "--format", "onnx", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and "max |Δprob|" in err and "labels at the threshold: identical" in err


def test_onnx_file_of_other_weights_is_refused(run, images, tmp_path):
    other = write_run(tmp_path / "other", images, seed=1)
    export_onnx(other.root, tmp_path / "other.onnx")
    with pytest.raises(RunDirError, match=r"exported from other weights.*export .* --overwrite`"):
        Predictor.from_run(run.root, backend="onnx", onnx_file=tmp_path / "other.onnx")


HEAVY_MODULES = ("torch", "timm", "lightning", "sklearn", "fastapi", "matplotlib")
"""What a pneumolab command must not import unless it needs it."""


def heavy_imports(*argv: str) -> tuple[int, list[str]]:
    """Run ``pneumolab ARGV`` in a fresh interpreter: exit code and the heavy modules it loaded."""
    script = (
        "import json, sys\nfrom pneumolab.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
        "except SystemExit as exit:\n    code = exit.code\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]), file=sys.stderr)\n"
        "sys.exit(code)"
    )
    src = str(Path(pneumolab.__file__).parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, check=False
    )
    return done.returncode, json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.slow  # three fresh interpreters
def test_help_and_onnx_predict_load_no_heavy_library(run, images, tmp_path):
    assert heavy_imports("--help") == (0, [])
    export_onnx(run.root, run.root / "model.onnx", overwrite=True)  # an earlier test made one
    code, loaded = heavy_imports("predict", str(run.root), *map(str, images), "--backend", "onnx")
    assert (code, loaded) == (0, [])
    assert {"timm", "torch"} <= set(heavy_imports("predict", str(run.root), str(images[0]))[1])


def with_ood_model(run: RunDir) -> OodModel:
    """Give ``run`` an OOD model: distance to the origin of its pooled features."""
    model = Predictor.from_run(run.root).model
    dim = model.features(torch.zeros(1, 1, SIZE, SIZE)).shape[1]
    scorer = MahalanobisScore(torch.eye(dim) * 3.0, torch.zeros(2, dim))
    ood = OodModel.from_validation(METHOD, scorer, np.linspace(0, 1, 100), {})
    ood.save(run.ood)
    return ood


def test_ood_score_is_a_second_output_that_the_onnx_backend_uses(images, tmp_path):
    run = write_run(tmp_path / "run", images)
    ood = with_ood_model(run)
    report = export_onnx(run.root, run.root / "model.onnx")
    assert report.ood_score_output
    props = {p.key: p.value for p in onnx.load(str(run.root / "model.onnx")).metadata_props}
    assert float(props["ood_threshold"]) == ood.threshold and props["ood_method"] == METHOD
    torch_predictor = Predictor.from_run(run.root)
    onnx_predictor = Predictor.from_run(run.root, backend="onnx")
    for path in images:
        expected, got = torch_predictor.predict(path), onnx_predictor.predict(path)
        assert got.ood_score == pytest.approx(expected.ood_score, rel=1e-4)
        assert (got.in_scope, got.label) == (expected.in_scope, expected.label)
    OodModel.from_validation(METHOD, ood.scorer, np.linspace(0, 2, 100), {}).save(run.ood)
    with pytest.raises(RunDirError, match="exported before the run's OOD model"):
        Predictor.from_run(run.root, backend="onnx")


def test_a_verification_folder_holding_a_tiff_verifies_on_its_images(run, images, tmp_path):
    """Listed since predict answers TIFFs by name, a TIFF in --verify FOLDER stopped the export
    (it was passed over before, and is again: these are images to score, not to answer)."""
    folder = tmp_path / "verify"
    folder.mkdir()
    for image in images[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    Image.new("L", (40, 40)).save(folder / "scan.tif")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run.root), "--verify", str(folder), "--out", str(out)]) == 0
    assert out.is_file()
