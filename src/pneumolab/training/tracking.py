"""Experiment tracking through Lightning's loggers, chosen by ``TrainConfig.tracking``: ``csv``
(``history.csv`` alone, always written), ``tensorboard`` or ``mlflow``. Both work offline from
local files: ``RUN_DIR/tensorboard/`` and the MLflow store ``RUN_DIR/mlruns/`` (or
``$MLFLOW_TRACKING_URI``). They receive the settings, every epoch's metrics and the run's files."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger

from pneumolab.config import TrainConfig
from pneumolab.errors import ConfigError
from pneumolab.run import RunDir

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
    settings logged as hyperparameters."""
    logger: Logger
    if config.tracking == "csv":
        return None
    if config.tracking == "tensorboard":
        logger = TensorBoardLogger(save_dir=run.root, name="tensorboard", version="")
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.root / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind an explicit opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        logger = MLFlowLogger(experiment_name=EXPERIMENT, run_name=run.root.name, tracking_uri=uri)
    logger.log_hyperparams(config.model_dump())
    return logger


def log_run_files(logger: Logger | None, files: Sequence[Path]) -> None:
    """Attach the run's files (model card, meta.json, validation predictions) to the tracked
    experiment: MLflow artifacts, or TensorBoard text for Markdown and JSON files."""
    present = [path for path in files if path.is_file()]
    if isinstance(logger, MLFlowLogger):
        for path in present:
            logger.experiment.log_artifact(logger.run_id, str(path))
    elif isinstance(logger, TensorBoardLogger):
        for path in (p for p in present if p.suffix in (".md", ".json")):
            text = path.read_text()
            logger.experiment.add_text(path.name, text if path.suffix == ".md" else f"    {text}")
    if logger is not None:
        logger.finalize("success")
