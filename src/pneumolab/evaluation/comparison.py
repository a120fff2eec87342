"""Compare runs side by side: one evaluation per run, a results table (CSV and Markdown), a bar
chart and one confusion matrix per model."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pneumolab.choices import BackendName, Split
from pneumolab.errors import DataLayoutError, OutputError, RunDirError
from pneumolab.evaluation.bootstrap import interval_text
from pneumolab.evaluation.figures import confusion_matrix_figure, model_bars_figure, save_figure
from pneumolab.evaluation.metrics import format_metric
from pneumolab.evaluation.scoring import Evaluation, compute_evaluation
from pneumolab.evaluation.selection import (
    ImageScores,
    evaluation_scores,
    margins_between,
    warn_untold,
)
from pneumolab.evaluation.speed import ms_per_image
from pneumolab.evaluation.writer import write_evaluation
from pneumolab.files import staged_files
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.inference.torch_scoring import default_device
from pneumolab.outputs import check_output, working_in
from pneumolab.run import RunDir, SavedSplit, listed_twice, run_list, split_mismatch
from pneumolab.text import markdown_cell, spreadsheet_safe

log = logging.getLogger(__name__)

BAR_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
SPEED_IMAGES = 32


@dataclass
class ComparisonRow:
    """One model's line of the results table (metrics at its stored default threshold)."""

    name: str
    model: str
    strategy: str
    image_size: int
    n: int
    """Images scored (unreadable ones, logged by name, are left out)."""
    accuracy: float
    sensitivity: float
    specificity: float
    roc_auc: float
    roc_auc_ci95: str
    """Its 95% interval as tables print it, with the resamples it rests on where some were left
    out (:func:`~pneumolab.evaluation.bootstrap.interval_text`)."""
    threshold: float
    parameters: int | None
    train_seconds: float | None
    cpu_ms_per_image: float
    worst_roc_auc: float | None
    worst_specificity: float | None
    shift_roc_auc: float | None
    shift_specificity: float | None
    shift_sensitivity: float | None
    official_val_accuracy: float | None
    confusion_matrix: list[list[int]]
    run_dir: str
    backend: str = "torch"
    """What scored the model (and timed ``cpu_ms_per_image``): ``torch`` or ``onnx``."""


def compare_run(
    name: str,
    run_dir: str | Path,
    data_dir: str | Path,
    split: Split,
    robustness: bool = False,
    shift: bool = False,
    cache: ScoreCache | None = None,
    backend: BackendName = "torch",
) -> ComparisonRow:
    """Evaluate one run on ``split`` (with ``robustness``: also under the perturbations, for the
    worst-case columns; with ``shift``: under the shift protocol's compound scenario) and time
    its CPU inference (a batch of 32 of the split's images, ``cache`` bypassed). ``cache``,
    shared by the runs of one comparison, spares an ensemble the passes its members made.
    ``backend`` other than ``torch`` scores (and times) each network's exported file
    (``model.onnx``, ``model.int8.onnx``, ``model.openvino.xml``)."""
    predictor = Predictor.from_run(run_dir, device=default_device(), backend=backend, cache=cache)
    return compare_predictor(name, predictor, data_dir, split, robustness, shift, cache)


def compare_predictor(
    name: str,
    predictor: Predictor,
    data_dir: str | Path,
    split: Split,
    robustness: bool = False,
    shift: bool = False,
    cache: ScoreCache | None = None,
) -> ComparisonRow:
    """:func:`compare_run` for a run already loaded (``Predictor.from_run`` on
    :func:`default_device`, with the same ``cache``)."""
    evaluation = _evaluated(name, predictor, data_dir, split, robustness, shift)
    return _row(name, evaluation, cache)


