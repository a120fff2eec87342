"""Which processes of a training track: rank 0 alone, as Lightning's loggers write."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from conftest import TINY_TRAINING
from pneumolab.config import TrainConfig
from pneumolab.run import RunDir
from pneumolab.training.tracking import experiment_logger


@pytest.mark.parametrize("tracking", ["mlflow", "tensorboard"])
def test_only_rank_zero_tracks(tmp_path, monkeypatch, tracking):
    """Under several processes rank 0 writes the MLflow record before the others start; each
    of them then took the run for a resumed one and failed reading it ('NoneType' object has
    no attribute 'data'): every multi-process training with tracking: mlflow."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):  # restored after the test,
        monkeypatch.setenv(name, "")  # though MLflow and pneumolab set them
        monkeypatch.delenv(name)
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    config = TrainConfig(tracking=tracking, **TINY_TRAINING)
    assert experiment_logger(config, run) is not None  # rank 0
    written = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert experiment_logger(config, run) is None
    assert sorted(tmp_path.rglob("*")) == written  # nothing written by rank 1
