"""Ensembles: the mean probability of finished runs, with its own threshold chosen on validation
(and the mean of their OOD scores, with its own OOD threshold; and, where every member stored
them, the mean of their test-time-augmented validation scores, with its own TTA threshold). Members may differ in
architecture, seed, image size, intensity normalisation and border suppression (each scores
its own input); they share the validation split.

An ensemble is a run directory like any other (``evaluate``, ``predict``, ``serve`` and
``report`` accept it); its meta.json lists the paths of its members instead of weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from pneumolab.config import TrainConfig, check_target_sensitivity, resolve_config
from pneumolab.data.layout import Sample
from pneumolab.data.patients import patient_of
from pneumolab.errors import ConfigError, RunDirError
from pneumolab.pipeline.finalise import finalise
from pneumolab.pipeline.ood_fit import ensemble_ood
from pneumolab.run import (
    PredictionRow,
    RunDir,
    listed_twice,
    read_predictions,
    run_list,
    split_mismatch,
    weights_digest,
)
from pneumolab.run_meta import ENSEMBLE_STRATEGY, RunDescription, RunMeta, TrainingSummary

T = TypeVar("T")
log = logging.getLogger(__name__)


def _check_compatible(runs: list[RunDir], metas: list[RunMeta]) -> None:
    if len(runs) < 2:
        raise RunDirError("an ensemble needs at least two finished runs")
    twice = listed_twice([run.root for run in runs])
    if twice is not None:  # its one network would be counted twice
        raise RunDirError(f"{twice}: the same run is given twice; list each member once")
    nested = [r.root for r, meta in zip(runs, metas, strict=True) if meta.is_ensemble]
    if nested:
        raise RunDirError(f"{nested[0]}: is an ensemble; list its members instead")
    unsplit = next((run for run in runs if not run.split.is_file()), None)
    if unsplit is not None:  # its threshold would be chosen on images it may have trained on
        raise RunDirError(f"{unsplit.root}: has no split.csv; an ensemble needs each member's")
    mismatch = split_mismatch(run.saved_split() for run in runs)
    if mismatch is not None:
        run, first = mismatch
        raise RunDirError(
            f"{run.root} and {first.root} were trained on different splits (split.csv): "
            "an ensemble's threshold must be chosen on one validation split"
        )


def _check_distinct(runs: list[RunDir], digests: list[str]) -> None:
    """RunDirError for two members with the same weights (a copy of one run: its network
    would count twice in the mean)."""
    first: dict[str, Path] = {}
    for run, digest in zip(runs, digests, strict=True):
        earlier = first.setdefault(digest, run.root)
        if earlier != run.root:
            raise RunDirError(
                f"{run.root} and {earlier}: the same weights (a copy of one run); list each "
                "network once"
            )


def _shared(values: Sequence[T | None]) -> T | None:
    """The members' common value, or None where they differ."""
    return values[0] if all(v == values[0] for v in values) else None


def _describe(metas: list[RunMeta], members: list[str], weights: list[str]) -> RunDescription:
    """The ensemble: its members' shared input, the sums of their sizes and training times."""
    return RunDescription(
        model="ensemble(" + " + ".join(m.model for m in metas) + ")",
        image_size=max(m.image_size for m in metas),  # smaller members resize from it
        intensity=_shared([m.intensity for m in metas]),
        task="binary",  # the mean of the members' pneumonia probabilities
        mean=_shared([m.preprocessing.mean for m in metas]),
        std=_shared([m.preprocessing.std for m in metas]),
        training=TrainingSummary(
            strategy=ENSEMBLE_STRATEGY,
            parameters=_total_size([m.parameters for m in metas]),
            train_seconds=round(sum(m.train_seconds or 0 for m in metas), 1),
        ),
        members=members,
        member_weights=weights,
        border_fade=_shared([m.preprocessing.border_fade for m in metas]),
    )


