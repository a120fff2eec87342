"""pneumolab: train, evaluate and serve pneumonia classifiers for pediatric chest X-rays.

>>> import pneumolab
>>> predictor = pneumolab.load_run("runs/demo")              # doctest: +SKIP
>>> predictor.predict("chest.jpeg")                           # doctest: +SKIP
Prediction(source='chest.jpeg', probability=0.97, label='PNEUMONIA', threshold=0.41, in_scope=True, ...)
"""

from __future__ import annotations

from functools import cache as _cache
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:  # what type checkers see of the lazy names below
    __version__: str

    from pneumolab.config import TrainConfig
    from pneumolab.evaluation.audit import audit_folder
    from pneumolab.evaluation.comparison import compare_runs
    from pneumolab.explain.gradcam import explain_image
    from pneumolab.inference.prediction import Prediction
    from pneumolab.inference.predictor import Predictor, load_run
    from pneumolab.pipeline.ensemble import build_ensemble
    from pneumolab.pipeline.evaluate import evaluate
    from pneumolab.pipeline.ood_fit import fit_run_ood
    from pneumolab.pipeline.train import train
    from pneumolab.results import EvaluationMetrics
    from pneumolab.run import RunDir
    from pneumolab.serving.export import export_onnx
    from pneumolab.study.runner import run_study

__all__ = [
    "EvaluationMetrics",
    "Prediction",
    "Predictor",
    "RunDir",
    "TrainConfig",
    "__version__",
    "audit_folder",
    "build_ensemble",
    "compare_runs",
    "evaluate",
    "explain_image",
    "export_onnx",
    "fit_run_ood",
    "load_run",
    "run_study",
    "train",
]

_LAZY = {
    "Prediction": "pneumolab.inference.prediction",
    "Predictor": "pneumolab.inference.predictor",
    "load_run": "pneumolab.inference.predictor",
    "TrainConfig": "pneumolab.config",
    "train": "pneumolab.pipeline.train",
    "evaluate": "pneumolab.pipeline.evaluate",
    "build_ensemble": "pneumolab.pipeline.ensemble",
    "compare_runs": "pneumolab.evaluation.comparison",
    "run_study": "pneumolab.study.runner",
    "fit_run_ood": "pneumolab.pipeline.ood_fit",
    "audit_folder": "pneumolab.evaluation.audit",
    "explain_image": "pneumolab.explain.gradcam",
    "export_onnx": "pneumolab.serving.export",
    "RunDir": "pneumolab.run",
    "EvaluationMetrics": "pneumolab.results",
}


@_cache
def _installed_version() -> str:
    """The installed distribution's version ("0.0.0+unknown" in a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pneumolab")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def __getattr__(name: str) -> _Any:
    """Import heavy submodules (torch, Lightning) only when their names are used, and read the
    version only when asked (``importlib.metadata`` costs a command's start 60 ms)."""
    if name == "__version__":
        return _installed_version()
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pneumolab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (the lazy ones included), for tab completion."""
    return sorted(__all__)
