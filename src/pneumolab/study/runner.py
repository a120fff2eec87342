"""Run a study: train (or resume, or reuse) every model, build the ensembles, compare them on
validation, link the best to ``STUDY_DIR/best``.

```
STUDY_DIR/
  runs/<name>/         one run directory per model and per ensemble
  best -> runs/<name>  the model or ensemble selected on validation
  selection.md         whether validation tells the selected model from each other one
  results.csv|md|png   the comparison table and bar chart (validation split)
  confusion/<name>.png confusion matrix per model
  samples.png          sample X-rays per class
  study.yaml           the study file as run (its command-line settings as ``overrides``)
```
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pneumolab.config import (
    TrainConfig,
    check_new_training,
    flags_given,
    load_yaml,
    network_settings,
    resolve_config,
)
from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.layout import find_splits, scan_split
from pneumolab.errors import (
    ConfigError,
    ModelError,
    OutputError,
    PneumolabError,
    RunDirError,
    TrainingInterrupted,
)
from pneumolab.evaluation.comparison import (
    ComparisonRow,
    compare_run,
    leading_model,
    write_comparison,
)
from pneumolab.evaluation.figures import sample_grid_figure, save_figure
from pneumolab.evaluation.metrics import format_metric
from pneumolab.evaluation.selection import (
    Margins,
    margins_over,
    smallest_untold,
    unknown_sizes,
    warn_untold,
)
from pneumolab.files import write_text_atomically
from pneumolab.inference.run_models import gate_is_stale, run_ood_model
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.models.registry import check_model_name, find_local_weights
from pneumolab.outputs import check_apart, working_in
from pneumolab.pipeline.ensemble import build_ensemble
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir, split_mismatch
from pneumolab.study.config import StudyConfig, load_study
from pneumolab.text import markdown_cell
from pneumolab.training.distill import check_teacher
from pneumolab.training.distributed import check_launch, global_rank, on_rank_zero
from pneumolab.training.train import check_buildable

log = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 6


@dataclass
class StudyResult:
    """The rows of the comparison, the selected model, and the models that could not be run."""

    rows: list[ComparisonRow]
    best: str | None
    failed: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    select_by: str = "roc_auc"
    """The study file's selection criterion (a column of ``rows``)."""
    margins: Margins | None = None
    """The leader's paired AUC margin over each other model (None: nothing compared); the leader
    is ``best`` unless ``prefer_smaller`` chose a smaller model that validation cannot tell from
    it."""


def _check_model_run(config: TrainConfig, run: RunDir) -> None:
    """ConfigError where the folder of a model of the study holds another network: one trained
    with other settings, or an ensemble (a study file that renamed its entries)."""
    if run.config.is_file():
        saved = network_settings(resolve_config(run.config))  # fields added since: defaults
        wanted = network_settings(config)
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        if changed:
            raise ConfigError(
                f"{run.root}: trained with other settings ({', '.join(changed)}); rename the "
                "model in the study file or delete that run directory"
            )
    elif run.is_complete():
        raise ConfigError(
            f"{run.root}: holds an ensemble (or a run without its config.yaml), not this model; "
            "rename the model in the study file or delete that run directory"
        )


def _check_ensemble_run(run: RunDir) -> None:
    """ConfigError where the folder of an ensemble of the study holds a trained model, which
    rebuilding the ensemble there would delete."""
    if run.config.is_file() or run.weights.is_file():
        raise ConfigError(
            f"{run.root}: holds a trained model, not this ensemble; rename the ensemble in the "
            "study file or move that run elsewhere"
        )


def _check_study_teacher(
    name: str, config: TrainConfig, study_dir: Path, configs: dict[str, TrainConfig]
) -> None:
    """Refuse model ``name``'s teacher where it is one of this study's models that could not
    teach it: itself, one listed after it (not trained yet), or one that normalises intensity
    otherwise (found only once that model had trained); a teacher outside the study is checked
    as a finished run (:func:`check_teacher`)."""
    teacher = Path(str(config.teacher)).resolve()
    names = list(configs)
    found = next((n for n in names if (study_dir / "runs" / n).resolve() == teacher), None)
    if found is None:
        check_teacher(teacher, config)
    elif found == name:
        raise ConfigError("its teacher is its own run folder: a model cannot teach itself")
    elif names.index(found) > names.index(name):
        raise ConfigError(
            f"its teacher is the study's model {found}, listed after it: list {found} "
            "first, so it is trained before its student"
        )
    elif configs[found].intensity != config.intensity:
        raise ConfigError(
            f"its teacher, the study's model {found}, normalises intensity with "
            f"{configs[found].intensity!r}, it with {config.intensity!r}: give them one intensity"
        )