def _evaluated(
    name: str,
    predictor: Predictor,
    data_dir: str | Path,
    split: Split,
    robustness: bool,
    shift: bool,
    saved_split: SavedSplit | None = None,
) -> Evaluation:
    """The run's evaluation on ``split``, written into its ``eval/<split>/``; DataLayoutError
    where it has no ROC AUC (a comparison ranks by it). ``saved_split``: its split as read
    already (:meth:`RunDir.saved_split`)."""
    if predictor.run_dir is None:
        raise ValueError("compare_predictor needs a predictor loaded with Predictor.from_run")
    evaluation = compute_evaluation(predictor, data_dir, split, robustness, shift, saved_split)
    if math.isnan(evaluation.metrics.roc_auc):
        raise DataLayoutError(
            f"{name}: the {split} images that could be read are all of one class; a comparison "
            "ranks models by ROC AUC, which needs both (`pneumolab evaluate` gives one run's "
            "sensitivity or specificity there)"
        )
    write_evaluation(evaluation)
    return evaluation


def _row(name: str, evaluation: Evaluation, cache: ScoreCache | None) -> ComparisonRow:
    """The evaluation's line of the table, with the run's CPU time per image (``cache``
    bypassed: see :func:`compare_run`)."""
    predictor, run, metrics = evaluation.predictor, evaluation.run, evaluation.metrics
    backend, device = predictor.backend_name, default_device()
    timed = predictor if device == "cpu" or backend != "torch" else Predictor.from_run(run.root)
    with cache.bypassed() if cache else nullcontext():
        cpu_ms = ms_per_image(timed.backend, evaluation.decoded.pixels[:SPEED_IMAGES])
    meta = predictor.meta  # what from_run read from meta.json
    worst, shifted = metrics.robustness_summary, metrics.shift_summary
    official = meta.official_val_metrics
    return ComparisonRow(
        name=name,
        model=meta.model,
        strategy=meta.strategy,
        image_size=meta.image_size,
        n=metrics.n,
        accuracy=metrics.accuracy,
        sensitivity=metrics.sensitivity,
        specificity=metrics.specificity,
        roc_auc=metrics.roc_auc,
        roc_auc_ci95=interval_text(metrics, "roc_auc"),
        threshold=metrics.threshold,
        parameters=meta.parameters,
        train_seconds=meta.train_seconds,
        cpu_ms_per_image=round(cpu_ms, 2),
        worst_roc_auc=None if worst is None else worst.worst_roc_auc,
        worst_specificity=None if worst is None else worst.worst_specificity,
        shift_roc_auc=None if shifted is None else shifted.compound_roc_auc,
        shift_specificity=None if shifted is None else shifted.compound_specificity,
        shift_sensitivity=None if shifted is None else shifted.compound_sensitivity,
        official_val_accuracy=None if official is None else official.accuracy,
        confusion_matrix=metrics.confusion_matrix,
        run_dir=str(run.root),
        backend=backend,
    )


