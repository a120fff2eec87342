"""Can a study's selection tell the chosen model from the others?

The paired, patient-grouped bootstrap of the selection criterion's ROC AUC, chosen model minus
each other, on the images every model was scored on (their evaluation's ``predictions.csv``, or
``shift_predictions.csv`` for the shift protocol's compound scenario). An interval that includes
zero means this split cannot tell the two apart, whatever the table's order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumolab.data.patients import patient_id
from pneumolab.evaluation.bootstrap import PairedDifference, paired_auc_difference
from pneumolab.evaluation.outputs import PREDICTIONS, SHIFT_PREDICTIONS
from pneumolab.run import RunDir, read_predictions, read_shift_predictions

log = logging.getLogger(__name__)

SCORED_CRITERIA = {"roc_auc": None, "shift_roc_auc": "compound"}
"""Selection criteria with per-image scores -> their shift scenario (None: the clean scores)."""


@dataclass(frozen=True)
class SelectionMargin:
    """The chosen model's ROC AUC minus ``other``'s on the selection criterion's scores."""

    other: str
    margin: PairedDifference


def _scores(folder: Path, scenario: str | None) -> dict[str, tuple[int, list[float]]]:
    """``{image path: (label, [score per draw])}`` of one evaluation folder."""
    labelled = read_predictions(folder / PREDICTIONS)
    if scenario is None:
        return {r["path"]: (r["label"], [r["probability"]]) for r in labelled}
    labels = {r["path"]: r["label"] for r in labelled}
    shifted = read_shift_predictions(folder / SHIFT_PREDICTIONS, scenario)
    return {path: (labels[path], draws) for path, draws in shifted.items()}


def selection_margins(
    runs: dict[str, RunDir], chosen: str, criterion: str, split: str = "val"
) -> list[SelectionMargin] | None:
    """The chosen run's paired ROC AUC margin over each other run, from their evaluations of
    ``split``; None when ``criterion`` has no per-image scores (:data:`SCORED_CRITERIA`) or the
    runs were not all scored on the same images."""
    if criterion not in SCORED_CRITERIA:
        return None
    scenario = SCORED_CRITERIA[criterion]
    try:
        scores = {name: _scores(run.eval_dir(split), scenario) for name, run in runs.items()}
    except (OSError, KeyError) as exc:
        log.warning("selection margins not computed: an evaluation's scores are missing (%s)", exc)
        return None
    images = sorted(scores[chosen])
    if any(sorted(s) != images for s in scores.values()):
        log.warning("selection margins not computed: the models were scored on other images")
        return None
    labels = np.array([scores[chosen][path][0] for path in images])
    patients = [patient_id(Path(path).name) for path in images]

    def draws(name: str) -> list[np.ndarray]:
        return list(np.array([scores[name][path][1] for path in images]).T)  # one per draw

    return [
        SelectionMargin(name, paired_auc_difference(labels, draws(chosen), draws(name), patients))
        for name in runs
        if name != chosen
    ]


def untold(margins: list[SelectionMargin] | None) -> list[str]:
    """The models the data cannot tell from the chosen one (none when not testable)."""
    return [m.other for m in margins or [] if not m.margin.resolved]


def margins_markdown(chosen: str, criterion: str, margins: list[SelectionMargin] | None) -> str:
    """The selection and how far the data support it, as Markdown."""
    lines = [f"# Selection\n\nSelected by `{criterion}`: **{chosen}**.\n"]
    if margins is None:
        lines.append(
            f"`{criterion}` has no per-image scores to test the margin on; only `roc_auc` and "
            "`shift_roc_auc` do.\n"
        )
        return "\n".join(lines)
    lines += [
        "Its ROC AUC minus each other model's on the same validation images (under the compound "
        "shift: the mean over draws), with a 95% interval from a paired, patient-grouped "
        "bootstrap (1,000 resamples). Where the interval includes 0 this split cannot tell the "
        "two apart: the order between them is not evidence.\n",
        "| other model | AUC difference | 95% interval | told apart |",
        "|---|---|---|---|",
        *(
            f"| {m.other} | {m.margin.difference:+.4f} | [{m.margin.low:+.4f}, "
            f"{m.margin.high:+.4f}] | {'yes' if m.margin.resolved else 'no'} |"
            for m in margins
        ),
    ]
    return "\n".join(lines) + "\n"