def _check_outputs(study_dir: Path, configs: dict[str, TrainConfig], ensembles: list[str]) -> None:
    """Every refusal that needs no training, before anything is written: unknown architectures,
    weights paths that do not exist, run folders holding other networks, a ``best`` that is not
    a link, a distillation teacher that could not teach its student
    (:func:`_check_study_teacher`), a launcher that started another number of processes
    (:func:`~pneumolab.training.distributed.check_launch`)."""
    for config in configs.values():  # one number of processes for all: the study checks
        check_launch(config.distributed_strategy, config.devices, config.num_nodes)
    for name, config in configs.items():
        run = RunDir(study_dir / "runs" / name)
        started = run.is_complete() or run.last_checkpoint.is_file()  # its start weights used
        try:
            check_model_name(config.model)
            if not started:
                check_new_training(config)
                check_buildable(config)
                if config.pretrained:
                    find_local_weights(config.model, config.weights)
                if config.teacher:
                    _check_study_teacher(name, config, study_dir, configs)
        except (ModelError, ConfigError, RunDirError) as exc:
            raise ConfigError(f"model {name}: {exc}") from None
        _check_model_run(config, run)
    for name in ensembles:
        _check_ensemble_run(RunDir(study_dir / "runs" / name))
    best = study_dir / "best"
    if best.exists() and not best.is_symlink():
        raise OutputError(
            f"{best}: not a link (a copy?); move it away, the study links its choice there"
        )


def _write_study_copy(study_file: Path, copy: Path, flags: dict[str, Any]) -> None:
    """``STUDY_DIR/study.yaml``: the study file as run, the command line's settings included
    (its ``overrides``), so that the study resumes from it alone."""
    if not flags and copy.exists() and copy.samefile(study_file):  # resumed from its own copy
        return
    if not flags:
        shutil.copyfile(study_file, copy)
        return
    text = load_yaml(study_file)
    text["overrides"] = text.get("overrides", {}) | flags
    write_text_atomically(copy, yaml.safe_dump(text, sort_keys=False))


def _check_one_split(runs: Iterable[RunDir]) -> None:
    """ConfigError where two models of the study were validated on different splits (a run
    kept from another ``--data``, or from a pneumolab that split otherwise)."""
    mismatch = split_mismatch(run.saved_split() for run in runs if run.split.is_file())
    if mismatch is not None:
        run, first = mismatch  # a study's run folder is named after its model
        raise ConfigError(
            f"{run.split} and {first.split} differ: the study's models must be validated on one "
            f"split; delete the run of '{run.root.name}' (or '{first.root.name}') to train it "
            "again on this data"
        )


def _train_or_reuse(name: str, config: TrainConfig, data_dir: Path, run: RunDir) -> None:
    """Train ``name``; a finished run is reused (:func:`_check_model_run` has checked its
    settings), an interrupted one resumed, and a folder left before the first checkpoint
    started again."""
    if run.is_complete():
        log.info("%s: finished earlier, not retrained", name)
        return
    if run.last_checkpoint.is_file():
        log.info("%s: resuming from %s", name, run.last_checkpoint)
        train(data_dir, run.root, resume=True)
        return
    if run.root.exists() and global_rank() == 0:  # stopped before its first checkpoint
        shutil.rmtree(run.root)
    log.info("%s: training %s (%s)", name, config.model, config.strategy)
    train(data_dir, run.root, config)


def _ensemble_is_current(run: RunDir, members: list[RunDir]) -> bool:
    """Whether the finished ensemble ``run`` averages exactly ``members`` as they are now (not a
    member list the study file has since changed, nor a member's refitted OOD model, nor
    weights retrained after it was built:
    told by their digests, where the ensemble recorded them, else by modification times)."""
    if not run.is_complete():
        return False
    built_of = sorted(m.root.resolve() for m in run.member_runs())
    if built_of != sorted(m.root.resolve() for m in members):  # their order: the same mean
        return False
    if gate_is_stale(run, run_ood_model(run, warn=False)):  # a member's gate refitted since
        return False
    changed = run.changed_members()
    if changed is not None:  # a copy of the folders, or a touched file, has new times, same weights
        return not changed
    built_at = run.meta.stat().st_mtime
    return all(m.weights.stat().st_mtime <= built_at for m in members)


def _link_best(study_dir: Path, target: RunDir) -> Path:
    link = study_dir / "best"
    tmp = study_dir / ".best.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target.root, study_dir), target_is_directory=True)
    tmp.replace(link)  # atomic: `best` always points at a finished run
    return link


def _export_missing(runs: dict[str, RunDir]) -> None:
    """Export (and verify) every network of ``runs`` that has no ``model.onnx`` yet."""
    from pneumolab.serving.export import export_missing  # loads onnx

    for path, report in export_missing(run.root for run in runs.values()).items():
        log.info("exported %s (max |Δprob| vs PyTorch %.1e)", path, report.max_abs_diff)


