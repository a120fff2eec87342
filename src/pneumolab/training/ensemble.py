"""Ensembles: the mean probability of finished runs, with its own threshold chosen on validation.

An ensemble is a run directory like any other (``evaluate``, ``predict``, ``serve`` and
``report`` accept it); it stores the paths of its members instead of weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import pneumolab
from pneumolab.data.layout import CLASS_NAMES, Sample
from pneumolab.errors import RunDirError
from pneumolab.evaluation.decision import decision_meta
from pneumolab.reporting.model_card import write_model_card
from pneumolab.run import RunDir, read_predictions, write_predictions


def _check_compatible(runs: list[RunDir], metas: list[dict]) -> None:
    if len(runs) < 2:
        raise RunDirError("an ensemble needs at least two finished runs")
    nested = [r.root for r in runs if r.is_ensemble]
    if nested:
        raise RunDirError(f"{nested[0]}: is an ensemble; list its members instead")
    first = runs[0]
    for run, meta in zip(runs[1:], metas[1:], strict=True):
        if run.split.read_bytes() != first.split.read_bytes():
            raise RunDirError(
                f"{run.root} and {first.root} were trained on different splits (split.csv): "
                "an ensemble's threshold must be chosen on one validation split"
            )
        if meta["image_size"] != metas[0]["image_size"]:
            raise RunDirError(
                f"{run.root} takes {meta['image_size']} px images, {first.root} "
                f"{metas[0]['image_size']} px: ensemble members must share the image size"
            )


def build_ensemble(
    run_dirs: Sequence[str | Path], out_dir: str | Path, target_sensitivity: float = 0.95
) -> RunDir:
    """Write an ensemble of ``run_dirs`` (same split, same image size) into ``out_dir``."""
    runs = [RunDir(Path(d)) for d in run_dirs]
    metas = [run.read_meta() for run in runs]
    _check_compatible(runs, metas)
    predictions = [
        {row["path"]: row for row in read_predictions(run.val_predictions)} for run in runs
    ]
    paths = sorted(set.intersection(*(set(p) for p in predictions)))
    if any(len(p) != len(paths) for p in predictions):
        raise RunDirError("members scored different validation images (unreadable files?)")
    labels = np.array([predictions[0][path]["label"] for path in paths])
    probs = np.mean([[p[path]["probability"] for path in paths] for p in predictions], axis=0)

    ensemble = RunDir(Path(out_dir))
    if ensemble.root.exists() and any(ensemble.root.iterdir()):
        raise RunDirError(f"{ensemble.root}: already exists and is not empty")
    ensemble.root.mkdir(parents=True, exist_ok=True)
    members = [os.path.relpath(run.root.resolve(), ensemble.root.resolve()) for run in runs]
    shutil.copyfile(runs[0].split, ensemble.split)
    samples = [
        Sample(Path(path), int(label), "") for path, label in zip(paths, labels, strict=True)
    ]
    write_predictions(ensemble.val_predictions, samples, probs)
    source = f"validation split of {ensemble.root.name}"
    ensemble.write_meta(
        {
            "model": "ensemble(" + " + ".join(m["model"] for m in metas) + ")",
            "members": members,
            "image_size": metas[0]["image_size"],
            "class_names": list(CLASS_NAMES),
            "strategy": "ensemble (mean probability)",
            "parameters": sum(m.get("parameters") or 0 for m in metas),
            "train_seconds": round(sum(m.get("train_seconds") or 0 for m in metas), 1),
            **decision_meta(labels, probs, source, target_sensitivity),
            "pneumolab_version": pneumolab.__version__,
        }
    )
    ensemble.members.write_text(json.dumps(members, indent=2) + "\n")  # last: marks it complete
    write_model_card(ensemble)
    return ensemble
