"""Evaluate a finished run on its validation split or on the dataset's test split: score it
(:mod:`pneumolab.evaluation.scoring`) and write what it found (:mod:`pneumolab.evaluation.writer`)."""

from __future__ import annotations

from pathlib import Path

from pneumolab.choices import BackendName, Split
from pneumolab.evaluation.scoring import compute_evaluation
from pneumolab.evaluation.writer import write_evaluation
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import default_device
from pneumolab.results import EvaluationMetrics


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
    """Metrics at the run's stored threshold, threshold-free metrics, patient-grouped bootstrap
    95% intervals (``ci95``), every stored operating point and an oracle threshold scored on this
    split, and calibration before/after the run's temperature and Platt maps. Writes metrics.json,
    predictions.csv and PNG figures (confusion matrix, ROC curve, reliability diagram, decision
    curve) into ``RUN_DIR/eval/<split>/`` and returns the metrics (typed: ``metrics.roc_auc``,
    ``metrics.ci95["roc_auc"]``; ``metrics.model_dump()`` gives them as a dict). Every ``test``
    evaluation is logged in ``RUN_DIR/test_evaluations.jsonl``; ``test_evaluations_count`` says
    how many there have been.

    ``tta`` averages each image over fixed test-time views, scored at the run's TTA threshold
    (chosen on its validation TTA scores) where it has one, else at the stored threshold. With
    ``robustness``, also scores the split under acquisition-like perturbations
    (:mod:`pneumolab.evaluation.robustness`), with the same backend and TTA, and adds
    ``robustness`` and ``robustness_summary``. A three-class run adds
    ``subtypes`` (:func:`~pneumolab.evaluation.subtypes.subtype_metrics`) and its 3x3 matrix.
    With ``shift``, adds the shift protocol (:mod:`pneumolab.evaluation.shift`): ``shift`` (per
    scenario, mean and min over three draws), ``shift_summary`` and ``acquisition_batches``,
    and writes its per-image scores (``shift_predictions.csv``). ``backend``: see
    :meth:`Predictor.from_run <pneumolab.inference.predictor.Predictor.from_run>` (``onnx``
    evaluates the exported model, the file a deployment serves); ``metrics.backend`` says
    which scored. The run's model card is left as it is: :func:`pneumolab.evaluate` (what
    ``pneumolab evaluate`` calls) also rewrites it with a validation evaluation's intervals.
    """
    predictor = Predictor.from_run(
        run_dir, device=device or default_device(), backend=backend, tta=tta
    )
    evaluation = compute_evaluation(predictor, data_dir, split, robustness, shift)
    write_evaluation(evaluation)
    return evaluation.metrics
