"""Typed training configuration: defaults < YAML file < command-line flags."""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeAlias

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pneumolab.choices import (
    Accelerator,
    Augmentation,
    DistributedStrategy,
    HeadInit,
    Intensity,
    LrScaling,
    Monitor,
    Precision,
    Strategy,
    Task,
    Tracking,
)
from pneumolab.errors import ConfigError, brief, validation_problems
from pneumolab.files import write_text_atomically


def check_target_sensitivity(value: float) -> float:
    """``value`` if it is a sensitivity a validation threshold can keep, in (0, 1]; else ValueError.

    The one definition of the range, used by the config, the threshold choice and ensembles.
    """
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise ValueError(f"target sensitivity must be in (0, 1], got {value}")
    return value


MAX_VAL_FRACTION = 0.35
"""The largest validation share: one of round(1 / 0.35) = 3 folds, so validation stays the
smaller side (0.4 would round to two folds: half the patients)."""
OPTIONAL_NUMBERS = ("ema_decay", "split_seed", "max_train_images")
"""TrainConfig's numbers that may be none (off, or "as the seed"), which the word ``none`` sets."""


class TrainConfig(BaseModel):
    """Everything that determines a training run. The defaults are the default recipe, chosen on
    validation (benchmarks/README.md, 'Choosing the default recipe'); configs/default.yaml documents them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model: str = Field(default="mobilenetv2_100", description="timm model name or pneumolab CNN")
    pretrained: bool = Field(default=True, description="start from ImageNet weights")
    weights: str | None = Field(
        default=None,
        description="local weights file or folder (else $PNEUMOLAB_WEIGHTS_DIR, else hub)",
    )
    task: Task = Field(
        default="binary",
        description="binary: NORMAL / PNEUMONIA; three_class: NORMAL / BACTERIAL / VIRAL (from the "
        "pneumonia file names); thresholds always apply to P(pneumonia)",
    )
    strategy: Strategy = Field(
        default="finetune",
        description="finetune: whole network; frozen: head only, on cached backbone features; "
        "partial: the last `unfreeze_stages` stages and the head",
    )
    backbone_lr_scale: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="learning rate of pretrained backbone layers, as a fraction of `lr`",
    )
    unfreeze_stages: int = Field(default=2, ge=1, description="stages trained by `partial`")
    head_init: HeadInit = Field(
        default="fan_in",
        description="the fresh classifier head on pretrained weights: fan_in (PyTorch's layer "
        "default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): small random logits), zero (weights and "
        "bias, as in BiT, Kolesnikov et al. 2020; under AdamW it stalled Xception's training) or "
        "timm (the architecture's own init: for the MobileNet/EfficientNet family U(-1, 1) "
        "weights on a one-logit head, first logits of several units)",
    )
    head_epochs: int = Field(
        default=0,
        ge=0,
        description="LP-FT (Kumar et al. 2022): the first N epochs train the head alone on the "
        "pretrained backbone, frozen with its batch-norm statistics, then the backbone joins "
        "as `strategy` says (0: off)",
    )
    feature_cache: str | None = Field(
        default=None,
        description="folder of the frozen strategy's feature cache "
        "(else $PNEUMOLAB_CACHE_DIR, else ~/.cache/pneumolab/features)",
    )
    image_size: int = Field(default=160, ge=32, le=1024, description="input side in pixels")
    epochs: int = Field(
        default=4,
        ge=1,
        description="most epochs (monitor val_auc or val_loss may stop sooner)",
    )
    batch_size: int = Field(default=32, ge=1, description="training batch size per process")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate of the head")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay")
    augment_strength: float = Field(
        default=1.0,
        ge=0,
        le=3,
        description="scale of the training augmentation's ranges (0: none; beyond 3 crops and "
        "exposure reach zero)",
    )
    augmentation: Augmentation = Field(
        default="acquisition",
        description="standard: crops, tilt, shift, exposure, blur, noise; acquisition: also "
        "wider fields of view, collimation bands, resolution loss and uneven exposure",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="targets move this far towards uniform (0: hard labels)",
    )
    mixup_alpha: float = Field(
        default=0.0,
        ge=0,
        description="mixup of training image pairs, mixing weight ~ Beta(alpha, alpha) (0: off)",
    )
    cutmix_alpha: float = Field(
        default=0.0,
        ge=0,
        description="cutmix: a box of another training image pasted in, the kept share "
        "~ Beta(alpha, alpha), targets and class weights mixed by area (0: off; with mixup "
        "too, each batch takes one of the two at random)",
    )
    ema_decay: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights with this decay per "
        "step; validation, checkpoints and the saved model use it (none: off)",
    )
    swa_epochs: int = Field(
        default=0,
        ge=0,
        description="stochastic weight averaging (Lightning's StochasticWeightAveraging): the "
        "last N epochs train at `swa_lr`, the weights at the start of each are averaged, and "
        "one extra forward-only epoch recomputes the batch-norm statistics of the average, "
        "which the run keeps; needs `monitor: last`, not with strategy partial (0: off)",
    )
    swa_lr: float = Field(
        default=1e-4, gt=0, description="learning rate of the SWA epochs (`swa_epochs`)"
    )
    teacher: str | None = Field(
        default=None,
        description="knowledge distillation: a finished single-model run whose model scores "
        "every augmented training batch at its own image size; the student learns towards "
        "(1 - distill_weight) x label + distill_weight x the teacher's P(pneumonia) (none: off)",
    )
    distill_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="share of the teacher's probability in the training target (with `teacher`)",
    )
    intensity: Intensity = Field(
        default="clahe",
        description="intensity normalisation of every image (train and inference)",
    )
    border_fade: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="border suppression: the outer share of each side fades to black inside "
        "the model, in training and inference alike (0: off)",
    )
    monitor: Monitor = Field(
        default="last",
        description="the epoch a run keeps: last (the end of the schedule, no early stopping), "
        "or the best by a validation metric, with early stopping on it (val_auc, val_loss)",
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="seed of the split, initialisation and order"
    )
    split_seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="seed of the train/validation split alone (none: seed); runs that share it "
        "share their validation split, so they can form an ensemble of seeds",
    )
    val_fraction: float = Field(
        default=0.15,
        gt=0,
        le=MAX_VAL_FRACTION,
        description="share of patients carved out for validation: one of round(1/val_fraction) "
        "folds",
    )
    target_sensitivity: Annotated[float, AfterValidator(check_target_sensitivity)] = Field(
        default=0.95, description="validation sensitivity the default threshold keeps"
    )
    early_stopping_patience: int = Field(
        default=3, ge=1, description="epochs without improvement before stopping (not with last)"
    )
    precision: Precision = Field(
        default="auto", description="auto: bf16 where the hardware has it, else fp32"
    )
    num_workers: int = Field(
        default=0,
        ge=0,
        description="data loader worker processes (0: the in-memory images need none; "
        "augmentation runs batched in the training process)",
    )
    accelerator: Accelerator = Field(
        default="auto", description="Lightning accelerator: auto (a GPU when present, else CPU)"
    )
    devices: int = Field(
        default=1,
        ge=1,
        description="training processes per node (one per GPU, or CPU processes); "
        "batch_size is per process",
    )
    num_nodes: int = Field(default=1, ge=1, description="machines taking part in training")
    distributed_strategy: DistributedStrategy = Field(
        default="auto",
        description="Lightning strategy across processes (auto: ddp when there are several)",
    )
    lr_scaling: LrScaling = Field(
        default="sqrt",
        description="learning rate x sqrt(N), x N or unchanged for N = devices x num_nodes "
        "processes (the effective batch is batch_size x N)",
    )
    max_train_images: int | None = Field(
        default=None, ge=4, description="use a stratified subset of train (for quick tests)"
    )
    tracking: Tracking = Field(
        default="csv",
        description="experiment tracking: csv (history.csv only), tensorboard "
        "(RUN_DIR/tensorboard/), mlflow (local store RUN_DIR/mlruns/, or $MLFLOW_TRACKING_URI)",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _number_precision_is_its_name(cls, value: Any) -> Any:
        """``precision: 32`` in YAML is the number 32; the setting is the text ``"32"``."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("weights", "teacher", mode="before")
    @classmethod
    def _blank_path_is_none(cls, value: Any) -> Any:
        """An empty path (``--teacher ''``) is no path: it was resolved to the working folder
        and recorded as such."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*OPTIONAL_NUMBERS, mode="before")
    @classmethod
    def _none_word_is_none(cls, value: Any) -> Any:
        """``none`` switches an optional number off, so that a flag (``--ema-decay none``) or a
        study's ``overrides`` can undo a value the config file set."""
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @model_validator(mode="after")
    def _compatible_options(self) -> TrainConfig:
        """Cutmix pastes image boxes and a teacher scores images, so both need images, not the
        ``frozen`` strategy's cached features (mixup too: :func:`check_new_training`); a
        teacher's P(pneumonia) is a binary target.
        SWA keeps its average as the final epoch: it cannot share a run with EMA or with a
        best-epoch ``monitor``, needs an epoch before its own, and recomputes every batch-norm
        layer's statistics (``partial`` keeps the frozen stages'). Head epochs need pretrained
        features to train on and an epoch of fine-tuning after them. Settings this combination
        never reads (:func:`inert_settings`) are set back to their defaults: the run records
        what it trained with, and two networks that differ only in them are one network."""
        for name in inert_settings(self):  # a study's defaults give them to every model
            setattr(self, name, type(self).model_fields[name].default)
        if self.strategy == "frozen" and not self.pretrained:  # before a study trains anything
            raise ValueError(
                "strategy 'frozen' needs pretrained weights (a frozen random backbone learns "
                "nothing); use 'finetune' to train from scratch"
            )
        for option in ("cutmix_alpha", "teacher"):
            if getattr(self, option) and self.strategy == "frozen":
                raise ValueError(
                    f"{option} needs images: strategy frozen trains on cached features"
                )
        if self.teacher and self.task != "binary":
            raise ValueError("teacher gives P(pneumonia): distillation needs task binary")
        if self.head_epochs:
            if self.strategy == "frozen" or not self.pretrained:
                raise ValueError(
                    "head_epochs train the head on pretrained features before fine-tuning: "
                    "needs pretrained weights and strategy finetune or partial"
                )
            if self.head_epochs + self.swa_epochs >= self.epochs:
                raise ValueError("head_epochs (and swa_epochs) must leave an epoch to fine-tune")
        if self.swa_epochs:
            if self.monitor != "last":
                raise ValueError("swa_epochs needs monitor: last (the average is the final epoch)")
            if self.ema_decay is not None:
                raise ValueError("swa_epochs and ema_decay are two weight averages: choose one")
            if self.swa_epochs >= self.epochs:
                raise ValueError("swa_epochs must be fewer than epochs")
            if self.strategy == "partial":
                raise ValueError(
                    "swa_epochs with strategy partial: SWA's batch-norm epoch would reset the "
                    "frozen stages' statistics, which partial keeps; use finetune or frozen"
                )
        return self

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed


