"""Train a classifier in phases: prepare the split, build the model, fit it, save the best
weights. What turns the weights into a finished run (threshold, calibration, meta.json, model
card) is the post-training step, :mod:`pneumolab.pipeline.finalise`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from safetensors.torch import save_file

from pneumolab.config import TrainConfig
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir
from pneumolab.training.fit import BuiltModel, Fitted, fit, num_classes
from pneumolab.training.frozen import cache_for
from pneumolab.training.split import Split, check_run_dir, prepare_split, start_run
from pneumolab.training.strategies import apply_strategy
from pneumolab.training.tracking import check_tracking


@dataclass
class TrainedModel:
    """A run directory with its best weights saved, and what the post-training step needs."""

    run: RunDir
    split: Split
    fitted: Fitted


def build_model(config: TrainConfig, resume: bool = False) -> BuiltModel:
    """The classifier with its transfer strategy applied (and, under ``frozen``, its feature
    cache). A resumed checkpoint holds every trained weight, except under ``frozen``: the head
    only, so the pretrained backbone is loaded again."""
    load_pretrained = config.pretrained and (not resume or config.strategy == "frozen")
    model = create_classifier(
        config.model,
        pretrained=load_pretrained,
        weights=config.weights,
        num_classes=1 if config.task == "binary" else num_classes(config.task),
    )
    apply_strategy(model.backbone, config.strategy, config.unfreeze_stages)
    return BuiltModel(model, cache_for(config) if config.strategy == "frozen" else None)


def train_model(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> TrainedModel:
    """Prepare the split, build the model (unknown names and missing weights fail before the run
    directory exists), fit it and save the best weights to ``model.safetensors``."""
    run = check_run_dir(Path(out_dir), resume)
    split = prepare_split(data_dir, run, config, resume)
    L.seed_everything(split.config.seed, workers=True, verbose=False)
    built = build_model(split.config, resume)
    check_tracking(split.config)
    if not resume:
        start_run(run, split)
    fitted = fit(run, split, built, resume, callbacks)
    state = fitted.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, run.weights)
    return TrainedModel(run, split, fitted)
