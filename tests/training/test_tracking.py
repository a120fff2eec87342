"""Experiment tracking with local stores: TensorBoard event files and an MLflow file store hold
the settings, one value per epoch and the run's files."""

from __future__ import annotations

import pytest
from test_train import StopAtEpoch

from conftest import TINY_TRAINING
from pneumolab.config import TrainConfig
from pneumolab.errors import TrainingInterrupted
from pneumolab.pipeline.train import train

pytestmark = pytest.mark.slow  # trains its own models

EPOCHS = 2


def _train(data, out, tracking: str):
    config = TrainConfig(
        epochs=EPOCHS, early_stopping_patience=5, tracking=tracking, **TINY_TRAINING
    )
    return train(data, out, config)


def test_csv_tracking_writes_no_logger_folder(synthetic_data, tmp_path):
    run = _train(synthetic_data, tmp_path / "run", "csv")
    assert not (run.root / "tensorboard").exists() and not (run.root / "mlruns").exists()
    assert len(run.history.read_text().splitlines()) == 1 + EPOCHS


def test_tensorboard_tracking_records_epochs_and_the_model_card(synthetic_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(synthetic_data, tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(run.root / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert len(events.Scalars("val_auc")) == EPOCHS
    assert {"train_loss", "val_loss"} <= set(events.Tags()["scalars"])
    texts = {tag.split("/")[0] for tag in events.Tags()["tensors"]}
    assert {"MODEL_CARD.md", "meta.json"} <= texts


def test_mlflow_tracking_uses_a_local_store(synthetic_data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _train(synthetic_data, tmp_path / "run", "mlflow")
    client = MlflowClient(tracking_uri=(run.root / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("pneumolab").experiment_id])
    assert tracked.info.run_name == "run" and tracked.info.status == "FINISHED"
    assert tracked.data.params["model"] == "pneumolab_cnn_small"
    assert tracked.data.params["epochs"] == str(EPOCHS)
    assert len(client.get_metric_history(tracked.info.run_id, "val_auc")) == EPOCHS
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"MODEL_CARD.md", "meta.json", "val_predictions.csv", "history.csv"} <= artifacts


def test_a_resumed_run_goes_on_in_its_mlflow_run(synthetic_data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrainConfig(
        epochs=EPOCHS, early_stopping_patience=5, tracking="mlflow", **TINY_TRAINING
    )
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, tmp_path / "run", config, callbacks=[StopAtEpoch(1)])
    run = train(synthetic_data, tmp_path / "run", resume=True)
    client = MlflowClient(tracking_uri=(run.root / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("pneumolab").experiment_id])
    assert tracked.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "val_auc")]
    assert len(steps) == EPOCHS and steps == sorted(set(steps))  # one per epoch, in order


def test_a_resume_in_another_precision_goes_on_in_its_mlflow_run(
    synthetic_data, tmp_path, monkeypatch
):
    """A change a resume allows (precision, accelerator, workers...) ended the resume in
    MLflow's "Changing param values is not allowed" traceback."""
    import yaml
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrainConfig(
        epochs=EPOCHS, early_stopping_patience=5, tracking="mlflow", **TINY_TRAINING
    )
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, tmp_path / "run", config, callbacks=[StopAtEpoch(1)])
    stored = tmp_path / "run" / "config.yaml"
    stored.write_text(yaml.safe_dump(yaml.safe_load(stored.read_text()) | {"precision": "32"}))
    run = train(synthetic_data, tmp_path / "run", resume=True)
    client = MlflowClient(tracking_uri=(run.root / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("pneumolab").experiment_id])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["precision"] == "auto"  # as the first leg logged it
    assert tracked.data.tags["resumed.precision"] == "32"


def test_a_moved_run_resumes_into_its_own_mlflow_store(synthetic_data, tmp_path, monkeypatch):
    """The file store keeps absolute artifact locations: a moved run's resume logged its files
    into the old folder, made again for them."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrainConfig(
        epochs=EPOCHS, early_stopping_patience=5, tracking="mlflow", **TINY_TRAINING
    )
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, tmp_path / "run", config, callbacks=[StopAtEpoch(1)])
    shutil.move(tmp_path / "run", tmp_path / "moved")
    run = train(synthetic_data, tmp_path / "moved", resume=True)
    assert not (tmp_path / "run").exists()
    client = MlflowClient(tracking_uri=(run.root / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("pneumolab").experiment_id])
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"MODEL_CARD.md", "meta.json"} <= artifacts
    assert (run.root / "mlruns").as_uri() in run.mlflow_run.read_text()


def test_two_trainings_in_one_process_track_in_their_own_stores(
    synthetic_data, tmp_path, monkeypatch
):
    """MLflow writes the store it is given into MLFLOW_TRACKING_URI: the second run of a
    process logged into the first one's store, and had none of its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        run = _train(synthetic_data, tmp_path / name, "mlflow")
        assert (run.root / "mlruns").is_dir()
        assert (run.root / "mlruns").as_uri() in run.mlflow_run.read_text()


def test_a_resume_whose_mlflow_run_is_gone_says_where_to_look(
    synthetic_data, tmp_path, monkeypatch
):
    import shutil

    from pneumolab.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrainConfig(
        epochs=EPOCHS, early_stopping_patience=5, tracking="mlflow", **TINY_TRAINING
    )
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, tmp_path / "run", config, callbacks=[StopAtEpoch(1)])
    shutil.rmtree(tmp_path / "run" / "mlruns")
    with pytest.raises(
        ConfigError, match=r"mlflow_run\.json: the MLflow run \w+ .*MLFLOW_TRACKING_URI"
    ):
        train(synthetic_data, tmp_path / "run", resume=True)


def test_a_missing_tracker_package_is_a_clear_error_before_any_file(
    synthetic_data, tmp_path, monkeypatch
):
    import importlib.util

    from pneumolab.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"tracking: mlflow needs the mlflow package"):
        _train(synthetic_data, tmp_path / "run", "mlflow")
    assert not (tmp_path / "run").exists()