def _markdown(
    rows: Sequence[ComparisonRow], split: str, notes: dict[str, str], caveat: str = ""
) -> str:
    robust = any(r.worst_roc_auc is not None for r in rows)
    shifted = any(r.shift_roc_auc is not None for r in rows)
    columns = [
        "model", "architecture", "strategy", "size", "n", "accuracy", "sensitivity", "specificity",
        "ROC AUC [95% CI]", *(["worst AUC / specificity (perturbed)"] if robust else []),
        *(["AUC / sensitivity / specificity (compound shift)"] if shifted else []),
        "official val/", "params", "train s", "CPU ms/img",
    ]  # fmt: skip
    backends = " and ".join(sorted({r.backend for r in rows})) or "torch"
    lines = [
        f"Results on the {split} split, at each model's default threshold (chosen on its "
        "validation split). Official val/: accuracy on the dataset's 16-image val folder "
        f"(reported, not used). Scored and timed with the {backends} backend.",
        *(["", f"**Caution: {caveat}.**"] if caveat else []),
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
    ]
    for r in rows:
        cells = [
            markdown_cell(r.name), f"`{r.model}`", r.strategy, str(r.image_size), str(r.n), f"{r.accuracy:.4f}",
            f"{r.sensitivity:.4f}", f"{r.specificity:.4f}", f"{r.roc_auc:.4f} [{r.roc_auc_ci95}]",
            *([f"{format_metric(r.worst_roc_auc)} / {format_metric(r.worst_specificity)}"] if robust else []),
            *([" / ".join(map(format_metric, (r.shift_roc_auc, r.shift_sensitivity, r.shift_specificity)))] if shifted else []),
            format_metric(r.official_val_accuracy),
            f"{r.parameters / 1e6:.2f}M" if r.parameters else "—",
            "—" if r.train_seconds is None else f"{r.train_seconds:.0f}",
            f"{r.cpu_ms_per_image:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    empty = " |" * (len(columns) - 3)
    lines += [
        f"| {markdown_cell(name)} | — | not run: {markdown_cell(reason)} |{empty}"
        for name, reason in notes.items()
    ]
    return "\n".join(lines) + "\n"


SPLITS_DIFFER = (
    "the runs were validated on different splits (split.csv differs): their validation "
    "figures are not directly comparable"
)
MARGINS = "margins.md"
"""The paired margins of a comparison, beside its table."""
FIGURES = "confusion"
"""The folder of a comparison's confusion matrices, ``<name>.png`` per model."""


def comparison_files(out_dir: Path) -> dict[str, Path]:
    """Where :func:`write_comparison` writes its table (CSV, Markdown) and chart."""
    return {
        "csv": out_dir / "results.csv",
        "markdown": out_dir / "results.md",
        "chart": out_dir / "results.png",
    }


def _earlier_files(out_dir: Path) -> list[Path]:
    """The files of an earlier comparison in ``out_dir`` (results.*, margins.md,
    ``confusion/*.png``), links to nowhere included."""
    tables = [*comparison_files(out_dir).values(), out_dir / MARGINS]
    figures = [path for path in sorted((out_dir / FIGURES).glob("*.png")) if not path.is_dir()]
    return [path for path in tables if path.exists() or path.is_symlink()] + figures


def write_comparison(
    rows: Sequence[ComparisonRow],
    out_dir: str | Path,
    split: str,
    notes: dict[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    remove_stale: bool = True,
    caveat: str = "",
) -> dict[str, Path]:
    """Write ``confusion/<name>.png``, ``results.csv``, ``results.png``, the ``extra`` text
    files (name -> text) and ``results.md`` as one set (:func:`~pneumolab.files.staged_files`):
    all are drawn before any is moved in, and then replace the earlier comparison there; a
    stop while drawing leaves the earlier set, or none, untouched. With ``remove_stale`` the
    other figures in ``confusion/`` (models an earlier table had and this one has not) are
    removed with it; else they are kept, named in a warning. ``notes`` (name -> reason) lists
    models that could not be run; a ``caveat`` heads the table."""
    out, extra = Path(out_dir), extra or {}
    paths = comparison_files(out)
    figures = {f"{FIGURES}/{r.name}.png": r for r in rows}
    earlier = {path.relative_to(out).as_posix() for path in _earlier_files(out)}
    stale = sorted(name for name in earlier - set(figures) if name.startswith(f"{FIGURES}/"))
    owned = {path.name for path in paths.values()} | set(extra) | set(figures)
    owned |= set(stale) if remove_stale else set()
    with staged_files(out, owned, last=paths["markdown"].name) as staging:
        (staging / FIGURES).mkdir()
        for name, r in figures.items():
            figure = confusion_matrix_figure(r.confusion_matrix, f"{r.name} — {split}")
            save_figure(figure, staging / name)
        with (staging / paths["csv"].name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*ComparisonRow.__dataclass_fields__, "status"])
            writer.writeheader()
            writer.writerows(
                asdict(r) | {"name": spreadsheet_safe(r.name), "status": "ok"} for r in rows
            )
            writer.writerows(
                {"name": spreadsheet_safe(name), "status": f"not run: {why}"}
                for name, why in (notes or {}).items()
            )
        values: dict[str, list[Any]] = {m: [getattr(r, m) for r in rows] for m in BAR_METRICS}
        chart = model_bars_figure([r.name for r in rows], values, f"{split} split")
        save_figure(chart, staging / paths["chart"].name)
        for name, text in extra.items():
            (staging / name).write_text(text, encoding="utf-8")
        markdown = _markdown(rows, split, notes or {}, caveat)
        (staging / paths["markdown"].name).write_text(markdown, encoding="utf-8")
    for name in stale:
        if remove_stale:
            log.info("removed %s: its model is not in the new table", out / name)
        else:
            log.warning(
                "%s: not a model of this table, left as it is (--overwrite removes it)", out / name
            )
    return paths | {Path(name).stem: out / name for name in extra}


def _unique_names(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or where runs share it, the fewest trailing folders of their paths
    that tell them apart, joined by ``-`` (``flagship-runs-xception``: it names files too; a run
    whose name is its own keeps it). Whole paths that still read alike once joined (``a-b/x``
    and ``a/b-x``) are told apart by ``-2``, ``-3``... in the order given (``run_dir`` in
    results.csv says which is which); RunDirError when one run is given twice."""
    twice = listed_twice(run_dirs)
    if twice is not None:
        raise RunDirError(f"{twice}: the same run is given twice")
    resolved = [d.resolve() for d in run_dirs]
    folders = [d.parts[1:] for d in resolved]  # without the root
    depths = [1] * len(folders)
    while True:
        names = ["-".join(parts[-depth:]) for parts, depth in zip(folders, depths, strict=True)]
        clashing = [
            i
            for i, name in enumerate(names)
            if names.count(name) > 1 and depths[i] < len(folders[i])
        ]
        if not clashing:
            return _numbered_apart(names)
        for i in clashing:
            depths[i] += 1


def _numbered_apart(names: list[str]) -> list[str]:
    """``names`` with each repeat of an earlier one given the first free ``-N`` (N >= 2)."""
    taken: set[str] = set(names)
    unique: list[str] = []
    for name in names:
        if name in unique:
            n = 2
            while f"{name}-{n}" in taken:
                n += 1
            name = f"{name}-{n}"
            taken.add(name)
        unique.append(name)
    return unique


def check_comparison(
    run_dirs: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False
) -> list[str]:
    """What :func:`compare_runs` refuses before it scores anything (without ``overwrite``, an
    earlier comparison's table, chart or margins in ``out_dir``, or a confusion figure of this
    one's name; a run given twice), for callers that prepare the runs first (an export); the
    runs' names in the table. A run directory as ``out_dir`` is refused (its tables and
    confusion figures would sit among the run's files)."""
    out = Path(out_dir)
    names = _unique_names([run.root for run in run_list(run_dirs, "compare_runs")])
    if RunDir(out).looks_like_run:
        raise OutputError(f"{out_dir}: is a run directory; give the comparison a folder of its own")
    figures = [out / FIGURES / f"{name}.png" for name in names]
    earlier = [p for p in _earlier_files(out) if p.parent != out / FIGURES or p in figures]
    if earlier and not overwrite:
        raise OutputError(_earlier_refused(out, earlier))
    for path in [*comparison_files(out).values(), out / MARGINS, *figures]:
        check_output(path, overwrite=True)  # a folder in its place, a run's file, no permission
    return names


def _earlier_refused(out: Path, earlier: Sequence[Path]) -> str:
    """Why ``out``, holding ``earlier`` (:func:`_earlier_files`), is refused without
    --overwrite: a finished comparison (it has results.md), or files of its names."""
    shown = ", ".join(path.relative_to(out).as_posix() for path in earlier[:3])
    more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
    what = (
        f"an earlier comparison ({shown}{more})"
        if comparison_files(out)["markdown"] in earlier
        else f"files this comparison would write, without a results.md (a comparison that "
        f"did not finish, or someone's own files: {shown}{more})"
    )
    return (
        f"{out}: holds {what}; pass --overwrite to replace them as one set (the tables, "
        f"{MARGINS} and every figure in {FIGURES}/), or give --out another folder"
    )


def compare_runs(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    split: Split,
    out_dir: str | Path,
    robustness: bool = False,
    shift: bool = False,
    overwrite: bool = False,
    backend: BackendName = "torch",
) -> tuple[list[ComparisonRow], dict[str, Path]]:
    """Evaluate every run on ``split`` and write the comparison into ``out_dir`` (with
    ``margins.md``: the paired AUC margin of each criterion's leader over the others, clean and,
    with ``shift``, compound); an earlier comparison there (:func:`check_comparison`) is
    refused unless ``overwrite``, and then replaced whole once the new one is drawn (other
    files in ``out_dir`` are kept); ``out_dir`` is locked while the comparison runs (another
    compare into it is refused).
    ``backend``: see :func:`compare_run`."""
    runs = run_list(run_dirs, "compare_runs")  # before out_dir is made
    with working_in(Path(out_dir), "comparing"):  # two compares mixed their files
        return _compare_into(
            runs, data_dir, split, Path(out_dir), robustness, shift, overwrite, backend
        )


def _compare_into(
    runs: list[RunDir],
    data_dir: str | Path,
    split: Split,
    out_dir: Path,
    robustness: bool,
    shift: bool,
    overwrite: bool,
    backend: BackendName,
) -> tuple[list[ComparisonRow], dict[str, Path]]:
    """:func:`compare_runs`'s work, once ``out_dir`` is this process's. Each run's evaluation
    is held only until its row and per-image scores (what the margins pair) are taken."""
    names = check_comparison([run.root for run in runs], out_dir, overwrite)
    cache = ScoreCache()
    predictors = [  # all load before any is scored: an unfinished run or a missing or stale
        Predictor.from_run(run.root, default_device(), backend, cache=cache)  # export fails first
        for run in runs
    ]
    # each run's split.csv read once: compared, then its validation images taken from it
    saved = [run.saved_split() if split == "val" else None for run in runs]
    mismatch = split_mismatch(filter(None, saved)) is not None
    caveat = SPLITS_DIFFER if mismatch else ""  # in results.md too: the console's line is gone
    if caveat:
        log.warning(caveat)
    criteria = ("roc_auc", "shift_roc_auc") if shift else ("roc_auc",)
    rows: list[ComparisonRow] = []
    scores: dict[str, dict[str, dict[str, ImageScores]]] = {c: {} for c in criteria}
    for name, predictor, read in zip(names, predictors, saved, strict=True):
        evaluation = _evaluated(name, predictor, data_dir, split, robustness, shift, read)
        rows.append(_row(name, evaluation, cache))
        for criterion in criteria:
            scores[criterion][name] = evaluation_scores(evaluation, criterion)
    cache.log_use()
    margins = _margins_text(rows, scores, split)
    outputs = write_comparison(
        rows, out_dir, split, extra={MARGINS: margins}, remove_stale=overwrite, caveat=caveat
    )
    return rows, outputs


def leading_model(
    rows: Sequence[ComparisonRow], criterion: str, sensitivity_floor: float | None = None
) -> str:
    """The name of the row highest by ``criterion`` (ties: specificity); a row without that
    figure (None or NaN: one its split cannot define) ranks last, wherever it is listed.

    With ``sensitivity_floor``, ``shift_specificity`` ranks first the rows whose sensitivity
    under the compound shift meets the floor (a model that calls nearly every shifted image
    NORMAL has the best shift specificity and misses the pneumonia); rows below it follow,
    highest shift sensitivity first."""

    def known(value: float | None) -> float:
        # rounded: one exact AUC (153/200) came out of scikit-learn as 0.765 and as
        # 0.7649999999999999, and that last bit, not specificity, broke the tie
        return -math.inf if value is None or math.isnan(value) else round(value, 9)

    def rank(row: ComparisonRow) -> tuple[bool, float, float]:
        if criterion == "shift_specificity" and sensitivity_floor is not None:
            sensitivity = known(row.shift_sensitivity)
            if sensitivity < sensitivity_floor:
                return (False, sensitivity, known(row.specificity))
        return (True, known(getattr(row, criterion)), known(row.specificity))

    return max(rows, key=rank).name


def _margins_text(
    rows: Sequence[ComparisonRow],
    scores: Mapping[str, Mapping[str, Mapping[str, ImageScores]]],
    split: str,
) -> str:
    """``margins.md``: for each criterion of ``scores`` (criterion -> model name -> its
    per-image scores), its leader's paired AUC margin over the other runs."""
    sections = []
    for criterion, scored in scores.items():
        leader = leading_model(rows, criterion)
        margins = margins_between(scored, leader, criterion)
        warn_untold(margins, f"the {split} split")
        sections.append(margins.markdown(split))
    return "# Margins\n\n" + "\n".join(sections)