def inert_settings(config: TrainConfig) -> dict[str, str]:
    """The settings ``config``'s other choices leave unread, each with the reason (as a flag
    would be told: ``--swa-lr`` + the reason)."""
    inert: dict[str, str] = {}
    if not config.pretrained:
        scratch = "without pretrained weights (it trains from a random start)"
        inert |= dict.fromkeys(("weights", "backbone_lr_scale", "head_init"), scratch)
    if config.strategy == "frozen":
        cached = "with --strategy frozen (it trains on cached features of unaugmented images)"
        inert |= dict.fromkeys(("augmentation", "augment_strength", "backbone_lr_scale"), cached)
    else:
        inert["feature_cache"] = f"with --strategy {config.strategy} (only frozen caches features)"
    if config.strategy != "partial":
        inert["unfreeze_stages"] = f"with --strategy {config.strategy} (only partial reads it)"
    if config.teacher is None:
        inert["distill_weight"] = "without --teacher"
    if not config.swa_epochs:
        inert["swa_lr"] = "without --swa-epochs"
    if config.monitor == "last":
        inert["early_stopping_patience"] = "with --monitor last (it never stops early)"
    return inert


RUN_ENVIRONMENT = frozenset({"num_workers", "tracking", "feature_cache"})
"""Settings of how a run is carried out (loader processes, experiment tracking, where features
are cached), not of the network it trains."""


