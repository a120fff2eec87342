"""``meta.json``: what a finished run (a single model or an ensemble) is and how it decides.

One typed, versioned model (:class:`RunMeta`) built by one function (:func:`describe_run`) for
single runs and ensembles alike, and written by :meth:`pneumolab.run.RunDir.write_meta`. Files
written before the schema had a version are migrated on read (:func:`migrate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import Field

import pneumolab
from pneumolab.choices import Intensity, Task
from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.subtypes import SUBTYPE_NAMES
from pneumolab.errors import RunDirError
from pneumolab.results import BinaryMetrics, DecisionRule, Result, SubtypeMetrics

SCHEMA_VERSION = 2
"""Version of :class:`RunMeta`. Version 1 is the unversioned format of pneumolab 0.1."""

ENSEMBLE_STRATEGY = "ensemble (mean probability)"


class Preprocessing(Result):
    """How an image becomes the model's input (the same in training and inference)."""

    color: str = "grayscale, replicated to the model's input channels"
    resize: str
    intensity: Intensity | None = Field(description="None: differs between members")
    scale: str = "pixels / 255"
    mean: list[float] | None = Field(description="per channel; None: differs between members")
    std: list[float] | None
    border_fade: float | None = Field(
        default=0.0,
        description="share of each side faded to black inside the model (border suppression); "
        "None: differs between members",
    )


class FeatureCacheStats(Result):
    """What the frozen strategy's feature cache did: rows reused from disk and computed now."""

    key: str
    reused: int
    computed: int
    computed_per_rank: list[int] | None = Field(
        default=None, description="how many each training process computed"
    )


class DistributedTraining(Result):
    """How many processes trained (Lightning DDP), and the batch size and learning rate that
    follow: ``effective_batch_size`` = per-process batch × processes; ``lr`` = the config's lr
    scaled by ``lr_scaling`` (sqrt: × √processes, linear: × processes, none)."""

    processes: int
    strategy: str
    accelerator: str
    batch_size_per_process: int
    effective_batch_size: int
    lr_scaling: str
    lr: float


class Compute(Result):
    """Where and in what arithmetic a model was trained. The same recipe and seed give other
    weights in another precision (``precision: auto`` takes bf16 autocast only where the
    hardware has native bf16), so a run is reproduced on a machine that matches this."""

    precision: str = Field(description="Lightning's precision, e.g. 32-true or bf16-mixed")
    device: str = Field(description="GPU name, or CPU name with its vector instructions")
    threads: int = Field(description="PyTorch's CPU threads")
    earlier_legs: list[Compute] = Field(
        default_factory=list,
        description="a resumed run's earlier legs that trained in another precision or on "
        "another device (its weights are then of no single one)",
    )

    def same_arithmetic(self, other: Compute) -> bool:
        """Whether ``other`` trained in this precision on this device (threads aside)."""
        return (self.precision, self.device) == (other.precision, other.device)


class TeacherRecord(Result):
    """The run a model was distilled from (``TrainConfig.teacher``)."""

    run: str = Field(description="the teacher's run folder, as given")
    model: str
    image_size: int = Field(description="the size the teacher scored the training images at")
    weights_sha256: str = Field(description="SHA-256 of the teacher's weights file")


class TrainingSummary(Result):
    """How the model was trained (an ensemble: the sums over its members)."""

    strategy: str
    parameters: int | None
    trainable_parameters: int | None = None
    best_epoch: int | None = None
    """The kept checkpoint's epoch, counted from 0 as Lightning counts (training prints and the
    model card show it from 1)."""
    train_seconds: float | None
    feature_cache: FeatureCacheStats | None = None
    distributed: DistributedTraining | None = None
    compute: Compute | None = None
    """None for ensembles (each member has its own) and runs of before 2026-12-03."""
    teacher: TeacherRecord | None = None
    """The run it was distilled from; None without distillation."""
    unreadable: list[str] = Field(default_factory=list)
    """Images of split.csv the (last leg of) training could not read, so left out of training
    and of the validation figures; empty too in runs of before 2026-12-07, which kept no record."""


