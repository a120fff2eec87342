"""The bad-input corpus (tests/corpus.py) through the CLI and the HTTP API: every case gets a
clear message naming the file and the problem, the right exit code or status, no traceback;
and the CLI's other hostile cases: bad flags, outputs over existing work, odd paths."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import copy_run, write_synthetic_dataset
from corpus import BadInput, image_bytes, write_corpus
from pneumolab.cli import main
from pneumolab.cli.console import printable
from pneumolab.data.formats import IMAGE_SUFFIXES
from pneumolab.files import current_umask
from pneumolab.serving.app import create_app


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory) -> Path:
    return copy_run(tiny_run[0], tmp_path_factory.mktemp("bad") / "run")  # evaluate writes in it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, BadInput]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "bad")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good [x].png"
    path.write_bytes(image_bytes("PNG"))
    return path


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse refuses a flag
        code = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_every_bad_input_is_named_and_the_good_one_still_runs(run_dir, corpus, good, capsys):
    for name, bad in corpus.items():
        code, out, err = run_cli(capsys, "predict", run_dir, bad.path, good, "--json")
        assert code == 1, name
        lines = [json.loads(line) for line in out.splitlines()]  # the error a line of its own
        assert [(line["source"], bool(line["error"])) for line in lines] == [
            (str(bad.path), True),
            (str(good), False),
        ], name
        assert printable(str(bad.path)) in err and bad.problem in err, (name, err)


def test_a_table_holds_the_good_inputs_and_none_is_printed_when_every_input_fails(
    run_dir, corpus, good, capsys
):
    bad = next(iter(corpus.values()))
    code, out, err = run_cli(capsys, "predict", run_dir, bad.path)
    assert code == 1 and out == "" and bad.problem in err
    code, out, _ = run_cli(capsys, "predict", run_dir, bad.path, good)
    assert code == 1 and "probability" in out and good.stem[:4] in out


def test_a_link_whose_target_is_gone_is_named_not_skipped(run_dir, good, tmp_path, capsys):
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(good, folder / "ok.png")
    (folder / "gone.png").symlink_to(tmp_path / "moved away.png")
    (folder / "notes.txt").symlink_to(tmp_path / "nothing")  # not an image name: passed over
    (folder / "scan.dcm").symlink_to("/unmounted/pacs/scan.dcm")
    (folder / "chain.png").symlink_to("gone.png")  # a link to that link: the end is named
    code, out, err = run_cli(capsys, "predict", run_dir, folder, "--json")
    assert code == 1 and [json.loads(line)["source"] for line in out.splitlines()] == [
        str(folder / "chain.png"),
        str(folder / "gone.png"),  # its error line
        str(folder / "ok.png"),
        str(folder / "scan.dcm"),
    ]
    errors = one_line(err).split("error:")[1:]  # notes.txt: only in the passed-over count
    # was "file not found", of a name that `ls` lists
    assert [e.strip() for e in errors] == [
        f"{folder / 'chain.png'}: a link to {tmp_path / 'moved away.png'}, which does not exist",
        f"{folder / 'gone.png'}: a link to {tmp_path / 'moved away.png'}, which does not exist",
        f"{folder / 'scan.dcm'}: a link to /unmounted/pacs/scan.dcm, which does not exist",
    ]


def test_predict_out_records_every_bad_input(run_dir, corpus, good, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    paths = [bad.path for bad in corpus.values()]
    code, _, err = run_cli(capsys, "predict", run_dir, *paths, good, "--out", out)
    assert code == 1 and f"{len(corpus)} failed" in one_line(err)
    assert "the failed images are named in its error column" in one_line(err)
    rows = {Path(row["source"]).name: row for row in map(json.loads, out.read_text().splitlines())}
    for name, bad in corpus.items():
        assert bad.problem in rows[bad.path.name]["error"], name
    assert rows[good.name]["probability"] is not None


def test_data_check_fails_on_unreadable_files(corpus, tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "data", per_class=4)
    files = [b.path for b in corpus.values() if b.path.is_file()]
    not_utf8 = [
        p
        for p in files
        if p.name.encode("utf-8", "surrogateescape") != p.name.encode("utf-8", "replace")
    ]
    for path in files:
        shutil.copy(path, data / "train" / "PNEUMONIA" / path.name)
    code, _, err = run_cli(capsys, "data", "check", data)  # a dataset's names must be UTF-8
    assert code == 2 and "caf\\xe9-junk.jpeg: file name is not UTF-8 text" in err
    for path in not_utf8:
        (data / "train" / "PNEUMONIA" / path.name).unlink()
    files = [p for p in files if p not in not_utf8]
    code, out, _ = run_cli(capsys, "data", "check", data)  # the report: stdout
    assert code == 1
    listed = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    assert f"unreadable files: {len(listed)}" in out
    for path in listed:
        assert printable(str(data / "train" / "PNEUMONIA" / path.name)) in out


def test_train_names_unreadable_images_as_the_cause(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "data", per_class=12)
    for path in (data / "train" / "PNEUMONIA").iterdir():
        path.write_bytes(b"all the same junk")  # identical files: they look like one patient
    code, _, err = run_cli(
        capsys, "train", "--data", data, "--out", tmp_path / "run", "--model",
        "pneumolab_cnn_small", "--no-pretrained", "--epochs", "1", "--image-size", "32",
    )  # fmt: skip
    assert code == 2
    assert "12 of 24 training images are unreadable" in one_line(err)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "1e9999"])
def test_numeric_flags_are_checked(run_dir, good, value, capsys):
    for command in (
        ("predict", run_dir, good, "--batch-size", value),
        ("predict", run_dir, good, "--workers", value),
        ("predict", run_dir, good, "--engine", "ray", "--num-workers", value),
        ("audit", run_dir, good, "--batch-size", value),
        ("serve", run_dir, "--max-upload-mb", value),
    ):
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and command[-2] in err, command


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_replica_shares_are_checked(run_dir, good, value, capsys):
    for flag in ("--cpus-per-worker", "--gpus-per-worker"):
        code, _, err = run_cli(capsys, "predict", run_dir, good, "--engine", "ray", flag, value)
        assert code == 2 and flag in err


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_ensemble_target_sensitivity_is_checked(run_dir, tmp_path, value, capsys):
    out = tmp_path / "ens"
    code, _, err = run_cli(
        capsys, "ensemble", run_dir, run_dir, "--out", out, "--target-sensitivity", value
    )
    assert code == 2 and "--target-sensitivity" in err
    assert "must be in (0, 1]" in one_line(err)  # the config's range, not [0, 1]


def test_ensemble_refuses_a_zero_target_before_writing_anything(run_dir, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "ensemble", run_dir, run_dir, "--out", tmp_path / "ens", "--target-sensitivity", "0"
    )
    assert code == 2 and "target sensitivity must be in (0, 1], got 0.0" in one_line(err)
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_port_range(run_dir, port, capsys):
    code, _, err = run_cli(capsys, "serve", run_dir, "--port", port)
    assert code == 2 and "out of range" in err


def test_outputs_over_existing_work_are_refused(run_dir, tmp_path, capsys):
    for own in (run_dir / "model.safetensors", run_dir / "ood.safetensors"):
        before = own.read_bytes()
        for flags in (["--out", own], ["--out", own, "--overwrite"]):
            code, _, err = run_cli(capsys, "export", run_dir, *flags)
            assert code == 2 and "belongs to the run" in one_line(err)
        assert own.read_bytes() == before
    existing = tmp_path / "model.onnx"
    existing.write_text("keep me")
    code, _, err = run_cli(capsys, "export", run_dir, "--out", existing)
    assert code == 2 and "already exists; pass --overwrite" in one_line(err)
    assert existing.read_text() == "keep me"
    assert run_cli(capsys, "export", run_dir, "--out", existing, "--overwrite")[0] == 0
    assert existing.read_bytes() != b"keep me"
    (tmp_path / "folder.csv").mkdir()
    code, _, err = run_cli(capsys, "predict", run_dir, existing, "--out", tmp_path / "folder.csv")
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[:100], "unreadable weights file"),
        (lambda data: b"", "unreadable weights file"),
    ],
    ids=["truncated", "empty"],
)
def test_damaged_weights_are_named_not_a_traceback(
    run_dir, good, tmp_path, damage, problem, capsys
):
    damaged = copy_run(run_dir, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    code, _, err = run_cli(capsys, "predict", damaged, good)
    assert code == 2 and f"{weights}: {problem}" in one_line(err)
    assert "Traceback" not in err


def test_report_out_refuses_an_existing_file(run_dir, tiny_run, tmp_path, capsys):
    existing = tmp_path / "report.html"
    existing.write_text("keep me")
    data = tiny_run[1]
    code, _, err = run_cli(capsys, "report", run_dir, "--data", data, "--out", existing)
    assert code == 2 and "already exists" in err and existing.read_text() == "keep me"
    xray = next((Path(data) / "train").rglob("*.png"))  # --out one of the images it reads
    before = xray.read_bytes()
    code, _, err = run_cli(
        capsys, "report", run_dir, "--data", data, "--out", xray, "--overwrite"
    )  # fmt: skip
    assert code == 2 and "an input folder of this command" in one_line(err)
    assert xray.read_bytes() == before
    evaluation = tmp_path / "eval" / "predictions.csv"  # an evaluation's file: not a report's
    evaluation.parent.mkdir()
    evaluation.write_text("path,label,probability\n")
    code, _, err = run_cli(
        capsys, "report", run_dir, "--data", data, "--out", evaluation, "--overwrite"
    )  # fmt: skip
    assert code == 2 and "a report is an .html file; give --out a name ending in .html" in err
    assert evaluation.read_text() == "path,label,probability\n"


def test_train_out_and_weights_that_are_not_what_they_should_be(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "data", per_class=12)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run directory, not weights\n")
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", a_file)
    assert code == 2 and "is a file" in err
    code, _, err = run_cli(
        capsys, "train", "--data", data, "--out", tmp_path / "run", "--model", "resnet18",
        "--weights", a_file,
    )  # fmt: skip
    assert code == 2 and "notes.txt" in one_line(err) and "could not load" in one_line(err)
    assert not (tmp_path / "run").exists()
    study = tmp_path / "study.yaml"
    study.write_text("models:\n  - name: a\n    model: pneumolab_cnn_small\n")
    inside = data / "train" / "NORMAL" / "run"  # its figures would be NORMAL X-rays next time
    for command in (("train", "--data", data), ("study", study, "--data", data)):
        code, _, err = run_cli(capsys, *command, "--out", inside)
        assert code == 2 and "an input folder of this command" in one_line(err), command
        assert not inside.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--export",), "--export without --backend onnx"),
        (("--backend", "onnx-int8", "--export"), "--export without --backend onnx"),
        (("--overwrite",), "--overwrite without --out"),
        (("--json", "--out", "r.csv"), "--json with --out"),
        (("--engine", "ray", "--out", "r.csv", "--workers", "2"), "--workers with --engine ray"),
        (
            (
                "--num-workers",
                "2",
            ),
            "--num-workers without --engine ray",
        ),
        (("--address", "auto", "--cpus-per-worker", "2"), "--address without --engine ray"),
    ],
)
def test_flags_that_would_be_ignored_are_refused_before_anything_loads(
    tmp_path, good, flags, named, capsys
):
    missing_run = tmp_path / "no run here"  # refused before the run is read
    code, out, err = run_cli(capsys, "predict", missing_run, good, *flags)
    assert code == 2 and not out
    assert named in one_line(err) and "no run here" not in err


def test_report_overwrite_without_out_is_refused(tmp_path, capsys):
    """The run's own report.html is always replaced: the flag did nothing, silently."""
    missing_run = tmp_path / "no run here"
    code, _, err = run_cli(capsys, "report", missing_run, "--data", tmp_path, "--overwrite")
    assert code == 2 and "--overwrite without --out" in one_line(err)
    assert "no run here" not in err