def network_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that shape the trained network: all but :data:`RUN_ENVIRONMENT`, the split
    seed as used (``split_seed`` none means the seed) and paths (weights, teacher) resolved, so
    that two spellings of one file are one setting."""
    settings = config.model_dump(exclude=set(RUN_ENVIRONMENT)) | {"split_seed": config.data_seed}
    return _with_resolved_paths(settings)


def _with_resolved_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the weights and teacher paths absolute (a relative one means another
    file from another folder)."""
    for key in ("weights", "teacher"):
        if settings[key] is not None:
            settings[key] = str(Path(settings[key]).expanduser().resolve())
    return settings


MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeysLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it kept the last one: a
    second ``models:`` block replaced the first, a second ``epochs:`` won silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *defaults`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # refused by PyYAML itself, by name
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (a key given twice is refused), with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeysLoader)  # SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file (YAML)") from None
    except OSError as exc:  # permission denied, a device...
        raise ConfigError(f"{path}: config file not readable ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:  # PyYAML's message runs over several lines
        raise ConfigError(f"{path}: invalid YAML ({brief(str(exc))})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected a YAML mapping of settings") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    odd = next(_non_text_keys(data), _ALL_TEXT)
    if odd is not _ALL_TEXT:
        raise ConfigError(
            f"{path}: setting names are text, got {odd!r} ({type(odd).__name__}; YAML reads "
            "1, null, on/off and yes/no as other types: quote the name)"
        )
    return data


_ALL_TEXT = object()
"""No key that is not text (a sentinel: a YAML key can itself be None)."""


def _non_text_keys(data: object) -> Iterator[object]:
    """Every mapping key at any depth of ``data`` that is not a string (YAML ``1:``, ``on:``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                yield key
            yield from _non_text_keys(value)
    elif isinstance(data, list):
        for item in data:
            yield from _non_text_keys(item)


def flags_given(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The settings a command line set (its unset flags are None)."""
    return {k: v for k, v in (overrides or {}).items() if v is not None}


ConfigInput: TypeAlias = TrainConfig | Mapping[str, Any] | str | Path | None
"""What :func:`pneumolab.train` takes as its config: a :class:`TrainConfig`, settings by name
(``{"epochs": 2}``; the rest default), a YAML file's path (as ``--config FILE``) or None."""


def check_new_training(config: TrainConfig) -> None:
    """ConfigError for what a new training refuses though a finished run's config.yaml may
    hold it (such runs still load): mixup under ``frozen``, which mixed the cached feature
    vectors under an image setting's name until 2026-12-07."""
    if config.strategy == "frozen" and config.mixup_alpha:
        raise ConfigError(
            "mixup_alpha needs images: strategy frozen trains on cached features (mixup there "
            "would mix feature vectors)"
        )


def unknown_settings(names: Iterable[str]) -> str:
    """The names that are no training setting, each with the closest one (``epohcs`` →
    ``epohcs (did you mean epochs?)``); empty when every name is one."""
    fields = list(TrainConfig.model_fields)
    unknown = []
    for name in names:
        if name not in fields:
            close = difflib.get_close_matches(name.replace("-", "_"), fields, n=1, cutoff=0.6)
            unknown.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(unknown)


def resolve_config(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults, then the YAML file, then ``settings`` (by name, as in a config file: a
    None is a null there), then non-None ``overrides`` (CLI flags: an unset flag is None)."""
    from_file = load_yaml(config_file) if config_file else {}
    flags = flags_given(overrides)
    values = from_file | dict(settings or {}) | flags
    source = f"{config_file}: " if config_file else ""
    odd = [key for key in values if not isinstance(key, str)]
    if odd:  # a YAML file's are refused by load_yaml; a mapping's reached str methods
        raise ConfigError(f"{source}setting names are text, got {odd[0]!r}")
    unknown = unknown_settings(list(values))
    if unknown:
        raise ConfigError(f"{source}invalid training config (unknown setting(s): {unknown})")
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(
            _invalid_where(exc, config_file, from_file, settings or {}, flags)
        ) from None


def _invalid_where(
    exc: ValidationError,
    config_file: str | Path | None,
    from_file: Mapping[str, Any],
    settings: Mapping[str, Any],
    flags: Mapping[str, Any],
) -> str:
    """The message of an invalid merged config, blaming what gave the faulty values: the config
    file only where a value at fault came from it (a flag's value was blamed on it), the flags
    (``--epochs``) that gave one, and the settings given over a file by name; for a combination
    (no one setting at fault) the file and whatever was given over it."""
    faulty = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    over_file = settings.keys() | flags.keys()
    in_file = bool(config_file) and (not faulty or bool(faulty & (from_file.keys() - over_file)))
    named = [
        f"--{name.replace('_', '-')}" for name in sorted((faulty or flags.keys()) & flags.keys())
    ]
    if config_file:  # without a file, the settings are where every value came from
        mapped = (faulty or settings.keys()) & (settings.keys() - flags.keys())
        named += [f"settings[{name!r}]" for name in sorted(mapped)]
    given = f" ({'given as' if faulty else 'with'} {', '.join(named)})" if named else ""
    problems = f"invalid training config ({validation_problems(exc, 'config')})"
    return f"{config_file}: " * in_file + problems + given


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, its weights and teacher paths absolute (a study re-run
    from another folder compares them as the same files)."""
    settings = _with_resolved_paths(config.model_dump())
    write_text_atomically(path, yaml.safe_dump(settings, sort_keys=False))
