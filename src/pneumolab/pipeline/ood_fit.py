"""Fit a run's OOD model (the scope gate's content check): at the end of training, or afterwards.

The class means and shared covariance come from the pooled features of (up to
``MAX_FIT_IMAGES``) training images, the threshold from the validation images' scores: at most
1% of validation is flagged. An ensemble's score is the mean of its members' scores, with its
own threshold on the same validation images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

import pneumolab
from pneumolab.data.dataset import DecodedImages, decode_samples
from pneumolab.data.layout import Sample
from pneumolab.errors import RunDirError
from pneumolab.inference.predictor import Predictor, score_batches
from pneumolab.inference.scores import Scores, torch_scorer
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir
from pneumolab.scope.mahalanobis import MahalanobisScore, fit_mahalanobis
from pneumolab.scope.ood import ENSEMBLE_METHOD, METHOD, OodModel

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 4000
"""Training images whose features fit the class means and covariance (a stratified-enough
random subset beyond it: more adds time, not accuracy, for a 1,280-dimensional covariance)."""


def fit_subset(n: int, seed: int = 0) -> np.ndarray:
    """Indices of the training images the OOD model is fitted on (all, or a random subset)."""
    if n <= MAX_FIT_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_FIT_IMAGES, replace=False))


def fit_scorer(
    model: XrayClassifier,
    intensity: str,
    train: DecodedImages,
    train_features: np.ndarray | None = None,
) -> MahalanobisScore:
    """The Mahalanobis scorer of ``train``'s pooled features (computed here unless given, e.g.
    from the frozen strategy's feature cache), fitted on up to ``MAX_FIT_IMAGES`` images."""
    index = fit_subset(len(train.samples))
    if train_features is None:
        picked = train.pixels[torch.from_numpy(index)]
        features = score_batches(lambda x: model.features(x).float(), model, picked, intensity, 64)
    else:
        features = np.asarray(train_features)[index]
    labels = np.array([train.samples[i].label for i in index])
    return fit_mahalanobis(features, labels)


def gated_validation_scores(
    model: XrayClassifier, intensity: str, scorer: MahalanobisScore, val: DecodedImages, name: str
) -> tuple[Scores, OodModel]:
    """Validation probabilities and OOD scores (one pass), and the OOD model thresholded on them."""
    scores = torch_scorer(model, intensity, scorer)(val.pixels)
    provenance = {
        "fitted_on": f"pooled features of the train side of {name}'s split",
        "threshold_on": f"{len(val.samples)} validation images of {name}",
        "pneumolab_version": pneumolab.__version__,
    }
    return scores, OodModel.from_validation(METHOD, scorer, scores.ood, provenance)


def ensemble_ood(ensemble: RunDir) -> OodModel | None:
    """The OOD model of an ensemble from its members' validation scores; None (with a warning)
    when a member has none yet."""
    members = ensemble.member_runs()
    missing = [m.root for m in members if not m.ood.is_file()]
    if missing:
        log.warning(
            "%s: member %s has no OOD model; fit them with `pneumolab fit-ood %s --data DATA_DIR`",
            ensemble.root,
            missing[0],
            ensemble.root,
        )
        return None
    scores = [OodModel.load(m.ood).val_scores for m in members]
    if len({len(s) for s in scores}) > 1:
        raise RunDirError(f"{ensemble.root}: members' OOD models scored different validation sets")
    provenance = {
        "fitted_on": "mean of the members' OOD scores",
        "threshold_on": f"{len(scores[0])} validation images of {ensemble.root.name}",
        "pneumolab_version": pneumolab.__version__,
    }
    return OodModel.from_validation(ENSEMBLE_METHOD, None, np.mean(scores, axis=0), provenance)


def fit_run_ood(run_dir: str | Path, data_dir: str | Path) -> OodModel:
    """Fit (or refit) the OOD model of a finished run from its split's images under
    ``data_dir``, and write ``RUN_DIR/ood.safetensors``. An ensemble's members are fitted first
    where they have none."""
    run = RunDir(Path(run_dir))
    if run.read_meta().is_ensemble:  # also a clear error for a missing or unfinished run
        for member in run.member_runs():
            if not member.ood.is_file():
                fit_run_ood(member.root, data_dir)
        ood = ensemble_ood(run)
        assert ood is not None  # every member was just fitted
    else:
        ood = _fit_single(run, Path(data_dir).resolve())
    ood.save(run.ood)
    return ood


def _fit_single(run: RunDir, data_root: Path) -> OodModel:
    predictor = Predictor.from_run(run.root)
    model = predictor.require_model("fitting the OOD model")
    train_samples: list[Sample] = run.read_split(data_root, "train")
    index = fit_subset(len(train_samples))
    train = decode_samples([train_samples[i] for i in index], predictor.image_size)
    val = decode_samples(run.read_split(data_root, "val"), predictor.image_size)
    scorer = fit_scorer(model, predictor.intensity, train)
    return gated_validation_scores(model, predictor.intensity, scorer, val, run.root.name)[1]
