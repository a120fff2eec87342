"""Can the data tell the leading model from the others?

The paired, patient-grouped bootstrap of a criterion's ROC AUC, leading model minus each other,
on the images every model was scored on (their evaluation's ``predictions.csv``, or
``shift_predictions.csv`` for the shift protocol's compound scenario; ``compare`` pairs the scores
of its evaluations in memory, the same numbers). An interval that includes
zero means the split cannot tell the two apart, whatever the table's order. Studies report it
for their selection (``selection.md``), ``compare`` for the leader of each criterion.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pneumolab.choices import PAIRED_CRITERIA
from pneumolab.data.layout import Sample
from pneumolab.data.patients import patient_of
from pneumolab.evaluation.bootstrap import (
    PairedDifference,
    interval_cell,
    left_out_rule,
    paired_auc_difference,
)
from pneumolab.evaluation.writer import METRICS, PREDICTIONS, SHIFT_PREDICTIONS
from pneumolab.run import RunDir, read_predictions, read_shift_predictions
from pneumolab.text import markdown_cell

if TYPE_CHECKING:
    from pneumolab.evaluation.scoring import Evaluation

log = logging.getLogger(__name__)

SCORED_CRITERIA = dict(zip(PAIRED_CRITERIA, (None, "compound"), strict=True))
"""Criteria with per-image scores -> their shift scenario (None: the clean scores)."""


@dataclass(frozen=True)
class Margin:
    """The leader's ROC AUC minus ``other``'s, with its paired bootstrap interval."""

    other: str
    difference: PairedDifference


@dataclass(frozen=True)
class Margins:
    """How far ``leader`` is ahead of every other model on ``criterion``; ``untested`` says why
    there are no margins (then ``margins`` is empty)."""

    criterion: str
    leader: str
    margins: list[Margin] = field(default_factory=list)
    untested: str | None = None

    @property
    def untold(self) -> list[str]:
        """The models the data cannot tell from the leader (the interval includes 0)."""
        return [m.other for m in self.margins if not m.difference.resolved]

    def markdown(self, split: str) -> str:
        """A Markdown section: the leader and the table of margins (or why there is none)."""
        head = f"## `{self.criterion}`: **{markdown_cell(self.leader)}** leads\n"
        if self.untested:
            return f"{head}\nNot tested: {self.untested}.\n"
        if not self.margins:
            return f"{head}\nNo other model to compare it with.\n"
        shifted = self.criterion.startswith("shift_")
        scores = "under the compound shift, the mean over its draws" if shifted else "unshifted"
        lines = [
            head,
            f"Its ROC AUC minus each other model's on the same {split} images ({scores}), with a "
            "95% interval from a paired, patient-grouped bootstrap (1,000 resamples). Where the "
            "interval includes 0 this split cannot tell the two apart: the order between them "
            "is not evidence.\n",
            "| other model | AUC difference | 95% interval | told apart |",
            "|---|---|---|---|",
        ]
        for m in self.margins:
            d = m.difference
            told = "yes" if d.resolved else "no"
            lines.append(
                f"| {markdown_cell(m.other)} | {d.difference:+.4f} | {_interval_cell(d)} | {told} |"
            )
        left_out = [m.difference for m in self.margins if m.difference.used < m.difference.drawn]
        if left_out:
            d = left_out[0]
            lines.append(f"\n{left_out_rule(d.max_dropped, d.drawn)}")
        return "\n".join(lines) + "\n"


def _interval_cell(d: PairedDifference) -> str:
    """``[low, high]``, with the resamples it rests on where some had one class only; ``none``
    where too many had."""
    interval = f"[{d.low:+.4f}, {d.high:+.4f}]"
    return interval_cell(interval, d.used, d.drawn, withheld=math.isnan(d.low))


class ImageScores(NamedTuple):
    """One image of an evaluation: its label, patient and score per draw."""

    label: int
    patient: str
    draws: list[float]


def image_scores(samples: Sequence[Sample], draws: Sequence[np.ndarray]) -> dict[str, ImageScores]:
    """``{image path: ImageScores}`` of scored ``samples`` (``draws``: their scores, one array
    per draw), keyed as an evaluation's files write the paths."""
    return {
        str(sample.path): ImageScores(
            sample.label,
            sample.patient or patient_of(sample.path),
            [float(scores[index]) for scores in draws],
        )
        for index, sample in enumerate(samples)
    }


