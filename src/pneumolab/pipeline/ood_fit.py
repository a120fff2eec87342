"""Fit a run's OOD model (the scope gate's content check): at the end of training, or afterwards.

The class means and shared covariance come from the scope descriptor
(:meth:`~pneumolab.models.classifier.XrayClassifier.features_and_scope`) of up to
``MAX_FIT_IMAGES`` training images and an augmented copy of each (the ``acquisition`` training
augmentation, seeded), the threshold from the validation images and an augmented copy of each:
at most 1% of them is flagged. An ensemble's score is the mean of its members' scores, with its
own threshold on the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import pneumolab
from pneumolab.data.dataset import DecodedImages, decode_readable
from pneumolab.data.layout import Sample
from pneumolab.data.transforms import BatchAugmentation
from pneumolab.errors import DataLayoutError, RunDirError
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.run_models import MEMBER_GATES, member_gates, run_ood_model
from pneumolab.inference.scores import Scorer, Scores, torch_scorer
from pneumolab.inference.torch_scoring import score_batches
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir
from pneumolab.scope.mahalanobis import MahalanobisScore, fit_mahalanobis
from pneumolab.scope.ood import ENSEMBLE_METHOD, METHOD, OodModel

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 2000
"""Training images whose descriptors (and their augmented copies') fit the class means and
covariance (a random subset beyond it: more adds time, not accuracy, for a 96-dimensional
covariance)."""
AUGMENTATION_SEED = 0


def fit_subset(n: int, seed: int = 0) -> np.ndarray:
    """Indices of the training images the OOD model is fitted on (all, or a random subset)."""
    if n <= MAX_FIT_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_FIT_IMAGES, replace=False))


def acquisition_copy(pixels: torch.Tensor) -> torch.Tensor:
    """An augmented copy of uint8 ``(N, 1, S, S)`` pixels under the ``acquisition`` training
    augmentation, the same on every call (seeded; the global random state is left as it was)."""
    augmentation = BatchAugmentation(acquisition=True)
    with torch.random.fork_rng():
        torch.manual_seed(AUGMENTATION_SEED)
        return torch.cat([augmentation(batch) for batch in pixels.split(64)])


def fit_scorer(model: XrayClassifier, intensity: str, train: DecodedImages) -> MahalanobisScore:
    """The Mahalanobis scorer of the scope descriptors of ``train`` (up to ``MAX_FIT_IMAGES``)
    and of an augmented copy of each."""
    index = fit_subset(len(train.samples))
    picked = train.pixels[torch.from_numpy(index)]
    both = torch.cat([picked, acquisition_copy(picked)])
    features = score_batches(lambda x: model.scope_features(x).float(), model, both, intensity, 64)
    labels = np.array([train.samples[i].label for i in index])
    return fit_mahalanobis(features, np.tile(labels, 2))


def ood_scores(
    model: XrayClassifier, intensity: str, scorer: MahalanobisScore, pixels: torch.Tensor
) -> np.ndarray:
    """OOD scores of uint8 ``(N, 1, S, S)`` pixels, the forward pass stopping at the scope stage."""
    return score_batches(lambda x: scorer(model.scope_features(x)), model, pixels, intensity, 64)


def gated_validation_scores(
    model: XrayClassifier,
    intensity: str,
    scorer: MahalanobisScore,
    val: DecodedImages,
    name: str,
    score: Scorer | None = None,
) -> tuple[Scores, OodModel]:
    """Validation probabilities and OOD scores (one pass of ``score``, by default the model
    with ``scorer``), and the OOD model thresholded on those scores and on an augmented copy's."""
    scores = (score or torch_scorer(model, intensity, scorer))(val.pixels)
    augmented = ood_scores(model, intensity, scorer, acquisition_copy(val.pixels))
    provenance = {
        "fitted_on": f"scope descriptors of the train side of {name}'s split and an augmented copy",
        "threshold_on": f"{len(val.samples)} validation images of {name} and an augmented copy",
        "pneumolab_version": pneumolab.__version__,
    }
    val_scores = np.concatenate([scores.ood, augmented])
    return scores, OodModel.from_validation(METHOD, scorer, val_scores, provenance)


def ensemble_ood(ensemble: RunDir, members: Sequence[RunDir]) -> OodModel | None:
    """The OOD model of the ensemble ``ensemble`` of ``members`` from their validation scores;
    None (with a warning) when a member has none yet, or one of an older pneumolab that
    predictions ignore."""
    models = [run_ood_model(member, warn=False) for member in members]
    present = [model for model in models if model is not None]
    if len(present) < len(models):
        log.warning(
            "%s: member %s has no current OOD model; fit them with "
            "`pneumolab fit-ood %s --data DATA_DIR`",
            ensemble.root,
            members[models.index(None)].root,
            ensemble.root,
        )
        return None
    scores = [model.val_scores for model in present]
    if len({len(s) for s in scores}) > 1:
        raise RunDirError(f"{ensemble.root}: members' OOD models scored different validation sets")
    provenance = {
        "fitted_on": "mean of the members' OOD scores",
        MEMBER_GATES: member_gates(list(members)),
        "threshold_on": (
            f"{len(present[0].clean_val_scores)} validation images of {ensemble.root.name} and "
            "an augmented copy"
        ),
        "pneumolab_version": pneumolab.__version__,
    }
    return OodModel.from_validation(ENSEMBLE_METHOD, None, np.mean(scores, axis=0), provenance)


MIN_READABLE_SHARE = 0.9
"""The share of a run's split images that must be readable for ``fit-ood`` to fit a gate."""


def fit_run_ood(run_dir: str | Path, data_dir: str | Path) -> OodModel:
    """Fit (or refit) the OOD model of a finished run from its split's images under
    ``data_dir``, and write ``RUN_DIR/ood.safetensors``. An ensemble's members are fitted first
    where they have none."""
    run = RunDir(Path(run_dir))
    if run.read_meta().is_ensemble:  # also a clear error for a missing or unfinished run
        if not Path(data_dir).is_dir():  # read only for members without a gate: checked alike
            raise DataLayoutError(f"{data_dir}: dataset folder not found")
        run.check_members()  # a gate fitted on new members beside a threshold for the old
        for member in run.member_runs():
            if run_ood_model(member, warn=False) is None:
                fit_run_ood(member.root, data_dir)
        ood = ensemble_ood(run, run.member_runs())
        if ood is None:
            raise RunDirError(f"{run.root}: a member's OOD model could not be fitted")
    else:
        ood = _fit_single(run, Path(data_dir).resolve())
    ood.save(run.ood)
    return ood


def _fit_single(run: RunDir, data_root: Path) -> OodModel:
    predictor = Predictor.from_run(run.root)
    model = predictor.require_model("fitting the OOD model")
    train_samples: list[Sample] = run.read_split(data_root, "train")
    index = fit_subset(len(train_samples))
    size, split = predictor.image_size, f"{data_root}: {run.root}'s split"
    # a data folder whose images mostly fail to read (a bad mount, a partial copy) would
    # replace the run's gate with one fitted on a handful: refused before anything is written
    train = decode_readable(
        [train_samples[i] for i in index], size, f"{split} (train side)", MIN_READABLE_SHARE
    )
    val = decode_readable(
        run.read_split(data_root, "val"), size, f"{split} (validation side)", MIN_READABLE_SHARE
    )
    scorer = fit_scorer(model, predictor.intensity, train)
    return gated_validation_scores(model, predictor.intensity, scorer, val, run.root.name)[1]
