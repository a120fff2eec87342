"""The CLI end to end: train one epoch of a tiny model on real X-rays, then evaluate and predict."""

from __future__ import annotations

import importlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumolab
from conftest import xray_like
from pneumolab.cli import main

pytestmark = pytest.mark.slow  # trains its own models

CORE_KEYS = {
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "threshold",
    "confusion_matrix",
    "n",
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--data",
            str(SHARED_DATA),
            "--out",
            str(out),
            "--model",
            "pneumolab_cnn_small",
            "--no-pretrained",
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--max-train-images",
            "240",
        ]
    )
    assert code == 0
    return out


def test_evaluate_json_on_the_runs_validation_split(trained_run, shared_data, capsys):
    capsys.readouterr()
    assert (
        main(["evaluate", str(trained_run), "--data", str(shared_data), "--split", "val", "--json"])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics.keys() >= CORE_KEYS
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tn + fp + fn + tp == metrics["n"] > 0
    assert metrics["accuracy"] == pytest.approx((tn + tp) / metrics["n"])
    assert "ci95" in metrics and "operating_points" in metrics
    assert metrics["ci95"]["roc_auc"][0] <= metrics["roc_auc"] <= metrics["ci95"]["roc_auc"][1]
    written = trained_run / "eval" / "val"
    assert json.loads((written / "metrics.json").read_text()) == metrics
    assert (written / "confusion_matrix.png").stat().st_size > 0
    assert (written / "roc_curve.png").stat().st_size > 0
    assert (written / "reliability.png").stat().st_size > 0


def test_evaluate_test_split_missing_is_a_clear_error(trained_run, shared_data, capsys):
    assert main(["evaluate", str(trained_run), "--data", str(shared_data), "--split", "test"]) == 2
    assert "no 'test' folder" in capsys.readouterr().err


def test_predict_files_and_folders_at_full_resolution(trained_run, shared_fullres, capsys):
    capsys.readouterr()
    one = shared_fullres / "PNEUMONIA" / "person89_virus_168.jpeg"
    assert (
        main(["predict", str(trained_run), str(one), str(shared_fullres / "NORMAL"), "--json"]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 + 30
    threshold = json.loads((trained_run / "meta.json").read_text())["threshold"]
    for result in lines:
        assert 0.0 <= result["probability"] <= 1.0
        expected = "PNEUMONIA" if result["probability"] >= threshold else "NORMAL"
        # the tiny run was trained on synthetic images: real X-rays may be out of its scope
        assert result["label"] == (expected if result["in_scope"] else "OUT_OF_SCOPE")


def test_predict_reports_bad_files_by_name_and_continues(
    trained_run, shared_fullres, tmp_path, capsys
):
    bad = tmp_path / "broken.jpeg"
    bad.write_text("not an image")
    good = shared_fullres / "NORMAL" / "IM-0206-0001.jpeg"
    capsys.readouterr()
    assert main(["predict", str(trained_run), str(bad), str(good), "--json"]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["source"] for line in lines] == [str(bad), str(good)]  # every file: a line
    assert "not an image" in lines[0]["error"] and lines[0]["probability"] is None
    assert "broken.jpeg" in captured.err and "not an image" in captured.err


def test_names_with_control_characters_cannot_forge_terminal_lines(
    trained_run, shared_fullres, tmp_path, capsys
):
    """A file named to clear the screen, or to print an error line of its own, shows its
    control characters as \\xNN: in error lines and in the results table."""
    (tmp_path / "x.png\nerror: model weights tampered.png").write_text("junk")
    (tmp_path / "y\x1b[2J\x1b[1;32mALL OK.png").write_text("junk")
    xray = next((shared_fullres / "NORMAL").glob("*.jpeg"))
    shutil.copy(xray, tmp_path / "z\x1b[31mRED.jpeg")
    capsys.readouterr()
    assert main(["predict", str(trained_run), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "\x1b" not in err and "\\x1b[2J" in err
    assert "\x1b" not in captured.out and "z\\x1b[31mRED.jpeg" in captured.out
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if line.strip()
    ]  # two errors, two lines: none forged


def test_python_api_accepts_path_pil_and_array(trained_run, shared_fullres):
    predictor = pneumolab.load_run(trained_run)
    path = shared_fullres / "NORMAL" / "IM-0206-0001.jpeg"
    by_path = predictor.predict(path)
    by_pil = predictor.predict(Image.open(path))
    by_array = predictor.predict(np.asarray(Image.open(path).convert("L")))
    # a path decodes the JPEG at reduced scale (DCT scaling), a PIL image arrives fully decoded
    assert by_path.probability == pytest.approx(by_pil.probability, abs=0.01)
    assert by_pil.probability == pytest.approx(by_array.probability, abs=1e-6)
    assert by_path.label in ("NORMAL", "PNEUMONIA")


def test_python_api_says_what_it_takes(trained_run, shared_fullres):
    import typing

    from pneumolab.errors import ImageLoadError, RunDirError

    predictor = pneumolab.load_run(Path(trained_run), scope_verdict=False)
    assert repr(predictor).startswith("Predictor(run=") and "threshold=" in repr(predictor)
    with pytest.raises(TypeError, match="a path, a PIL image or an array, not list"):
        predictor.predict([str(shared_fullres / "NORMAL" / "IM-0206-0001.jpeg")])
    with pytest.raises(ImageLoadError, match=r"NORMAL: is a folder; predict\(\) takes one image"):
        predictor.predict(shared_fullres / "NORMAL")
    weights = Path(trained_run) / "model.safetensors"
    with pytest.raises(RunDirError, match=r"model\.safetensors: is a file; give the run folder"):
        pneumolab.load_run(weights)
    assert {"Predictor", "load_run", "train"} <= set(dir(pneumolab))
    assert "version" not in dir(pneumolab)  # importlib's, not the package's
    assert typing.get_type_hints(pneumolab.load_run)["return"] is type(predictor)


def test_python_api_takes_torch_tensors_and_refuses_arrays_that_are_no_image(trained_run):
    """A tensor with requires_grad, or in PyTorch's (1, H, W) layout, failed in torch or NumPy;
    NaN, infinite and empty arrays were scored (p = 0.89); a device this machine lacks failed
    in torch's words (no NVIDIA driver)."""
    import torch

    from pneumolab.errors import ImageLoadError, ModelError

    predictor = pneumolab.load_run(trained_run)
    pixels = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    expected = predictor.predict(pixels).probability
    tensor = torch.from_numpy(pixels).requires_grad_()
    assert predictor.predict(tensor).probability == pytest.approx(expected, abs=1e-6)
    assert predictor.predict(tensor[None]).probability == pytest.approx(expected, abs=1e-6)
    half = predictor.predict(tensor.bfloat16()).probability  # NumPy has no bfloat16
    assert half == pytest.approx(expected, abs=0.02)
    for bad, problem in [
        (np.full((64, 64), np.nan), "NaN or infinite"),
        (np.full((64, 64), np.inf), "NaN or infinite"),
        (np.zeros((0, 0), np.uint8), "empty"),
    ]:
        with pytest.raises(ImageLoadError, match=problem):
            predictor.predict(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pneumolab.load_run(trained_run, device="cuda")
    with pytest.raises(ModelError, match="CUDA GPU"):
        pneumolab.load_run(trained_run, device=f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ModelError, match="not a device name"):
        pneumolab.load_run(trained_run, device="gpu0")


def test_unknown_model_is_a_clear_cli_error(shared_data, tmp_path, capsys):
    code = main(
        ["train", "--data", str(shared_data), "--out", str(tmp_path / "r"), "--model", "resnet_18"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet_18'" in err and "resnet18" in err


def test_wrong_layout_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "no 'train' folder" in capsys.readouterr().err


def test_data_check_on_real_data(shared_data, capsys):
    assert main(["data", "check", str(shared_data)]) == 0
    printed = capsys.readouterr()
    assert "1341" in printed.out and "3875" in printed.out and not printed.err  # a result: stdout
    assert "unreadable files: 0" in printed.out


def test_train_names_its_compute_and_not_lightnings_banners(synthetic_data, tmp_path, capfd):
    tiny = ["--model", "pneumolab_cnn_small", "--no-pretrained", "--image-size", "32"]
    tiny += ["--epochs", "1", "--batch-size", "8", "--num-workers", "0"]
    capfd.readouterr()
    assert main(["train", "--data", str(synthetic_data), "--out", str(tmp_path / "r"), *tiny]) == 0
    out, err = capfd.readouterr()
    assert re.search(r"training in (32-true|bf16-mixed) on ", out + err)  # precision: auto
    assert "GPU available" not in out + err and "litlogger" not in out + err
    # results on stdout, progress and messages on stderr: `train > log` kept the epoch lines
    # and lost the table
    assert "validation (patient-grouped)" in out and "epoch 1/1" not in out
    assert "epoch 1/1" in err and "validation (patient-grouped)" not in err


@pytest.mark.parametrize(
    ("error", "code", "said"),
    [
        (KeyboardInterrupt, 130, "interrupted\n"),  # nothing to continue: no --resume advice
        (BrokenPipeError, 141, ""),  # `| head -1` has read what it wanted: nothing to say
    ],
)
def test_an_interrupt_or_a_closed_pipe_says_only_what_applies(
    monkeypatch, capsys, error, code, said
):
    from pneumolab.cli import commands

    def cmd_models(args):
        raise error

    monkeypatch.setattr(commands, "cmd_models", cmd_models)
    assert main(["models"]) == code
    assert capsys.readouterr().err == said


@pytest.mark.parametrize(
    ("command", "signal", "code", "said"),
    [
        ("cmd_train", "SIGINT", 130, "training interrupted; continue it with `pneumolab train"),
        ("cmd_train", "SIGTERM", 143, "training interrupted; continue it with `pneumolab train"),
        ("cmd_study", "SIGINT", 130, "interrupted; run the same command again to continue"),
    ],
)
def test_a_training_stopped_by_a_signal_exits_as_interrupted(
    monkeypatch, capsys, command, signal, code, said
):
    """Ctrl+C and SIGTERM mid-training exited 2, as an error, where docs/cli.md says 130 / 143."""
    from pneumolab.cli import commands
    from pneumolab.errors import TrainingInterrupted

    def stopped(args):
        raise TrainingInterrupted(
            "training interrupted; continue it with `pneumolab train --resume ...`", signal
        )

    stopped.__name__ = command  # what the command line tells the commands apart by
    monkeypatch.setattr(commands, command, stopped)
    argv = {"cmd_train": ["train"], "cmd_study": ["study", "s.yaml"]}[command]
    assert main([*argv, "--data", "d", "--out", "o"]) == code
    err = capsys.readouterr().err
    assert said in err and "error" not in err


def test_ctrl_c_before_a_run_was_written_advises_no_resume(monkeypatch, capsys, tmp_path):
    """Stopped before its first checkpoint, train advised --resume, which then found nothing."""
    from pneumolab.cli import commands

    def cmd_train(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_train", cmd_train)
    out = tmp_path / "run"
    assert main(["train", "--data", "d", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("epochs: 1\n")  # written, but no checkpoint yet
    assert main(["train", "--data", "d", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an epoch")
    assert main(["train", "--data", "d", "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err


def test_ctrl_c_while_a_run_is_finished_advises_no_resume(monkeypatch, capsys, tiny_run, tmp_path):
    """Stopped after meta.json was written, train advised --resume, which refused the run as
    finished; its model card could be missing."""
    from conftest import copy_run
    from pneumolab.cli import commands

    def cmd_train(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_train", cmd_train)
    out = copy_run(tiny_run[0], tmp_path / "run")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an epoch")
    assert main(["train", "--data", "d", "--out", str(out)]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "--resume" not in err and "the run had finished" in err and "pneumolab report" in err


def test_ctrl_c_of_predict_with_overwrite_advises_a_rerun_without_it(monkeypatch, capsys):
    """The advice, "run the same command again", ran --overwrite again: it emptied the results
    file and scored every image anew."""
    from pneumolab.cli import run_commands

    def cmd_predict(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_commands, "cmd_predict", cmd_predict)
    assert main(["predict", "run", "x.png", "--out", "r.csv", "--overwrite"]) == 130
    assert "run it again without --overwrite to continue" in capsys.readouterr().err
    assert main(["predict", "run", "x.png", "--out", "r.csv"]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err


def test_an_interrupt_while_the_command_line_loads_is_no_traceback(monkeypatch, capsys):
    """Ctrl+C in the first fraction of a second (imports, parsing) printed a traceback."""
    import sys

    from pneumolab import allocator
    from pneumolab.__main__ import main as console_script

    monkeypatch.setattr(
        allocator, "reuse_freed_memory", lambda: False
    )  # this process keeps its malloc

    class Interrupted:
        """A finder that stands for Ctrl+C arriving while ``pneumolab.cli`` is imported."""

        def find_spec(self, name: str, *args: object) -> None:
            if name == "pneumolab.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "pneumolab.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert console_script() == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("command", ["predict", "audit", "explain"])
def test_max_megapixels_refuses_larger_images_by_name(tiny_run, tmp_path, capsys, command):
    """``--max-megapixels`` as ``serve`` has it: an image over it is refused from its header,
    named, and the others still run; at the default the same image is read."""
    run_dir, _ = tiny_run
    folder = tmp_path / "site"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(xray_like(rng, 120, 20, (150, 150))).save(folder / "big.png")  # 22,500 px
    Image.fromarray(xray_like(rng, 120, 20, (60, 60))).save(folder / "small.png")  # 3,600 px
    out = tmp_path / "out"
    where = [] if command == "predict" else ["--out", str(out)]
    capsys.readouterr()
    assert main([command, str(run_dir), str(folder), *where, "--max-megapixels", "0.01"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    if command == "audit":  # the audit names each unreadable file in its images.csv
        errors = [line for line in (out / "images.csv").read_text().splitlines() if "limit" in line]
    assert len(errors) == 1
    assert "big.png" in errors[0] and "150x150 pixels is over the limit of 10,000" in errors[0]
    again = [] if command == "predict" else ["--overwrite"]
    assert main([command, str(run_dir), str(folder), *where, *again]) == 0


def test_data_check_names_an_image_filed_under_both_classes(tmp_path, capsys):
    """One image in NORMAL and in PNEUMONIA was only counted as a duplicate group: a label
    conflict in the training data went unmentioned."""
    from conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data")
    normal = sorted((data / "train" / "NORMAL").iterdir())[0]
    twin = data / "train" / "PNEUMONIA" / "person999_bacteria_1.png"
    capsys.readouterr()
    assert main(["data", "check", str(data)]) == 0
    shutil.copy(normal, twin)
    assert main(["data", "check", str(data)]) == 1  # a check that finds a conflict fails
    out = " ".join(capsys.readouterr().out.split())
    assert "under two classes:" in out and normal.name in out and twin.name in out
    assert "images without a patient ID" not in out
    shutil.copy(normal, data / "train" / "NORMAL" / "scan.001")
    assert main(["data", "check", str(data)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "images without a patient ID: 1 (each its own patient" in out and "scan.001" in out


def test_data_check_reports_the_other_splits_when_one_cannot_be_scanned(tmp_path, capsys):
    """An empty val/NORMAL stopped the check with one line and no report (train only warns)."""
    from conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data")
    (data / "val" / "NORMAL").mkdir(parents=True)  # empty
    shutil.copytree(data / "train" / "PNEUMONIA", data / "val" / "PNEUMONIA")
    capsys.readouterr()
    assert main(["data", "check", str(data)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "val/ not checked: " in out and "val/NORMAL" in out
    assert "byte-identical duplicate groups" in out  # the rest was checked


class GoneReader:
    """A console's stream whose reader has gone (``| head`` has read what it wanted)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError

    def flush(self) -> None:
        raise BrokenPipeError


CONSOLES = importlib.import_module("pneumolab.cli.console")  # the package exports `console`


def test_a_table_whose_reader_went_away_exits_141_as_a_print_does(monkeypatch):
    """rich answers a closed pipe with exit 1 ("some inputs failed"): `data check | head`
    exited 1 where the same command unpiped exits 0."""
    consoles = CONSOLES
    monkeypatch.setattr(consoles.stdout, "file", GoneReader())
    monkeypatch.setattr(consoles.stdout, "quiet", False)  # set for good by the closed pipe
    assert main(["models"]) == 141
    assert consoles.stdout.quiet  # nothing more is written to the gone reader


def test_an_error_whose_reader_went_away_keeps_its_exit_code(monkeypatch, tmp_path):
    """``predict MISSING x.jpeg 2>&1 | true`` exited 1 (the closed pipe, uncaught while the
    error was said) where unpiped it exits 2."""
    consoles = CONSOLES
    silenced = []
    monkeypatch.setattr(consoles.console, "file", GoneReader())
    monkeypatch.setattr(consoles.console, "quiet", False)
    monkeypatch.setattr(consoles.os, "dup2", lambda *fds: silenced.append(fds))
    assert main(["predict", str(tmp_path / "missing_run"), str(tmp_path / "x.jpeg")]) == 2
    assert silenced  # stderr pointed at /dev/null: nothing fails at exit either


def _logging_models(monkeypatch, message: str) -> None:
    """`pneumolab models` logging ``message`` as a warning, with the CLI's log handler made anew."""
    from pneumolab.cli import commands

    def cmd_models(args):
        logging.getLogger("pneumolab.test").warning(message)
        return 0

    monkeypatch.setattr(commands, "cmd_models", cmd_models)
    monkeypatch.setattr(logging.getLogger("pneumolab"), "handlers", [])


def test_a_log_line_to_a_pipe_is_one_line_without_padding(monkeypatch, capsys):
    """Rich's handler wrapped a long warning at the console's width (160) and padded it with
    spaces in a log file: a command it suggested was cut in two."""
    message = "see `pneumolab fit-ood " + "runs/" + "x" * 200 + " --data DATA_DIR`"
    _logging_models(monkeypatch, message)
    assert main(["models"]) == 0
    assert capsys.readouterr().err == f"WARNING  {message}\n"


def test_a_log_line_whose_reader_went_away_exits_141(monkeypatch):
    _logging_models(monkeypatch, "a warning")
    monkeypatch.setattr(CONSOLES.console, "file", GoneReader())
    monkeypatch.setattr(CONSOLES.os, "dup2", lambda *fds: None)
    assert main(["models"]) == 141
