"""Where outputs may go: apart from the inputs, and one job per run or study folder at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import write_synthetic_dataset
from pneumolab.errors import OutputError
from pneumolab.outputs import check_output, results_file, working_in


def test_a_folder_is_one_jobs_at_a_time_and_a_refused_job_leaves_nothing(tmp_path):
    run = tmp_path / "runs" / "demo"
    with working_in(run, "training"):
        assert run.is_dir()
        second = working_in(run, "training")
        with pytest.raises(OutputError, match="another process is training in it"), second:
            pass
    assert not (tmp_path / "runs").exists()  # made here, left empty: removed, with its parent
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("kept")
    with pytest.raises(RuntimeError), working_in(run, "training"):
        raise RuntimeError("the job failed")
    assert (run / "config.yaml").read_text() == "kept"


def test_a_second_training_or_study_into_a_busy_folder_is_refused(tmp_path):
    """A second `study` on one --out deleted the run the first was training (stopped before its
    first checkpoint, it thought) or trained into it; a second `train` was told to delete it."""
    from pneumolab.pipeline.train import train
    from pneumolab.study.runner import run_study

    data = write_synthetic_dataset(tmp_path / "data", per_class=4)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        "models:\n  small:\n    model: pneumolab_cnn_small\n    pretrained: false\n"
    )
    for busy, start in [
        (tmp_path / "run", lambda out: train(data, out, {"epochs": 1})),
        (tmp_path / "study", lambda out: run_study(study_file, data, out)),
    ]:
        with working_in(busy, "training"):
            (busy / "checkpoints").mkdir()
            with pytest.raises(OutputError, match="another process is"):
                start(busy)
            assert (busy / "checkpoints").is_dir()


def test_a_folder_that_cannot_be_locked_is_worked_in_with_a_warning(tmp_path, monkeypatch, caplog):
    """Without fcntl (Windows) training crashed with a ModuleNotFoundError."""
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)
    with caplog.at_level("WARNING", logger="pneumolab"), working_in(tmp_path / "run", "training"):
        assert (tmp_path / "run").is_dir()
    assert "cannot be locked here" in caplog.text


def test_a_refused_job_never_removes_a_folder_it_did_not_make(tmp_path, monkeypatch):
    """Two jobs starting together: the one refused had seen no folder a moment before, removed
    the winner's still-empty one, and a third job was let in."""
    run = tmp_path / "run"
    seen = Path.exists
    with working_in(run, "training"):
        with monkeypatch.context() as patch:  # the loser looked just before the winner made it
            patch.setattr(Path, "exists", lambda self: False if self == run else seen(self))
            with pytest.raises(OutputError, match="another process"), working_in(run, "training"):
                pass
        assert run.is_dir()


def test_a_link_to_nowhere_is_replaced_only_when_asked(tmp_path):
    link = tmp_path / "model.onnx"
    link.symlink_to(tmp_path / "gone" / "model.onnx")
    with pytest.raises(OutputError, match=r"model\.onnx: a link to .*gone.*which does not exist"):
        check_output(link)
    assert check_output(link, overwrite=True) == link


def test_a_folder_this_process_cannot_write_in_is_refused_before_any_work(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # a read-only folder's answer (tests may run as root)
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(OutputError, match=r"new/r\.html: cannot write in .*locked \(permission"):
        check_output(locked / "new" / "r.html")
    assert check_output(tmp_path / "r.html") == tmp_path / "r.html"
    (locked / "results.csv").write_text("source\n")  # resumed by appending: no new file there
    assert check_output(locked / "results.csv", overwrite=True) == locked / "results.csv"


def test_a_results_file_this_process_cannot_write_is_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only results file was resumed: its append failed with "Permission denied; the
    rows written so far are kept: run the command again to continue" (none were written, and
    a rerun failed alike), and a resume that rewrote it (a torn row) or the Ray engine, which
    writes the whole file at the end, replaced it by a writable one."""
    out = tmp_path / "results.csv"
    out.write_text("source\n")
    real_access = os.access  # a read-only file's answer (tests may run as root)
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != out and real_access(p, mode))
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"results\.csv: read-only \(permission denied\)"):
            results_file(out, overwrite)
    assert out.read_text() == "source\n"
    assert results_file(tmp_path / "other.csv", overwrite=False) == tmp_path / "other.csv"
