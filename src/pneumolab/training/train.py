"""Train a classifier in phases: prepare the split, build the model, fit it, save the kept
epoch's weights. What turns the weights into a finished run (threshold, calibration, meta.json,
model card) is the post-training step, :mod:`pneumolab.pipeline.finalise`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from safetensors.torch import save

from pneumolab.config import ConfigInput, TrainConfig, check_new_training, resolve_config
from pneumolab.data.layout import find_splits
from pneumolab.errors import ConfigError
from pneumolab.files import write_bytes_atomically
from pneumolab.models.classifier import XrayClassifier
from pneumolab.models.registry import create_classifier
from pneumolab.outputs import check_apart
from pneumolab.run import RunDir
from pneumolab.training.datamodule import num_classes
from pneumolab.training.distill import Teacher
from pneumolab.training.distributed import global_rank
from pneumolab.training.fit import BuiltModel, Fitted, build_trainer, fit
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


def _classifier(config: TrainConfig, pretrained: bool) -> XrayClassifier:
    """The classifier ``config`` describes, checked against its image size and with its
    transfer strategy applied."""
    model = create_classifier(
        config.model,
        pretrained=pretrained,
        weights=config.weights,
        num_classes=1 if config.task == "binary" else num_classes(config.task),
        border_fade=config.border_fade,
        head_init=config.head_init,
    )
    model.check_input_size(config.model, config.image_size)
    apply_strategy(model.backbone, config.strategy, config.unfreeze_stages)
    return model


def check_buildable(config: TrainConfig) -> None:
    """ModelError or ConfigError where ``config``'s network cannot be built as asked (an image
    size it cannot take, more ``unfreeze_stages`` than it has), from a blank copy: a study
    checks every model before it trains the first."""
    _classifier(config, pretrained=False)


def build_model(config: TrainConfig, resume: bool = False) -> BuiltModel:
    """The classifier with its transfer strategy applied (and, under ``frozen``, its feature
    cache; with ``teacher``, the run it is distilled from). A resumed checkpoint holds every
    trained weight, except under ``frozen``: the head only, so the pretrained backbone is
    loaded again."""
    load_pretrained = config.pretrained and (not resume or config.strategy == "frozen")
    return BuiltModel(
        _classifier(config, load_pretrained),
        cache_for(config) if config.strategy == "frozen" else None,
        Teacher.from_run(config.teacher, config) if config.teacher else None,
    )


def train_model(
    data_dir: str | Path,
    out_dir: str | Path,
    config: ConfigInput = None,
    resume: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> TrainedModel | None:
    """Prepare the split, build the model (unknown names, missing weights and an unusable
    teacher fail before the run directory exists), fit it and save the best weights to
    ``model.safetensors``.

    Under several processes (``devices × num_nodes``, launched by Lightning, torchrun or SLURM)
    every process calls this and carves the same split (a data problem stops every rank alike);
    rank 0 alone writes the run directory; the other ranks train from its split.csv and
    return None.
    """
    run = RunDir(Path(out_dir))
    if isinstance(config, Mapping):  # settings by name, as in a config file
        config = resolve_config(settings=config)
    elif isinstance(config, str | Path):  # the config file itself, as `--config FILE`
        config = resolve_config(config)
    elif isinstance(config, TrainConfig):  # checked again: a setting changed since it was built
        config = resolve_config(settings=config.model_dump(warnings=False))
    elif config is not None:
        raise TypeError(
            "config is a TrainConfig, a mapping of settings, a YAML file's path or None, not "
            f"{type(config).__name__}"
        )
    if resume and config is not None:
        raise ConfigError(
            f"{run.root}: resume continues with the run's own config.yaml; pass no config"
        )
    if resume:
        check_run_dir(run.root, resume)  # only reads: every rank checks
        config = resolve_config(run.config)
    config = config or TrainConfig()
    if not resume:
        check_new_training(config)
    # a run inside train/ or val/ would be read as images by the next training on this data
    check_apart(run.root, find_splits(Path(data_dir)).values())
    if global_rank() == 0:  # before the Trainer, whose banners would come first
        check_run_dir(run.root, resume)
    trainer = build_trainer(config, run, callbacks)
    # every rank: it writes nothing, and a data problem stops each rank alike (a study then
    # skips the model on all of them, not on rank 0 alone)
    split = prepare_split(data_dir, run, config, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    built = build_model(config, resume)
    check_tracking(config)
    if trainer.is_global_zero and not resume:
        start_run(run, split)
        if built.teacher is not None:
            built.teacher.warn_if_it_saw(run)
    fitted = fit(trainer, run, config, Path(data_dir).resolve(), built, resume)
    if not trainer.is_global_zero or fitted is None:
        return None
    save_weights(fitted.model, run.weights)
    return TrainedModel(run, split, fitted)


def save_weights(model: XrayClassifier, path: Path) -> None:
    """The model's weights as safetensors (no pickle), written atomically."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomically(path, save(tensors))
