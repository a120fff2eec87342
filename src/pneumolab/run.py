"""The run directory: one folder holds everything a training run produced.

```
RUN_DIR/
  config.yaml            resolved training config
  split.csv              every train-folder image with its patient and side (train / val)
  model.safetensors      the kept epoch's weights (no pickle)
  meta.json              RunMeta: model, image size, preprocessing, threshold, classes, versions, metrics
  history.csv            per-epoch metrics
  val_predictions.csv    validation scores of the kept weights
  ood.safetensors        the input-scope gate's OOD model and threshold (pneumolab.scope.ood)
  MODEL_CARD.md          the model card (written when training ends; `pneumolab report` refreshes it)
  test_evaluations.jsonl every `--split test` evaluation, logged and counted
  mlflow_run.json        the MLflow run that tracks it (``tracking: mlflow``): a resume continues it
  mlruns/, tensorboard/  the local tracking stores (``tracking: mlflow`` / ``tensorboard``)
  checkpoints/           Lightning checkpoints (last.ckpt for --resume)
  model.onnx             written by `pneumolab export` only (model.int8.onnx and
                         model.openvino.xml: `--format onnx-int8` / `openvino`)
  eval/<split>/          evaluation outputs
  audit/<folder>/        `pneumolab audit` outputs (without --out)
```

An ensemble's run directory lists its member run directories (relative to it) in
``meta.json``'s ``members`` instead of having weights, config and checkpoints; everything else is
the same. ``meta.json`` is written last: it marks a finished run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pneumolab.data.layout import Sample
from pneumolab.errors import DataLayoutError, RunDirError, validation_problems
from pneumolab.files import (
    blocked_by,
    permission_problem,
    sha256_of,
    unreadable_folder,
    write_text_atomically,
)
from pneumolab.once import Once
from pneumolab.run_meta import RunMeta, migrate

log = logging.getLogger(__name__)

OWN_FILES = frozenset(
    {
        "config.yaml",
        "split.csv",
        "model.safetensors",
        "meta.json",
        "history.csv",
        "val_predictions.csv",
        "ood.safetensors",
        "mlflow_run.json",
        "MODEL_CARD.md",
        "test_evaluations.jsonl",
    }
)
"""Files of a run directory that no output flag may write over (``model.onnx`` and ``eval/``
are outputs: replaced only when asked)."""


_TOLD_PLATT_IGNORED = Once()
"""Runs (resolved folders) already told of their ignored Platt map in this process."""


def _tell_stored_platt_ignored(root: Path, reason: str) -> None:
    """Warn, once per run folder and process, that the Platt map ``root``'s meta.json stores
    (written before 2026-12-07, when such maps were not yet refused) does not increase with the
    score, so is ignored (:attr:`~pneumolab.results.DecisionRule.platt_refused`)."""
    if not _TOLD_PLATT_IGNORED.first(Path(os.path.realpath(root))):
        return
    log.warning(
        "%s: the Platt calibration map its meta.json stores (written before 2026-12-07, when "
        "such maps were still kept) is ignored: %s. Its predictions are the network's raw "
        "probabilities, as they always were; evaluations show no Platt-calibrated figures",
        root,
        reason,
    )


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory, and reading/writing its small files. Path-like (its
    root): what :func:`pneumolab.train` returns can be passed wherever a run folder is taken."""

    root: Path

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def ood(self) -> Path:
        return self.root / "ood.safetensors"

    @property
    def mlflow_run(self) -> Path:
        return self.root / "mlflow_run.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def val_predictions(self) -> Path:
        return self.root / "val_predictions.csv"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def eval_dir(self, split: str) -> Path:
        return self.root / "eval" / split

    def is_complete(self) -> bool:
        """A finished run: readable meta.json, and weights unless it is an ensemble."""
        try:
            self.read_meta()
        except RunDirError:
            return False
        return True

    def member_runs(self) -> list[RunDir]:
        """The member runs of an ensemble (an empty list for a single run); RunDirError naming
        a member that is not where the ensemble stored it (relative to its folder)."""
        members = []
        for stored in self.read_meta().members:
            member = RunDir(self.root / stored)
            if not member.root.is_dir():
                raise RunDirError(
                    f"{self.root}: its member {stored} (stored relative to the ensemble's folder) "
                    f"is not at {member.root}; keep the ensemble beside its members (move or "
                    "copy them together), or build it again with `pneumolab ensemble`"
                )
            members.append(member)
        return members

    def check_members(self) -> None:
        """RunDirError where a member's weights changed since the ensemble was built (its
        threshold and OOD model were chosen on the old ones)."""
        changed = self.changed_members()
        if changed:
            raise RunDirError(
                f"{self.root}: the weights of its member {changed[0].root} changed since the "
                "ensemble was made (its threshold and OOD model were chosen on the old ones); "
                "run `pneumolab ensemble` on the members again"
            )

    def changed_members(self) -> list[RunDir] | None:
        """The members of an ensemble whose weights are no longer those it was built on (its
        threshold and OOD model were chosen on them); None where it recorded no digests."""
        recorded = self.read_meta().member_weights
        if not recorded:
            return None
        members = self.member_runs()
        return [
            m
            for m, digest in zip(members, recorded, strict=True)
            if weights_digest(m.root) != digest
        ]

    def missing_onnx(self) -> list[RunDir]:
        """The networks of this run (each member of an ensemble, else the run itself) that
        have no ``model.onnx`` yet."""
        return [single for single in self.member_runs() or [self] if not single.onnx.is_file()]

    @property
    def looks_like_run(self) -> bool:
        """Whether the folder holds a run's config or metadata."""
        return self.config.is_file() or self.meta.is_file()

    @classmethod
    def owning(cls, path: str | Path) -> RunDir | None:
        """The run directory whose own file (or checkpoint) ``path`` is, else None."""
        path = Path(path).resolve()
        if path.name in OWN_FILES and cls(path.parent).looks_like_run:
            return cls(path.parent)
        if path.parent.name == "checkpoints" and cls(path.parent.parent).looks_like_run:
            return cls(path.parent.parent)
        return None

    def model_version(self) -> str:
        """``<pneumolab version>+<first 12 hex of weights_digest>.<first 8 of gate_digest>``:
        which model, with which OOD model (a refitted gate is another version, so a
        results file is not resumed across it)."""
        from pneumolab import __version__

        return f"{__version__}+{weights_digest(self.root)[:12]}.{gate_digest(self.root)[:8]}"

    def read_meta(self) -> RunMeta:
        """Metadata of a finished run (older formats migrated); RunDirError if the run is missing,
        unfinished or its meta.json unreadable."""
        if self.root.is_file() and RunDir(self.root.parent).meta.is_file():  # one of its files
            raise RunDirError(f"{self.root}: is a file; give the run folder ({self.root.parent})")
        if self.root.is_file():  # an image, given where the run goes
            raise RunDirError(
                f"{self.root}: is a file, not a run folder (one holds meta.json and "
                "model.safetensors; a command takes the run folder first, then its other inputs)"
            )
        if not self.root.is_dir():
            raise RunDirError(f"{self.root}: run directory not found")
        unfinished = RunDirError(
            f"{self.root}: not a finished run (no meta.json/model.safetensors); "
            "if training was interrupted, continue it with `pneumolab train --resume --out ...`"
        )
        if not self.meta.is_file():
            raise unfinished
        try:
            data = json.loads(self.meta.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            data = migrate(data, str(self.meta))
            meta = RunMeta.model_validate(data)
        except ValidationError as exc:  # before ValueError, its base class
            raise RunDirError(
                f"{self.meta}: not a valid run metadata file "
                f"({validation_problems(exc, 'meta.json')})"
            ) from None
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise RunDirError(f"{self.meta}: not a valid run metadata file ({exc})") from None
        if not meta.is_ensemble and not self.weights.is_file():
            raise unfinished
        if data.get("platt") is not None and meta.platt_refused is not None:
            _tell_stored_platt_ignored(self.root, meta.platt_refused)
        return meta

    def write_meta(self, meta: RunMeta) -> None:
        """Write meta.json atomically (last: it marks the run finished)."""
        write_text_atomically(self.meta, meta.model_dump_json(indent=2) + "\n")

    def write_split(self, data_root: Path, train: list[Sample], val: list[Sample]) -> None:
        """Save the carved split as file lists relative to the data root."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "patient", "subset"])
        for subset, samples in (("train", train), ("val", val)):
            for s in samples:
                writer.writerow(
                    [s.path.relative_to(data_root).as_posix(), s.label, s.patient, subset]
                )
        write_text_atomically(self.split, buffer.getvalue())

    def saved_split(self) -> SavedSplit:
        """The saved split, read once (compared with another run's and turned into samples from
        that one read); RunDirError where the run has none."""
        if not self.split.is_file():
            raise RunDirError(f"{self.split}: split file missing")
        with self.split.open(newline="", encoding="utf-8") as f:
            return SavedSplit(self, f.read())

    def split_rows(self, subset: str | None = None) -> list[dict[str, str]]:
        """The saved split's rows (:meth:`SavedSplit.rows`)."""
        return self.saved_split().rows(subset)

    def split_paths(self, subset: str) -> set[str]:
        """The dataset-relative paths of one side (``train`` or ``val``) of the saved split."""
        return {r["path"] for r in self.split_rows(subset)}

    def read_split(self, data_root: Path, subset: str) -> list[Sample]:
        """The samples of one side of the saved split (:meth:`SavedSplit.samples`)."""
        return self.saved_split().samples(data_root, subset)


@dataclass(frozen=True)
class SavedSplit:
    """A run's ``split.csv`` as :meth:`RunDir.saved_split` read it: ``text``, its contents."""

    run: RunDir
    text: str

    def rows(self, subset: str | None = None) -> list[dict[str, str]]:
        """The rows (``path``, ``label``, ``patient``, ``subset``), of one side (``train`` or
        ``val``) or, without ``subset``, of both."""
        reader = csv.DictReader(io.StringIO(self.text, newline=""))
        return [r for r in reader if subset in (None, r["subset"])]

    def samples(self, data_root: Path, subset: str) -> list[Sample]:
        """The samples of one side (``train`` or ``val``), under ``data_root``; an error naming
        ``data_root`` (or a folder in it) where it does not hold them."""
        rows = self.rows(subset)
        samples = [Sample(Path(data_root) / r["path"], int(r["label"]), r["patient"]) for r in rows]
        missing = [s.path for s in samples if not os.path.isfile(s.path)]  # never raises
        unreadable = unreadable_folder(data_root) if missing else None
        if missing and (unreadable or not Path(data_root).is_dir()):  # say so, not "N of"
            what = unreadable or (
                "is a file, not a dataset folder" if Path(data_root).exists() else "not found"
            )
            raise DataLayoutError(
                f"{data_root}: {what}; give the data folder the run was trained on (--data)"
            )
        hidden = [path for path in missing if blocked_by(path) is not None]
        if hidden:  # there, or may be: a class folder the user may not read
            raise DataLayoutError(
                f"{hidden[0]}: {permission_problem(hidden[0])}; {len(hidden)} of the run's "
                f"{subset} images are behind such a folder: give this account read permission"
            )
        if missing:
            raise RunDirError(
                f"{len(missing)} of the run's {subset} images are not under {data_root} "
                f"(first: {missing[0]}); give the data folder the run was trained on (--data)"
            )
        return samples


def split_mismatch(splits: Iterable[SavedSplit]) -> tuple[RunDir, RunDir] | None:
    """A run whose saved split differs from the first one's, with that first run; None where
    all of them hold the same split."""
    listed = list(splits)
    differing = next((s for s in listed[1:] if s.text != listed[0].text), None)
    return None if differing is None else (differing.run, listed[0].run)


def score_text(probability: float) -> str:
    """A score as written to a predictions file: exactly (shortest round-trip text). Rounded to
    six decimals, the confident scores of a strong model tied at 0.000000 or 1.000000, and the
    paired margins read back from these files disagreed with the AUCs computed before writing."""
    return repr(float(probability))


def write_predictions(
    path: Path, samples: list[Sample], probs: np.ndarray, tta_probs: np.ndarray | None = None
) -> None:
    """Write ``path,label,probability`` rows, one per scored sample, plus a ``tta_probability``
    column (the test-time-augmented score) when ``tta_probs`` are given, then each image's
    ``patient`` (what the split and the patient bootstrap grouped by)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns: list[Any] = [[s.path for s in samples], [s.label for s in samples], probs]
    header = ["path", "label", "probability"]
    if tta_probs is not None:
        columns.append(tta_probs)
        header.append("tta_probability")
    writer.writerow([*header, "patient"])
    for sample, (path_, label, *scores) in zip(samples, zip(*columns, strict=True), strict=True):
        writer.writerow([path_, label, *(score_text(p) for p in scores), sample.patient])
    write_text_atomically(path, buffer.getvalue())


@dataclass(frozen=True)
class PredictionRow:
    """One scored image of a predictions file written by :func:`write_predictions`."""

    path: str
    label: int
    probability: float
    tta_probability: float | None  # None in files written without test-time views
    patient: str | None  # None in files written before the patient was recorded


def read_predictions(path: Path) -> list[PredictionRow]:
    """The rows written by :func:`write_predictions`, in file order; RunDirError naming the
    file and line where a score is not a finite number (the files hold none: an edited or
    damaged one would choose thresholds below their target, or fail in scikit-learn)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for r in reader:
            row = PredictionRow(
                path=r["path"],
                label=int(r["label"]),
                probability=float(r["probability"]),
                tta_probability=float(r["tta_probability"]) if r.get("tta_probability") else None,
                patient=r.get("patient") or None,
            )
            scores = (row.probability, row.tta_probability or 0.0)
            if not all(np.isfinite(scores)):
                raise RunDirError(
                    f"{path}: line {reader.line_num}: a score that is not a finite number "
                    f"({r['probability']}, {r.get('tta_probability') or 'no TTA score'})"
                )
            rows.append(row)
    return rows


def write_shift_predictions(
    path: Path, samples: list[Sample], shifted: dict[str, list[np.ndarray]]
) -> None:
    """Write ``path,label,scenario,draw,probability`` rows: every image's score under every
    scenario and draw of the shift protocol."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "scenario", "draw", "probability"])
    for scenario, draws in shifted.items():
        for draw, probs in enumerate(draws):
            for sample, p in zip(samples, probs, strict=True):
                writer.writerow([sample.path, sample.label, scenario, draw, score_text(p)])
    write_text_atomically(path, buffer.getvalue())


def read_shift_predictions(path: Path, scenario: str) -> dict[str, list[float]]:
    """``{image path: [probability per draw]}`` of one scenario in a file written by
    :func:`write_shift_predictions`."""
    scores: dict[str, dict[int, float]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["scenario"] == scenario:
                scores.setdefault(r["path"], {})[int(r["draw"])] = float(r["probability"])
    return {image: [by_draw[d] for d in sorted(by_draw)] for image, by_draw in scores.items()}


def run_list(run_dirs: Sequence[str | Path], taker: str) -> list[RunDir]:
    """``run_dirs`` as runs; TypeError for one path given alone (a string was read character
    by character: ``/: not a finished run``), naming ``taker``, the function given it."""
    if isinstance(run_dirs, str | Path):
        raise TypeError(f"{taker} takes a list of run folders, not one path: [{str(run_dirs)!r}]")
    return [RunDir(Path(d)) for d in run_dirs]


def listed_twice(run_dirs: Sequence[Path]) -> Path | None:
    """The first of ``run_dirs`` that an earlier one already names (another spelling or a link
    to the same folder), else None."""
    resolved = [d.resolve() for d in run_dirs]
    return next((d for i, d in enumerate(run_dirs) if resolved[i] in resolved[:i]), None)


def weights_digest(run_dir: Path) -> str:
    """SHA-256 of the run's weights file (ties an exported model to the weights it came from);
    for an ensemble, of its members' digests in order."""
    run = RunDir(Path(run_dir))
    if run.read_meta().is_ensemble:
        members = "".join(weights_digest(member.root) for member in run.member_runs())
        return hashlib.sha256(members.encode()).hexdigest()
    return sha256_of(run.weights)


def gate_digest(run_dir: Path) -> str:
    """SHA-256 of the run's OOD model file and, for an ensemble, of its members' (a member's
    refit changes the ensemble's scores)."""
    run = RunDir(Path(run_dir))
    members = run.member_runs() if run.read_meta().is_ensemble else []
    parts = [ood_digest(run.root), *(gate_digest(member.root) for member in members)]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def ood_digest(run_dir: Path) -> str:
    """SHA-256 of the run's OOD model file (``none`` without one): ties an export to it."""
    ood = RunDir(Path(run_dir)).ood
    return sha256_of(ood) if ood.is_file() else "none"