def _sample_grid(data_dir: Path, path: Path) -> Path:
    """Evenly spaced training images of each class."""
    train_samples = scan_split(find_splits(data_dir)["train"])
    by_class = {}
    for label, name in enumerate(CLASS_NAMES):
        paths = [s.path for s in train_samples if s.label == label]
        picks = np.linspace(0, len(paths) - 1, min(SAMPLES_PER_CLASS, len(paths)), dtype=int)
        by_class[name] = [paths[i] for i in picks]
    return save_figure(sample_grid_figure(by_class), path)


def run_study(
    study_file: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
) -> StudyResult:
    """Run the study described by ``study_file`` on ``data_dir`` into ``out_dir`` (resumable).

    A model that cannot be trained (e.g. its ImageNet weights are not available offline) is
    reported in ``failed`` and in the table; the others go on.

    Under several training processes every process runs the study; each model trains on all
    of them, and rank 0 alone writes, builds the ensembles and compares (the other ranks get an
    empty result). The study folder is locked while the study runs (a second study on it was
    deleting or training into the first one's runs).
    """
    with on_rank_zero(working_in(Path(out_dir), "running a study")):
        return _run_study(study_file, data_dir, out_dir, overrides)


def _run_study(
    study_file: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    overrides: dict[str, Any] | None,
) -> StudyResult:
    """:func:`run_study`'s work, once the study folder is this process's."""
    study = load_study(study_file)
    try:
        configs = study.train_configs(overrides)
    except ConfigError as exc:
        raise ConfigError(f"{study_file}: {exc}") from None
    data_dir, study_dir = Path(data_dir).resolve(), Path(out_dir)
    check_apart(study_dir, find_splits(data_dir).values())  # its runs' figures: read as X-rays
    if RunDir(study_dir).looks_like_run:
        raise OutputError(f"{study_dir}: is a run directory; give the study a folder of its own")
    # rank 0 made the folder; another rank may look before it has
    entries = study_dir.iterdir() if study_dir.is_dir() else iter(())
    held = sorted(p.name for p in entries if not p.name.startswith("."))
    if held and not {"study.yaml", "runs"} & set(held):  # its results.md was replaced silently
        raise OutputError(
            f"{study_dir}: holds {', '.join(held[:3])}{'...' if len(held) > 3 else ''} and is not "
            "a study's folder (no study.yaml, no runs/); give --out a new or empty folder"
        )
    _check_outputs(study_dir, configs, [ensemble.name for ensemble in study.ensembles])
    if global_rank() == 0:
        (study_dir / "runs").mkdir(parents=True, exist_ok=True)
        _write_study_copy(Path(study_file), study_dir / "study.yaml", flags_given(overrides))
    finished, failed = _train_models(configs, data_dir, study_dir)
    if global_rank() != 0:
        return StudyResult([], None, failed)
    _check_one_split(finished.values())
    _build_ensembles(study, configs, study_dir, finished, failed)
    if study.backend == "onnx":
        _export_missing(finished)
    cache = ScoreCache()  # members are scored once, not again inside each ensemble
    rows = [
        compare_run(
            name, run.root, data_dir, "val", study.robustness, study.shift, cache, study.backend
        )
        for name, run in finished.items()
    ]
    cache.log_use()
    outputs = write_comparison(rows, study_dir, "val", failed)
    outputs["samples"] = _sample_grid(data_dir, study_dir / "samples.png")
    if not rows:  # nothing to select: no choice of an earlier study file stays behind
        (study_dir / "best").unlink(missing_ok=True)
        (study_dir / "selection.md").unlink(missing_ok=True)
        return StudyResult(rows, None, failed, outputs, study.select_by)
    floor = min(config.target_sensitivity for config in configs.values())
    best, margins = _select(study, rows, finished, study_dir, floor)
    outputs |= {"best": study_dir / "best", "selection": study_dir / "selection.md"}
    return StudyResult(rows, best, failed, outputs, study.select_by, margins)


def _train_models(
    configs: dict[str, TrainConfig], data_dir: Path, study_dir: Path
) -> tuple[dict[str, RunDir], dict[str, str]]:
    """Train (or reuse, or resume) every model: the finished runs, and why the others failed (a
    wrong study file or Ctrl+C stops the study instead)."""
    failed: dict[str, str] = {}
    finished: dict[str, RunDir] = {}
    for name, config in configs.items():
        run = RunDir(study_dir / "runs" / name)
        try:
            _train_or_reuse(name, config, data_dir, run)
            finished[name] = run
        except (ConfigError, TrainingInterrupted):
            raise
        except PneumolabError as exc:
            log.error("%s: not trained: %s", name, exc)
            failed[name] = str(exc)
        except Exception as exc:  # a fault of one model's training: the others still run
            log.exception("%s: not trained: unexpected %s", name, type(exc).__name__)
            failed[name] = f"unexpected {type(exc).__name__}: {exc}"
    return finished, failed