def test_weights_with_no_pretrained_are_refused_not_recorded(tmp_path, capsys):
    """The file was never read, yet config.yaml recorded it as the run's weights; with
    `pretrained: false` in a config file it was dropped without a word."""
    args = ["train", "--data", tmp_path, "--out", tmp_path / "run", "--no-pretrained"]
    code, _, err = run_cli(capsys, *args, "--weights", tmp_path / "w.safetensors")
    assert code == 2 and "--weights without pretrained weights" in one_line(err)
    scratch = tmp_path / "scratch.yaml"
    scratch.write_text("pretrained: false\n")
    args = ["train", "--data", tmp_path, "--out", tmp_path / "run", "--config", scratch]
    code, _, err = run_cli(capsys, *args, "--weights", tmp_path / "w.safetensors")
    assert code == 2 and "--weights without pretrained weights" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_training_flags_the_combination_never_reads_are_refused(tmp_path, capsys):
    """docs/cli.md: a flag that would do nothing is refused; these trained without a word."""
    args = ["train", "--data", tmp_path, "--out", tmp_path / "run", "--swa-lr", "0.5"]
    code, _, err = run_cli(capsys, *args, "--unfreeze-stages", "5", "--distill-weight", "0.9")
    message = one_line(err)
    assert code == 2 and "--swa-lr without --swa-epochs" in message
    assert "--unfreeze-stages with --strategy finetune" in message
    assert "--distill-weight without --teacher" in message
    assert not (tmp_path / "run").exists()


