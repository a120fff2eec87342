"""Temperature vs Platt scaling, measured out of sample on a run's validation scores.

    python benchmarks/calibration_crossfit.py RUN_DIR [--folds 5]

Both maps are fitted on validation, so scoring them on validation flatters them. Here they are
cross-fitted: the validation patients are split into folds (GroupKFold); each fold is calibrated
by maps fitted on the other folds, and ECE, Brier score and log-loss are computed on the pooled
out-of-fold probabilities.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import GroupKFold

from pneumolab.evaluation.calibration import (
    apply_platt,
    apply_temperature,
    fit_platt,
    fit_temperature,
)
from pneumolab.evaluation.metrics import expected_calibration_error
from pneumolab.run import RunDir, read_predictions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    with run.split.open(newline="") as f:
        patient_of = {Path(r["path"]).name: r["patient"] for r in csv.DictReader(f)}
    rows = read_predictions(run.val_predictions)
    labels = np.array([r.label for r in rows])
    probs = np.array([r.probability for r in rows])
    groups = [patient_of[Path(r.path).name] for r in rows]
    calibrated = {
        "raw": probs.copy(),
        "temperature": np.zeros_like(probs),
        "platt": np.zeros_like(probs),
    }
    for fit, held in GroupKFold(args.folds).split(probs, labels, groups):
        calibrated["temperature"][held] = apply_temperature(
            probs[held], fit_temperature(labels[fit], probs[fit])
        )
        calibrated["platt"][held] = apply_platt(
            probs[held], **dict(fit_platt(labels[fit], probs[fit]))
        )
    print(f"{run.root}: {len(probs)} validation images, {args.folds} patient-grouped folds\n")
    print("| calibration | ECE | Brier | log-loss |")
    print("|---|---|---|---|")
    for name, p in calibrated.items():
        clipped = np.clip(p, 1e-7, 1 - 1e-7)
        print(
            f"| {name} | {expected_calibration_error(labels, p):.4f} | "
            f"{brier_score_loss(labels, p):.4f} | {log_loss(labels, clipped):.4f} |"
        )


if __name__ == "__main__":
    main()