def _build_ensembles(
    study: StudyConfig,
    configs: dict[str, TrainConfig],
    study_dir: Path,
    finished: dict[str, RunDir],
    failed: dict[str, str],
) -> None:
    """Build each ensemble whose members all trained, unless it is current; added to
    ``finished``, or to ``failed`` with the members it lacks."""
    for ensemble in study.ensembles:
        run = RunDir(study_dir / "runs" / ensemble.name)
        missing = [m for m in ensemble.members if m not in finished]
        if missing:
            failed[ensemble.name] = f"member(s) not trained: {', '.join(missing)}"
            continue
        members = [finished[m] for m in ensemble.members]
        if not _ensemble_is_current(run, members):
            if run.root.exists():
                log.warning(
                    "%s: its members changed since it was built: built again (its folder, with "
                    "any evaluations and audits in it, is replaced)",
                    ensemble.name,
                )
            shutil.rmtree(run.root, ignore_errors=True)
            target = configs[ensemble.members[0]].target_sensitivity
            build_ensemble([member.root for member in members], run.root, target)
        finished[ensemble.name] = run


def _smaller_choice(
    best: str, margins: Margins, select_by: str, sizes: Mapping[str, int | None]
) -> str:
    """Why ``prefer_smaller`` chose ``best``, in the words that fit how many models validation
    could not tell from the leader (with none, there was no smaller model to choose) and
    whether their sizes were known."""
    leader, untold = markdown_cell(margins.leader), margins.untold
    led = f"the leader on validation by `{select_by}`"
    if margins.untested:
        return (
            f"{led}, kept: the margins between the models were not tested "
            f"({markdown_cell(margins.untested)}), so `prefer_smaller: true` could not apply"
        )
    if not margins.margins:
        return f"{led}, the study's only model"
    if not untold:
        return (
            f"{led}: validation tells it from every other model, so `prefer_smaller: true` "
            "had no other model to choose"
        )
    others = f"the {len(untold)} model(s) validation cannot tell from it"
    unknown = ", ".join(map(markdown_cell, unknown_sizes(margins, sizes)))
    if unknown:
        return (
            f"{led}, kept: of it and {others}, {unknown} recorded no parameter count (a run of "
            "an older version), so `prefer_smaller: true` could not compare sizes"
        )
    if best == margins.leader:
        return f"{led} and, of it and {others}, the one with the fewest parameters (`prefer_smaller: true`)"
    return (
        f"the model with the fewest parameters among **{leader}**, {led}, and {others} "
        "(`prefer_smaller: true`)"
    )


def _floor_reason(leader: ComparisonRow, floor: float) -> str:
    """Why ``shift_specificity`` chose ``leader``: among the models keeping the target
    sensitivity under the compound shift, or, where none does, the one closest to it."""
    kept = leader.shift_sensitivity is not None and round(leader.shift_sensitivity, 9) >= floor
    if kept:
        return (
            "selected on validation by `shift_specificity` among the models whose sensitivity "
            f"under the compound shift is at least the target {floor:g} (ties: specificity)"
        )
    return (
        f"selected on validation by its sensitivity under the compound shift "
        f"({format_metric(leader.shift_sensitivity)}): no model kept the target sensitivity "
        f"{floor:g} there, so `shift_specificity` could not rank them"
    )


def _select(
    study: StudyConfig,
    rows: list[ComparisonRow],
    finished: dict[str, RunDir],
    study_dir: Path,
    sensitivity_floor: float,
) -> tuple[str, Margins]:
    """The selected model (``best`` links to it) and the leader's margins, written with the
    reason in ``selection.md``; ``shift_specificity`` ranks first the models whose sensitivity
    under the compound shift meets ``sensitivity_floor`` (the models' target sensitivity)."""
    leader = leading_model(rows, study.select_by, sensitivity_floor)
    margins = margins_over(finished, leader, study.select_by)
    warn_untold(margins, "validation")
    best, why = leader, f"selected on validation by `{study.select_by}` (ties: specificity)"
    if study.select_by == "shift_specificity":
        why = _floor_reason(next(r for r in rows if r.name == leader), sensitivity_floor)
    if study.prefer_smaller:
        sizes = {r.name: r.parameters for r in rows}
        best = smallest_untold(margins, sizes)
        why = _smaller_choice(best, margins, study.select_by, sizes)
    _link_best(study_dir, finished[best])
    write_text_atomically(
        study_dir / "selection.md",
        f"# Selection\n\n`best` is **{best}**, {why}.\n\n" + margins.markdown("validation"),
    )
    return best, margins
