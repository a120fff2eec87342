"""Training phase 1: the patient-grouped split of ``DATA/train`` (new, or read back from the run
being resumed) and the run directory that records it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from pneumolab.config import TrainConfig, resolve_config, save_config
from pneumolab.data.check import unreadable
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.data.patients import grouped_split
from pneumolab.data.subtypes import subtype_labels
from pneumolab.errors import DataLayoutError, RunDirError
from pneumolab.run import OWN_FILES, RunDir


@dataclass(frozen=True)
class Split:
    """What a run trains and validates on, with the config that chose it."""

    config: TrainConfig
    data_root: Path
    train: list[Sample]
    val: list[Sample]


def _subset(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    if size is None or size >= len(samples):
        return samples
    labels = [s.label for s in samples]
    try:
        kept, _ = train_test_split(samples, train_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:  # a class too small to be on both sides of the cut
        raise DataLayoutError(
            f"max_train_images {size} of {len(samples)} images: no stratified subset ({exc}); "
            "choose a size that leaves at least two images of each class out, or none"
        ) from None
    return sorted(kept, key=lambda s: s.path)


def _grouped_split(samples: list[Sample], config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """:func:`grouped_split`; when it fails, unreadable images are named as the likelier cause
    (identical junk files count as one patient, so they look like too few patients)."""
    try:
        return grouped_split(samples, config.val_fraction, config.data_seed)
    except DataLayoutError as exc:
        problems = unreadable(samples)
        if not problems:
            raise
        raise DataLayoutError(
            f"{len(problems)} of {len(samples)} training images are unreadable (first: "
            f"{problems[0]}), and then: {exc}. See them all with `pneumolab data check`"
        ) from None


def check_run_dir(out_dir: Path, resume: bool) -> RunDir:
    """The run directory to train into: one that does not exist or is empty, or (``resume``)
    an interrupted run with a config and a last checkpoint. Creates nothing."""
    run = RunDir(Path(out_dir))
    stopped_early = (
        "it holds no checkpoints/last.ckpt: an attempt that stopped before its first epoch "
        "ended; delete the folder to train again"
    )
    if resume:
        if run.is_complete():
            raise RunDirError(f"{run.root}: this run already finished; nothing to resume")
        if not run.config.is_file():
            raise RunDirError(f"{run.root}: nothing to resume (no config.yaml)")
        if not run.last_checkpoint.is_file():
            why = stopped_early if _holds_only_run_files(run) else "no checkpoints/last.ckpt"
            raise RunDirError(f"{run.root}: nothing to resume; {why}")
    elif run.root.exists() and not run.root.is_dir():
        raise RunDirError(f"{run.root}: is a file; --out is the run directory to create")
    elif run.root.exists() and any(run.root.iterdir()):
        if run.last_checkpoint.is_file():
            hint = " or add --resume to continue it"
        elif run.config.is_file() and not run.is_complete() and _holds_only_run_files(run):
            hint = f"; {stopped_early}"
        else:
            hint = ""
        raise RunDirError(
            f"{run.root}: already exists and is not empty; choose another --out{hint}"
        )
    return run


RUN_FOLDERS = frozenset({"checkpoints", "tensorboard", "mlruns", "eval"})
"""Folders a training writes into its run directory."""


def _holds_only_run_files(run: RunDir) -> bool:
    """Whether everything in ``run.root`` is what a training writes there: a folder holding
    the user's own files beside a config.yaml of theirs is no stopped attempt to delete."""
    return all(p.name in OWN_FILES or p.name in RUN_FOLDERS for p in run.root.iterdir())


def prepare_split(
    data_dir: str | Path, run: RunDir, config: TrainConfig | None, resume: bool
) -> Split:
    """The split to train on: read back from ``run`` when resuming (with its config), else
    carved from ``data_dir/train`` by patient. Writes nothing."""
    data_root = Path(data_dir).resolve()
    if resume:
        config = resolve_config(run.config)
        train, val = run.read_split(data_root, "train"), run.read_split(data_root, "val")
    else:
        config = config or TrainConfig()
        found = scan_split(find_splits(data_root)["train"])
        all_train = _subset(found, config.max_train_images, config.data_seed)
        train, val = _grouped_split(all_train, config)
    if config.task == "three_class":
        subtype_labels(train + val)  # every pneumonia file name has its subtype
    return Split(config, data_root, train, val)


def start_run(run: RunDir, split: Split) -> None:
    """Create the run directory and record the config and the split (a new run only)."""
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(split.config, run.config)
    run.write_split(split.data_root, split.train, split.val)