class RunMeta(TrainingSummary, DecisionRule):
    """Everything ``meta.json`` holds; ``members`` (paths relative to the run) marks an ensemble."""

    schema_version: int = SCHEMA_VERSION
    model: str
    members: list[str]
    member_weights: list[str] = Field(default_factory=list)
    """SHA-256 of each member's weights when the ensemble was built (empty: a single run, or an
    ensemble of before 2026-12-06): a study rebuilds it only when one differs."""
    image_size: int
    intensity: Intensity | None
    """None: an ensemble whose members normalise intensity differently (each its own way)."""
    preprocessing: Preprocessing
    class_names: list[str]
    task: Task
    subtype_names: list[str] | None
    val_subtype_metrics: SubtypeMetrics | None = None
    official_val_metrics: BinaryMetrics | None = None
    pneumolab_version: str
    torch_version: str | None
    library_versions: dict[str, str] = Field(default_factory=dict)
    """Installed versions of :data:`RECORDED_LIBRARIES` when the run was written (empty for
    runs of before 2026-12-03)."""

    @property
    def is_ensemble(self) -> bool:
        """True for an ensemble (the mean probability of its member runs)."""
        return bool(self.members)


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


RECORDED_LIBRARIES = (
    "torchvision",
    "timm",
    "lightning",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "scikit-learn",
)
"""Libraries besides torch whose version can change a run's numbers (weights, augmentation,
CLAHE, image decoding, thresholds): each run records them."""


def library_versions() -> dict[str, str]:
    """The installed version of each of :data:`RECORDED_LIBRARIES` (those not installed left out)."""
    installed = {name: _installed(name) for name in RECORDED_LIBRARIES}
    return {name: v for name, v in installed.items() if v is not None}


@dataclass(frozen=True)
class RunDescription:
    """What a run is, before its decision rule is chosen: the model (or ensemble), its input and
    how it was trained. ``intensity``, ``mean``/``std`` (per channel), ``border_fade``: None where
    an ensemble's members differ."""

    model: str
    image_size: int
    intensity: Intensity | None
    task: Task
    mean: list[float] | None
    std: list[float] | None
    training: TrainingSummary
    members: list[str] = field(default_factory=list)
    member_weights: list[str] = field(default_factory=list)
    val_subtype_metrics: SubtypeMetrics | None = None
    border_fade: float | None = 0.0


def describe_run(
    description: RunDescription,
    decision: DecisionRule,
    official_val_metrics: BinaryMetrics | None = None,
) -> RunMeta:
    """The metadata of a finished run, with the preprocessing and versions filled in."""
    d = description
    resize = f"{d.image_size}x{d.image_size}, bilinear, aspect ratio not kept"
    return RunMeta(
        model=d.model,
        members=d.members,
        member_weights=d.member_weights,
        image_size=d.image_size,
        intensity=d.intensity,
        preprocessing=Preprocessing(
            resize=resize,
            intensity=d.intensity,
            mean=d.mean,
            std=d.std,
            border_fade=d.border_fade,
        ),
        class_names=list(CLASS_NAMES),
        task=d.task,
        subtype_names=list(SUBTYPE_NAMES) if d.task == "three_class" else None,
        **dict(d.training),
        **dict(decision),
        val_subtype_metrics=d.val_subtype_metrics,
        official_val_metrics=official_val_metrics,
        pneumolab_version=pneumolab.__version__,
        torch_version=_installed("torch"),
        library_versions=library_versions(),
    )


def migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``meta.json`` content of any known version as the current version's fields.

    Version 1 (unversioned, pneumolab 0.1): ensembles lack ``intensity``, ``task``,
    ``preprocessing`` and ``torch_version``; the oldest runs also lack ``operating_points``,
    ``class_names`` and the calibration maps. Missing fields get the values those runs were
    trained and scored with.
    """
    found = data.get("schema_version", 1)
    if not isinstance(found, int) or found > SCHEMA_VERSION:
        raise RunDirError(
            f"{source}: meta.json schema version {found!r} is newer than this pneumolab "
            f"understands ({SCHEMA_VERSION}); upgrade pneumolab"
        )
    if found == SCHEMA_VERSION:
        return data
    old = dict(data)
    intensity = old.get("intensity", "none")
    image_size = old.get("image_size")
    subtypes = old.get("subtype_names")
    points = old.get("operating_points") or {
        "stored": {"threshold": old.get("threshold"), "provenance": old.get("threshold_rule", "")}
    }
    resize = f"{image_size}x{image_size}, bilinear, aspect ratio not kept"
    defaults = {
        "members": [],
        "intensity": intensity,
        "preprocessing": {"resize": resize, "intensity": intensity, "mean": None, "std": None},
        "class_names": list(CLASS_NAMES),
        "task": "three_class" if subtypes else "binary",
        "subtype_names": subtypes,
        "strategy": "finetune",
        "parameters": None,
        "train_seconds": None,
        "threshold_rule": "",
        "default_operating_point": next(iter(points)),
        "temperature": None,
        "platt": None,
        "pneumolab_version": "unknown",
        "torch_version": None,
    }
    return defaults | old | {"operating_points": points, "schema_version": SCHEMA_VERSION}
