"""Train a run end to end: the training phases (:func:`pneumolab.training.train.train_model`),
the input-scope gate's OOD model (:mod:`pneumolab.pipeline.ood_fit`; the validation pass scores
probabilities, OOD scores and a three-class network's class probabilities at once), then the
post-training step (:func:`pneumolab.pipeline.finalise.finalise`), which also gets the validation
images scored with test-time augmentation for the run's ``--tta`` threshold."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np

from pneumolab.config import ConfigInput, TrainConfig
from pneumolab.data.dataset import decode_samples
from pneumolab.data.layout import find_splits, scan_split
from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_labels
from pneumolab.errors import DataLayoutError
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.inference.scores import torch_scorer, with_tta
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.models.classifier import XrayClassifier
from pneumolab.outputs import working_in
from pneumolab.pipeline.finalise import SubtypeScores, finalise
from pneumolab.pipeline.ood_fit import fit_scorer, gated_validation_scores
from pneumolab.reporting.model_card import CARD_NAME
from pneumolab.run import RunDir
from pneumolab.run_meta import RunDescription
from pneumolab.training.distributed import on_rank_zero
from pneumolab.training.tracking import log_run_files
from pneumolab.training.train import TrainedModel, train_model

log = logging.getLogger(__name__)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: ConfigInput = None,
    resume: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> RunDir:
    """Train on ``data_dir/train`` into ``out_dir``; with ``resume``, continue an interrupted run.
    ``config``: a :class:`TrainConfig`, its settings by name (``{"epochs": 2}``; the rest
    default), or a YAML config file's path.

    ``callbacks`` are added to Lightning's. Returns the finished :class:`RunDir`; raises
    :class:`~pneumolab.errors.TrainingInterrupted` when stopped (Ctrl+C), after the last
    finished epoch was saved. Under several processes, only rank 0 finishes the run (the others
    return as soon as training ends). The run folder is locked while it trains (another
    process training into it is refused).
    """
    with on_rank_zero(working_in(Path(out_dir), "training")):
        return _train(data_dir, out_dir, config, resume, callbacks)


def _train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: ConfigInput,
    resume: bool,
    callbacks: Sequence[L.Callback],
) -> RunDir:
    """:func:`train`'s work, once the run folder is this process's."""
    trained = train_model(data_dir, out_dir, config, resume, callbacks)
    if trained is None:  # another rank than 0 of a multi-process run: rank 0 finishes it
        return RunDir(Path(out_dir))
    config, model = trained.split.config, trained.fitted.model
    val = trained.fitted.val_images
    run = trained.run
    train_images = trained.fitted.train_images
    assert train_images is not None  # fit() keeps them
    scorer = fit_scorer(model, config.intensity, train_images)
    # one validation pass gives the probabilities, the OOD scores and a three-class network's
    # class probabilities; the TTA pass's identity view is that pass: the cache answers it
    classes = len(SUBTYPE_NAMES) if config.task == "three_class" else 0
    network = torch_scorer(model, config.intensity, scorer, classes=classes)
    validation = ScoreCache().wrap(network, "validation")
    scores, ood = gated_validation_scores(
        model, config.intensity, scorer, val, run.root.name, validation
    )
    ood.save(run.ood)
    subtypes = None
    if scores.class_probs is not None:
        subtypes = SubtypeScores(np.array(subtype_labels(val.samples)), scores.class_probs)
    finalise(
        run,
        describe_trained(trained),
        val.samples,
        scores.probability,
        config.target_sensitivity,
        official_val_scores(model, trained.split.data_root, config),
        with_tta(validation)(val.pixels).probability,
        subtypes,
    )
    files = [run.root / CARD_NAME, run.meta, run.val_predictions, run.history]
    log_run_files(trained.fitted.logger, files)
    return run


def describe_trained(trained: TrainedModel) -> RunDescription:
    """What the trained model is (a three-class run's validation subtype metrics are added by
    :func:`finalise`, at the threshold it chooses)."""
    config, model = trained.split.config, trained.fitted.model
    return RunDescription(
        model=config.model,
        image_size=config.image_size,
        intensity=config.intensity,
        task=config.task,
        mean=model.mean.flatten().tolist(),
        std=model.std.flatten().tolist(),
        training=trained.fitted.summary,
        border_fade=config.border_fade,
    )


def official_val_scores(
    model: XrayClassifier, data_root: Path, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and probabilities of the dataset's own small ``val/`` folder, when it has one and
    it holds both classes (only reported: a bad one is named in a warning, never fails the run
    after its training)."""
    folder = find_splits(data_root).get("val")
    if folder is None:
        return None
    try:
        samples = scan_split(folder)
    except DataLayoutError as exc:
        log.warning("the dataset's val/ folder is not scored: %s", exc)
        return None
    official = decode_samples(samples, config.image_size)
    labels = np.array([s.label for s in official.samples])
    return labels, predict_pixels(model, official.pixels, config.intensity)
