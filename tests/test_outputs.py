"""Where outputs may go: apart from the inputs, and one job per run or study folder at a time."""

from __future__ import annotations

import pytest

from conftest import write_synthetic_dataset
from pneumolab.errors import OutputError
from pneumolab.outputs import working_in


def test_a_folder_is_one_jobs_at_a_time_and_a_refused_job_leaves_nothing(tmp_path):
    run = tmp_path / "runs" / "demo"
    with working_in(run, "training"):
        assert run.is_dir()
        second = working_in(run, "training")
        with pytest.raises(OutputError, match="another process is training in it"), second:
            pass
    assert not run.exists()  # made here, left empty: removed
    run.mkdir()
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