def evaluation_scores(evaluation: Evaluation, criterion: str) -> dict[str, ImageScores]:
    """The per-image scores an evaluation in memory holds for ``criterion`` (one of
    :data:`SCORED_CRITERIA`), as :func:`margins_over` reads them from its files."""
    scenario = SCORED_CRITERIA[criterion]
    if scenario is None:
        return image_scores(evaluation.decoded.samples, [evaluation.probs])
    if evaluation.shifted is None:
        raise ValueError(f"{criterion}: the evaluation was made without the shift protocol")
    return image_scores(evaluation.decoded.samples, evaluation.shifted[scenario])


def _scores(folder: Path, scenario: str | None) -> dict[str, ImageScores]:
    """``{image path: ImageScores}`` of one evaluation folder; FileNotFoundError where its
    evaluation did not finish (no metrics.json). The patient is the one the evaluation grouped
    by (read again from the image for files written before it was recorded)."""
    if not (folder / METRICS).is_file():
        raise FileNotFoundError(f"{folder}: no {METRICS} (an unfinished evaluation)")
    labelled = {r.path: r for r in read_predictions(folder / PREDICTIONS)}
    if scenario is None:
        draws = {path: [r.probability] for path, r in labelled.items()}
    else:
        draws = read_shift_predictions(folder / SHIFT_PREDICTIONS, scenario)
    return {
        path: ImageScores(
            labelled[path].label,
            labelled[path].patient or patient_of(Path(path)),
            image_draws,
        )
        for path, image_draws in draws.items()
    }


def margins_over(
    runs: dict[str, RunDir], leader: str, criterion: str, split: str = "val"
) -> Margins:
    """The ``leader`` run's paired ROC AUC margin over each other run on ``criterion``, from
    their evaluations of ``split`` (``RUN/eval/<split>/``)."""
    if criterion not in SCORED_CRITERIA:
        scored = " and ".join(f"`{c}`" for c in SCORED_CRITERIA)
        return Margins(criterion, leader, untested=f"no per-image scores (only {scored} have)")
    scenario = SCORED_CRITERIA[criterion]
    try:
        scores = {name: _scores(run.eval_dir(split), scenario) for name, run in runs.items()}
    except (OSError, KeyError) as exc:
        return Margins(criterion, leader, untested=f"an evaluation's scores are missing ({exc})")
    return margins_between(scores, leader, criterion)


def margins_between(
    scores: Mapping[str, Mapping[str, ImageScores]], leader: str, criterion: str
) -> Margins:
    """:func:`margins_over` of per-image scores already at hand (model name -> image path ->
    its scores for ``criterion``: :func:`evaluation_scores`), in the order of ``scores``."""
    images = sorted(scores[leader])
    if any(sorted(s) != images for s in scores.values()):
        return Margins(criterion, leader, untested="the models were scored on other images")
    labels = np.array([scores[leader][path].label for path in images])
    patients = [scores[leader][path].patient for path in images]

    def draws(name: str) -> list[np.ndarray]:
        return list(np.array([scores[name][path].draws for path in images]).T)  # one per draw

    margins = [
        Margin(name, paired_auc_difference(labels, draws(leader), draws(name), patients))
        for name in scores
        if name != leader
    ]
    return Margins(criterion, leader, margins)


def smallest_untold(margins: Margins, parameters: Mapping[str, int | None]) -> str:
    """The model with the fewest ``parameters`` among the leader and the models the data cannot
    tell from it (ties go to the leader's side of the order); the leader itself where any of
    them is of unknown size (a run of an older version): sizes that cannot be compared choose
    nothing."""
    candidates = [margins.leader, *margins.untold]
    if unknown_sizes(margins, parameters):
        return margins.leader
    # every size is known here: `or 0` only tells the type checker so
    return min(candidates, key=lambda name: (parameters[name] or 0, candidates.index(name)))


def unknown_sizes(margins: Margins, parameters: Mapping[str, int | None]) -> list[str]:
    """The leader and the models the data cannot tell from it whose size is unknown (runs of
    an older version): where there is one, :func:`smallest_untold` keeps the leader."""
    return [name for name in (margins.leader, *margins.untold) if parameters.get(name) is None]


def warn_untold(margins: Margins, split: str) -> None:
    """Log each model the data cannot tell from the leader."""
    for other in margins.untold:
        log.warning(
            "%s is not told apart from %s on %s (%s): the 95%% paired interval of the AUC "
            "difference includes 0",
            margins.leader,
            other,
            split,
            margins.criterion,
        )