def test_serve_says_where_it_cannot_listen_before_loading_the_model(tmp_path, capsys):
    missing_run = tmp_path / "no run here"
    code, _, err = run_cli(capsys, "serve", missing_run, "--host", "192.0.2.1")  # TEST-NET-1
    assert code == 2 and "cannot listen on 192.0.2.1:8000" in one_line(err)
    assert "no run here" not in err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run_cli(capsys, "serve", missing_run, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_line(err)
    assert "in use" in err


def test_serve_says_where_it_cannot_listen_before_importing_pytorch(tmp_path):
    """The check ran after the app's imports: 30 s on a busy machine before "cannot listen"."""
    import subprocess
    import sys

    code = (
        "import sys; from pneumolab.cli import main; "
        f"code = main(['serve', {str(tmp_path)!r}, '--host', '192.0.2.1']); "
        "print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"]


def test_resume_refuses_flags_it_would_ignore(run_dir, tiny_run, capsys):
    args = ["train", "--resume", "--data", tiny_run[1], "--out", run_dir]
    code, _, err = run_cli(capsys, *args, "--epochs", "6", "--model", "resnet18")
    assert code == 2 and "--model, --epochs would be ignored" in one_line(err)


def test_evaluate_test_split_needs_no_train_folder(run_dir, tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "data", per_class=4)
    (data / "train").rename(data / "test")
    code, out, _ = run_cli(capsys, "evaluate", run_dir, "--data", data, "--split", "test", "--json")
    assert code == 0 and json.loads(out)["n"] == 8


def test_every_bad_upload_gets_a_json_error(run_dir, corpus):
    client = TestClient(create_app(run_dir), raise_server_exceptions=False)
    for name, bad in corpus.items():
        if bad.http_status is None:
            continue
        upload = {"file": (printable(name), bad.path.read_bytes())}  # a header is text
        response = client.post("/v1/predict", files=upload)
        assert response.status_code == bad.http_status, (name, response.text)
        detail = response.json()["detail"]
        assert bad.problem in detail and "Traceback" not in detail, (name, detail)


def test_weights_are_written_with_the_umask(tiny_run):
    for name in ("model.safetensors", "ood.safetensors"):
        mode = (tiny_run[0] / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~current_umask(), name  # safetensors alone writes 0600


def test_a_dependency_missing_from_a_broken_install_is_one_line(tiny_run, tmp_path, capsys):
    """A third-party module gone from the environment ended in an ImportError traceback."""
    from pneumolab.cli.parser import build_parser

    def broken(args):
        import a_package_of_the_environment  # noqa: F401

    args = build_parser().parse_args(["models"])
    args.func = broken
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pneumolab.cli.build_parser", lambda: _Fixed(args))
        code, _, err = run_cli(capsys, "models")
    assert code == 2
    assert "the Python package a_package_of_the_environment is missing" in one_line(err)
    assert "Traceback" not in err


def test_a_missing_module_of_pneumolab_itself_keeps_its_traceback(tmp_path, monkeypatch):
    """A bug (a misspelt internal import) must not read as "reinstall pneumolab"."""
    from pneumolab.cli.parser import build_parser

    def broken(args):
        import pneumolab.no_such_module  # noqa: F401

    args = build_parser().parse_args(["models"])
    args.func = broken
    monkeypatch.setattr("pneumolab.cli.build_parser", lambda: _Fixed(args))
    with pytest.raises(ModuleNotFoundError, match=r"pneumolab\.no_such_module"):
        main(["models"])


class _Fixed:
    """A parser that answers with ``args`` whatever it is given."""

    def __init__(self, args):
        self.args = args

    def parse_args(self, argv):
        return self.args
