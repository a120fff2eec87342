"""pneumolab: train, evaluate and serve pneumonia classifiers for pediatric chest X-rays.

>>> import pneumolab
>>> predictor = pneumolab.load_run("runs/demo")              # doctest: +SKIP
>>> predictor.predict("chest.jpeg")                           # doctest: +SKIP
Prediction(source='chest.jpeg', probability=0.97, label='PNEUMONIA', threshold=0.41, in_scope=True, ...)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("pneumolab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from pneumolab.config import TrainConfig
    from pneumolab.inference.prediction import Prediction
    from pneumolab.inference.predictor import Predictor

__all__ = [
    "Prediction",
    "Predictor",
    "TrainConfig",
    "__version__",
    "audit_folder",
    "build_ensemble",
    "compare_runs",
    "evaluate",
    "fit_run_ood",
    "load_run",
    "run_study",
    "train",
]

_LAZY = {
    "Prediction": "pneumolab.inference.prediction",
    "Predictor": "pneumolab.inference.predictor",
    "TrainConfig": "pneumolab.config",
    "train": "pneumolab.pipeline.train",
    "evaluate": "pneumolab.evaluation.evaluate",
    "build_ensemble": "pneumolab.pipeline.ensemble",
    "compare_runs": "pneumolab.evaluation.comparison",
    "run_study": "pneumolab.study.runner",
    "fit_run_ood": "pneumolab.pipeline.ood_fit",
    "audit_folder": "pneumolab.evaluation.audit",
}


def load_run(run_dir: str, device: str = "cpu") -> Predictor:
    """Load a finished run directory as a :class:`Predictor`."""
    from pneumolab.inference.predictor import Predictor

    return Predictor.from_run(run_dir, device=device)


def __getattr__(name: str) -> Any:
    """Import heavy submodules (torch, Lightning) only when their names are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pneumolab' has no attribute {name!r}")
