"""The post-training step, shared by single runs and ensembles: choose the decision rule on the
validation scores (operating points, calibration maps), score the dataset's official ``val/``
folder when given, write ``val_predictions.csv``, ``meta.json`` (last: it marks the run
finished) and ``MODEL_CARD.md``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pneumolab.data.layout import Sample
from pneumolab.evaluation.decision import decision_rule
from pneumolab.evaluation.metrics import binary_metrics, called_positive
from pneumolab.evaluation.subtypes import subtype_metrics
from pneumolab.reporting.model_card import write_model_card
from pneumolab.run import RunDir, write_predictions
from pneumolab.run_meta import RunDescription, RunMeta, describe_run


@dataclass(frozen=True)
class SubtypeScores:
    """A three-class run's validation subtypes (0 NORMAL, 1 BACTERIAL, 2 VIRAL) and its
    ``(N, 3)`` class probabilities."""

    truth: np.ndarray
    class_probs: np.ndarray


def finalise(
    run: RunDir,
    description: RunDescription,
    val_samples: list[Sample],
    val_probs: np.ndarray,
    target_sensitivity: float,
    official_val: tuple[np.ndarray, np.ndarray] | None = None,
    val_tta_probs: np.ndarray | None = None,
    val_subtypes: SubtypeScores | None = None,
) -> RunMeta:
    """Finish ``run`` from its validation scores. ``official_val`` (labels, probabilities of the
    dataset's small ``val/`` folder) is scored at the chosen threshold and reported, not used.
    ``val_tta_probs`` (the validation images scored with test-time augmentation) give the run
    its TTA threshold; ``val_subtypes`` a three-class run's subtype metrics, at the threshold."""
    labels = np.array([s.label for s in val_samples])
    source = f"validation split of {run.root.name}"
    decision = decision_rule(labels, val_probs, source, target_sensitivity, val_tta_probs)
    if val_subtypes is not None:
        called = called_positive(
            val_probs, decision.threshold
        )  # the binary decision the subtypes refine
        metrics = subtype_metrics(val_subtypes.truth, val_subtypes.class_probs, called)
        description = replace(description, val_subtype_metrics=metrics)
    official = None
    if official_val is not None:
        official = binary_metrics(*official_val, decision.threshold)
    write_predictions(run.val_predictions, val_samples, val_probs, val_tta_probs)
    meta = describe_run(description, decision, official)
    run.write_meta(meta)
    write_model_card(run)
    return meta
