"""Score runs under the shift protocol: compound acquisition shifts and acquisition batches.

    python benchmarks/shift_protocol.py RUN_DIR [RUN_DIR ...] --data DATA_DIR [--draws 3] \
        [--out benchmarks/results/shift_protocol.md]

For each run, on its own patient-grouped validation split (carved from ``train/``), at its stored
threshold: clean ROC AUC and specificity; per normal acquisition batch (``IM`` / ``NORMAL2``)
AUC against all pneumonia images and specificity; every scenario of
:mod:`pneumolab.evaluation.shift` as mean and minimum over ``--draws`` seeded draws; and the run's
accuracy on the official 16-image ``val/`` folder. Nothing here looks at the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from report import publish, runs_parser

from pneumolab.data.dataset import decode_samples
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.shift import SCENARIOS, acquisition_batch, batch_breakdown, shift_protocol
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir


def score_run(run_dir: Path, data: Path, draws: int) -> dict[str, float | str]:
    """One table row: clean, per-batch and per-scenario figures of one run."""
    predictor = Predictor.from_run(run_dir)
    decoded = decode_samples(RunDir(run_dir).read_split(data, "val"), predictor.image_size)
    labels = np.array([s.label for s in decoded.samples])
    probs = predictor.backend(decoded.pixels)
    clean = binary_metrics(labels, probs, predictor.threshold)
    batches = [acquisition_batch(s.path.name) for s in decoded.samples]
    row: dict[str, float | str] = {
        "run": run_dir.name,
        "clean_roc_auc": clean.roc_auc,
        "clean_specificity": clean.specificity,
    }
    for batch, figures in batch_breakdown(probs, labels, batches, predictor.threshold).items():
        row[f"{batch}_roc_auc"] = figures.roc_auc
        row[f"{batch}_specificity"] = figures.specificity
    results = shift_protocol(predictor.backend, decoded.pixels, labels, predictor.threshold, draws)
    for result in results:
        for key, value in result.summary().model_dump().items():
            row[f"{result.scenario}_{key}"] = value
    official = predictor.meta.official_val_metrics
    row["official_val_accuracy"] = float("nan") if official is None else official.accuracy
    return row


def markdown(rows: list[dict[str, float | str]]) -> str:
    """Runs as columns, figures as rows (the table is tall, not wide)."""
    keys = [k for k in rows[0] if k != "run"]
    lines = ["| figure | " + " | ".join(str(r["run"]) for r in rows) + " |"]
    lines.append("|---" * (len(rows) + 1) + "|")
    for key in keys:
        cells = [f"{r.get(key, float('nan')):.4f}" for r in rows]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = runs_parser(__doc__, draws=3).parse_args()
    names = [run.name for run in args.runs]
    if len(set(names)) < len(names):  # the table's columns are named by folder
        raise SystemExit(f"two runs share a folder name ({', '.join(names)}): rename one")
    rows = [score_run(run, args.data, args.draws) for run in args.runs]
    table = markdown(rows)
    print(f"scenarios: {', '.join(SCENARIOS)}; {args.draws} draws each\n")
    publish(table, args.out)


if __name__ == "__main__":
    main()
