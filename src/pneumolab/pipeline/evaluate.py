"""Evaluate a finished run as ``pneumolab evaluate`` does: score it and write ``eval/<split>/``
(:func:`pneumolab.evaluation.evaluate.evaluate`), then, on validation without test-time
augmentation, rewrite its model card with the evaluation's intervals."""

from __future__ import annotations

from pathlib import Path

from pneumolab.choices import BackendName, Split
from pneumolab.evaluation import evaluate as evaluation
from pneumolab.reporting.model_card import CARD_SPLIT, write_model_card
from pneumolab.results import EvaluationMetrics
from pneumolab.run import RunDir


def refreshes_card(split: Split, tta: bool) -> bool:
    """Whether an evaluation on ``split`` rewrites the run's model card: on validation, without
    test-time augmentation (a TTA evaluation's figures are at another threshold: the card would
    fall back on training's, dropping a report's intervals)."""
    return split == CARD_SPLIT and not tta


def evaluate(
    run_dir: str | Path,
    data_dir: str | Path,
    split: Split = "val",
    robustness: bool = False,
    device: str | None = None,
    tta: bool = False,
    shift: bool = False,
    backend: BackendName = "torch",
) -> EvaluationMetrics:
    """Evaluate the run in ``run_dir`` on ``split`` of ``data_dir`` and return its metrics, as
    :func:`pneumolab.evaluation.evaluate.evaluate` does (the arguments, the metrics and the
    files written into ``RUN_DIR/eval/<split>/`` are described there); on the validation split
    without ``tta`` (:func:`refreshes_card`), then rewrite ``RUN_DIR/MODEL_CARD.md`` with the
    evaluation's figures and patient-level 95% intervals, as ``pneumolab evaluate`` does (a card
    edited since pneumolab wrote it is kept first as ``MODEL_CARD.edited-<time>.md``)."""
    metrics = evaluation.evaluate(run_dir, data_dir, split, robustness, device, tta, shift, backend)
    if refreshes_card(split, tta):
        write_model_card(RunDir(Path(run_dir)))  # from eval/val/metrics.json, just written
    return metrics
