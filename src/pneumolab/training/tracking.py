"""Experiment tracking through Lightning's loggers, chosen by ``TrainConfig.tracking``: ``csv``
(``history.csv`` alone, always written), ``tensorboard`` or ``mlflow``. Both work offline from
local files: ``RUN_DIR/tensorboard/`` and the MLflow store ``RUN_DIR/mlruns/`` (or
``$MLFLOW_TRACKING_URI``). They receive the settings, every epoch's metrics and the run's files."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger

from pneumolab.config import TrainConfig
from pneumolab.errors import ConfigError, brief
from pneumolab.files import write_text_atomically
from pneumolab.run import RunDir
from pneumolab.training.distributed import global_rank

EXPERIMENT = "pneumolab"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""The package each tracker needs (``pip install 'pneumolab[tracking]'`` installs both)."""


def check_tracking(config: TrainConfig) -> None:
    """A clear error, before anything is written, when the chosen tracker is not installed."""
    package = PACKAGES.get(config.tracking)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"tracking: {config.tracking} needs the {package} package; install it with "
            "pip install 'pneumolab[tracking]', or choose tracking: csv"
        )


def experiment_logger(config: TrainConfig, run: RunDir) -> Logger | None:
    """The Lightning logger of ``config.tracking`` for ``run`` (None for ``csv``), with the
    settings logged as hyperparameters; None in the processes of rank above 0, as Lightning's
    loggers write from rank 0 alone (the others found rank 0's MLflow record, took the run for
    a resumed one and failed reading it through the logger's stand-in experiment)."""
    if config.tracking == "csv" or global_rank() != 0:
        return None
    if config.tracking == "tensorboard":
        logger = TensorBoardLogger(save_dir=run.root, name="tensorboard", version="")
        logger.log_hyperparams(config.model_dump())
        return logger
    uri = _tracking_uri(run)
    if uri.startswith("file:"):  # MLflow 3 keeps its file store behind an explicit opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    resumed = run.mlflow_run.is_file()
    mlflow = _mlflow_logger(run, uri)
    if resumed:
        _log_resumed_settings(mlflow, config.model_dump())
    else:
        mlflow.log_hyperparams(config.model_dump())
    return mlflow


def _log_resumed_settings(logger: MLFlowLogger, settings: dict[str, Any]) -> None:
    """Log on a resumed MLflow run the settings it has not logged yet, and a changed one (a
    resume may change precision, accelerator, strategy, workers, tracking) as a tag
    ``resumed.<setting>``: MLflow refuses to change a logged parameter, and the resume ended in
    its traceback."""
    logged = logger.experiment.get_run(logger.run_id).data.params
    as_logged = {key: str(value)[:MLFLOW_PARAM_CHARS] for key, value in settings.items()}
    new = {key: settings[key] for key in settings if key not in logged}
    if new:
        logger.log_hyperparams(new)
    for key, value in as_logged.items():
        if key in logged and logged[key] != value:
            logger.experiment.set_tag(logger.run_id, f"resumed.{key}", value)


MLFLOW_PARAM_CHARS = 250
"""How much of a parameter's text Lightning's MLflow logger keeps."""

RUN_STORES: set[str] = set()
"""The runs' own stores this process tracked in: MLflow writes the store it is given into
``MLFLOW_TRACKING_URI``, which then is no choice of the user's."""


def _tracking_uri(run: RunDir) -> str:
    """``$MLFLOW_TRACKING_URI`` where the user set it, else the run's own store ``RUN_DIR/mlruns``
    (a second training in one process logged into the first one's store, which MLflow had
    put in the variable)."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    if given and given not in RUN_STORES:
        return given
    own = _own_store(run)
    RUN_STORES.add(own)
    return own


def _own_store(run: RunDir) -> str:
    """The URI of ``run``'s own local MLflow store, ``RUN_DIR/mlruns``."""
    return (run.root / "mlruns").resolve().as_uri()


def _mlflow_logger(run: RunDir, uri: str) -> MLFlowLogger:
    """The MLflow logger of ``run``: the MLflow run it was tracked in before (a resume goes on in
    it, its epochs after the earlier ones), else a new one, whose id ``run.mlflow_run`` keeps."""
    if not run.mlflow_run.is_file():
        logger = MLFlowLogger(experiment_name=EXPERIMENT, run_name=run.root.name, tracking_uri=uri)
        # rank 0 has the run's id; the other ranks of a multi-process run track nothing
        if logger.run_id is not None:
            record = {"run_id": logger.run_id, "tracking_uri": uri}
            write_text_atomically(run.mlflow_run, json.dumps(record) + "\n")
        return logger
    try:
        record = json.loads(run.mlflow_run.read_text(encoding="utf-8"))
        run_id = str(record["run_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run.mlflow_run}: not a record of an MLflow run ({exc})") from None
    if _moved_with_its_store(run, record.get("tracking_uri"), uri):
        _rebase_store(run, str(record["tracking_uri"]), uri)
        record["tracking_uri"] = uri  # the record follows its store
        write_text_atomically(run.mlflow_run, json.dumps(record) + "\n")
    logger = MLFlowLogger(experiment_name=EXPERIMENT, tracking_uri=uri, run_id=run_id)
    try:
        logger.experiment  # noqa: B018 (looks the run up)
    except Exception as exc:  # MLflow's stores raise MlflowException, or (file store) Exception
        raise ConfigError(
            f"{run.mlflow_run}: the MLflow run {run_id} this run was tracked in (store "
            f"{record.get('tracking_uri')}) cannot be reached at {uri} ({brief(str(exc))}); "
            "point MLFLOW_TRACKING_URI at its store"
        ) from None
    return logger


def _moved_with_its_store(run: RunDir, recorded: object, uri: str) -> bool:
    """Whether ``run`` was tracked in its own local store (``RUN_DIR/mlruns``) at another place,
    and now is: the folder was moved or copied with it."""
    own = _own_store(run)
    return (
        isinstance(recorded, str)
        and uri == own
        and recorded != own
        and recorded.startswith("file:")
        and recorded.endswith("/mlruns")
    )


def _rebase_store(run: RunDir, old: str, new: str) -> None:
    """Point a moved run's local MLflow store at its new place: the file store keeps absolute
    artifact locations, so a resume logged the run's files into the old folder (made again
    there, or into the copy's original)."""
    at_old = re.compile(re.escape(old) + r"(?=/|\s|'|\"|$)", re.MULTILINE)
    for meta in (run.root / "mlruns").rglob("meta.yaml"):
        text = meta.read_text(encoding="utf-8")
        if at_old.search(text):
            write_text_atomically(meta, at_old.sub(new, text))


def log_run_files(logger: Logger | None, files: Sequence[Path]) -> None:
    """Attach the run's files (model card, meta.json, validation predictions) to the tracked
    experiment: MLflow artifacts, or TensorBoard text for Markdown and JSON files."""
    present = [path for path in files if path.is_file()]
    if isinstance(logger, MLFlowLogger):
        for path in present:
            logger.experiment.log_artifact(logger.run_id, str(path))
    elif isinstance(logger, TensorBoardLogger):
        for path in (p for p in present if p.suffix in (".md", ".json")):
            text = path.read_text(encoding="utf-8")
            logger.experiment.add_text(path.name, text if path.suffix == ".md" else f"    {text}")
    if logger is not None:
        logger.finalize("success")