def _member_mean(
    predictions: list[dict[str, PredictionRow]],
    paths: list[str],
    score: Callable[[PredictionRow], float | None],
) -> np.ndarray | None:
    """The members' mean of one validation score, per path; None when a member's file lacks
    it (a run of before it was recorded)."""
    scores = [[score(p[path]) for path in paths] for p in predictions]
    if any(value is None for member in scores for value in member):
        return None
    return np.mean(np.array(scores, dtype=float), axis=0)


def _total_size(sizes: list[int | None]) -> int | None:
    """The members' parameters together; None where a member's count is unknown (a run of an
    older version): counted as 0, the ensemble looked smaller than its members."""
    known = [size for size in sizes if size is not None]
    return sum(known) if len(known) == len(sizes) else None


def _members_target(runs: list[RunDir]) -> float:
    """The validation sensitivity the members' thresholds were chosen for (their config.yaml;
    0.95 where none records one); ConfigError where they differ."""
    targets = {
        resolve_config(run.config).target_sensitivity for run in runs if run.config.is_file()
    }
    if len(targets) > 1:
        raise ConfigError(
            f"the members were trained for different target sensitivities ({sorted(targets)}): "
            "give the ensemble's own (--target-sensitivity)"
        )
    return targets.pop() if targets else TrainConfig().target_sensitivity


def build_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    target_sensitivity: float | None = None,
) -> RunDir:
    """Write an ensemble of ``run_dirs`` (trained on the same split) into ``out_dir``, its
    threshold chosen for ``target_sensitivity`` on validation (default: the members' own).

    Members may differ in image size: the ensemble decodes images at the largest, and each
    smaller member resizes them to its own size as training resized the dataset's copies.
    """
    runs = run_list(run_dirs, "build_ensemble")
    metas = [run.read_meta() for run in runs]
    _check_compatible(runs, metas)
    if target_sensitivity is None:  # was 0.95 whatever the members were chosen for
        target_sensitivity = _members_target(runs)
    try:
        check_target_sensitivity(target_sensitivity)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    digests = [weights_digest(run.root) for run in runs]
    _check_distinct(runs, digests)
    predictions = [{row.path: row for row in read_predictions(run.val_predictions)} for run in runs]
    paths = sorted(set.intersection(*(set(p) for p in predictions)))
    if not paths:
        examples = ", ".join(str(next(iter(p), "none")) for p in predictions)
        raise RunDirError(
            "the members' validation images have no path in common: were they trained from "
            f"different copies of the dataset (--data)? One image of each: {examples}"
        )
    if any(len(p) != len(paths) for p in predictions):
        raise RunDirError("members scored different validation images (unreadable files?)")
    labels = np.array([predictions[0][path].label for path in paths])
    probs = _member_mean(predictions, paths, lambda row: row.probability)
    assert probs is not None  # every validation predictions file has the column
    tta_probs = _member_mean(predictions, paths, lambda row: row.tta_probability)
    if tta_probs is None:
        log.warning(
            "a member has no tta_probability in its validation predictions: no TTA threshold"
        )

    ensemble = RunDir(Path(out_dir))
    if ensemble.root.exists() and any(ensemble.root.iterdir()):
        raise RunDirError(f"{ensemble.root}: already exists and is not empty")
    ood = ensemble_ood(ensemble, runs)
    ensemble.root.mkdir(parents=True, exist_ok=True)
    if ood is not None:  # before meta.json, which marks the run finished
        ood.save(ensemble.ood)
    members = [os.path.relpath(run.root.resolve(), ensemble.root.resolve()) for run in runs]
    shutil.copyfile(runs[0].split, ensemble.split)
    samples = [  # the members' patients (read again from the image for older members)
        Sample(Path(path), int(label), predictions[0][path].patient or patient_of(Path(path)))
        for path, label in zip(paths, labels, strict=True)
    ]
    finalise(
        ensemble,
        _describe(metas, members, digests),
        samples,
        probs,
        target_sensitivity,
        val_tta_probs=tta_probs,
    )
    return ensemble
