"""Stream predictions over many files into CSV or JSON lines, resumable after an interruption."""

from __future__ import annotations

import math
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from pneumolab.errors import ImageLoadError, OutputError
from pneumolab.inference.inputs import expand_paths, given_paths, source_key
from pneumolab.inference.manifest import ManifestImages
from pneumolab.inference.prediction import NOT_A_NUMBER, SUBTYPE_FIELDS, Prediction
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.results_file import (
    SCOPE_FIELDS,
    TEXT,
    Format,
    Producer,
    ResultRow,
    decode_text,
    encode,
    plan_resume,
    results_format,
    write_text_rows,
)
from pneumolab.outputs import results_file, writing_alone


@dataclass(frozen=True)
class BatchSummary:
    """How a streamed prediction went."""

    written: int
    already_done: int
    failed: int


def producer_of(predictor: Predictor) -> Producer:
    """What a predictor's rows will say produced them."""
    return Producer(
        predictor.model_version,
        predictor.threshold,
        predictor.backend_name,
        predictor.tta,
        predictor.scope_verdict,
    )


class RetriedSources(Container[str]):
    """The sources a job scores again: its images, and the folders under the paths it was given
    (an earlier run's error row of a folder it could not list, empty or unreadable then, is
    retried: a folder given gives its images or a new error row; an empty folder inside one
    given is walked past without a row, as a first run walks past it)."""

    def __init__(
        self, sources: Iterable[str | Path], paths: str | Path | Iterable[str | Path]
    ) -> None:
        self.sources = {str(source) for source in sources}
        given = given_paths(paths)  # as rows name them (a link's own name), and resolved
        self.roots = {*map(source_key, given), *(Path(os.path.realpath(p)) for p in given)}

    def __contains__(self, source: object) -> bool:
        if source in self.sources:
            return True
        folder = Path(str(source))
        try:  # a row about a folder this job cannot even look at is kept, not a refusal
            if not folder.is_dir():
                return False
        except (OSError, ValueError):
            return False
        return any(r == folder or r in folder.parents for r in self.roots)


def _resume(out: Path, fmt: Format, producer: Producer, retried: RetriedSources) -> set[str]:
    """The sources already done in ``out``; the file is rewritten (atomically) without the
    failed rows of the ``retried`` sources (never listed twice) and any row cut short by a
    kill. Failed rows of images this job does not score are kept."""
    text = decode_text(out.read_bytes())
    plan = plan_resume(text, fmt, producer, out, retried)
    if plan.rewrite:
        write_text_rows(out, fmt, plan.kept)
    return {row.source for row in plan.kept if not row.error}


def result_row(path: Path, prediction: Prediction, producer: Producer) -> ResultRow:
    """The row of a predicted image (its scope verdict and, for a three-class run, subtype
    included); an error row where the model's output is not a number (a row of NaN made the
    file unreadable to a resume)."""
    if not math.isfinite(prediction.probability):
        return ResultRow(str(path), None, None, producer, NOT_A_NUMBER)
    verdict = prediction.to_dict()
    scope = tuple(verdict[k] for k in SCOPE_FIELDS)
    subtype = tuple(verdict[k] for k in SUBTYPE_FIELDS)
    return ResultRow(
        str(path), prediction.probability, prediction.label, producer, "", scope, subtype
    )


def result_sources(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every image under ``paths``, each once, in order, as its :func:`source_key`."""
    return list(dict.fromkeys(map(source_key, expand_paths(paths))))


def each_image_once(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every image under ``paths`` as first spelt there, each once as a results file counts
    it (:func:`source_key`: ``a/x.png``, ``a/b/../x.png`` and its absolute path are one)."""
    first: dict[Path, Path] = {}
    for path in expand_paths(paths):
        first.setdefault(source_key(path), path)
    return list(first.values())


def check_not_an_input(out: Path, sources: Sequence[str | Path]) -> None:
    """OutputError where the results file ``out`` is one of the images (known by content,
    whatever their names: an X-ray may be called ``scan.csv``). ``sources`` as
    :func:`result_sources` gives them, folders resolved: only a linked name is resolved here."""
    target = os.path.realpath(out)
    for source in sources:
        if os.fspath(source) == target or (
            os.path.islink(source) and os.path.realpath(source) == target
        ):
            raise OutputError(f"{out}: is one of the images to predict; give --out another path")


def predict_to_file(
    predictor: Predictor,
    paths: str | Path | Sequence[str | Path],
    out: str | Path,
    batch_size: int = 32,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    manifest: ManifestImages | None = None,
) -> BatchSummary:
    """Predict every image under ``paths`` into ``out`` (.csv or .jsonl), one row per image, as it goes.

    Each row records its path (folder resolved, its own name kept) and what produced it (model version, threshold, backend,
    TTA). An existing ``out`` is resumed: images whose row is there are skipped, failed ones are
    retried; a file written with other settings, or not a results file at all, is refused
    untouched, unless ``overwrite`` (a run's own files are never written). Rows are flushed and
    synced per batch; a kill loses at most the rows of the batch being written. One stream of
    :meth:`Predictor.score_files` (``workers`` decoding threads) serves the whole job, so
    decoding stays ahead of the model across batches. Where ``manifest`` lists some of
    ``paths``, their error rows say where it lists them, and the images it lists that cannot
    be found are warned about once ``out`` is accepted (a refused job prints only its refusal).
    """
    out = results_file(out, overwrite)
    fmt = results_format(out)
    files = result_sources(paths)
    check_not_an_input(out, files)
    with writing_alone(out):
        producer = producer_of(predictor)
        resumed = out.exists() and not overwrite
        done = _resume(out, fmt, producer, RetriedSources(files, paths)) if resumed else set()
        if overwrite or not out.exists():
            write_text_rows(out, fmt, [])
        todo = [p for p in files if str(p) not in done]
        if manifest is not None:
            manifest.warn_missing()
        failed = _append_rows(predictor, todo, out, fmt, batch_size, progress, workers, manifest)
    return BatchSummary(written=len(todo), already_done=len(files) - len(todo), failed=failed)


def _append_rows(
    predictor: Predictor,
    todo: list[Path],
    out: Path,
    fmt: Format,
    batch_size: int,
    progress: bool,
    workers: int | None,
    manifest: ManifestImages | None,
) -> int:
    """Append one row per image of ``todo`` to ``out``, synced per batch, an error after where
    ``manifest`` lists its image; how many failed."""
    producer = producer_of(predictor)
    written = failed = 0
    bar_on_stderr = Progress(console=Console(stderr=True), disable=not progress, transient=True)
    with _kept_on_failure(out), open(out, "a", **TEXT) as f, bar_on_stderr as bar:
        task = bar.add_task("predicting", total=len(todo))
        # the files listed, each once: expanding their folders again paired rows with the
        # wrong images where a folder had gained files meanwhile
        for path, result, _ in predictor.score_files(todo, batch_size, workers):
            if isinstance(result, ImageLoadError):
                row = ResultRow(str(path), None, None, producer, str(result))
            else:
                row = result_row(path, result, producer)
            if row.error and manifest is not None:
                row = replace(row, error=manifest.noted(path, row.error))
            failed += bool(row.error)
            f.write(encode(row, fmt))
            written += 1
            if written % batch_size == 0 or written == len(todo):
                f.flush()
                os.fsync(f.fileno())
                bar.advance(task, (written - 1) % batch_size + 1)
    return failed


@contextmanager
def _kept_on_failure(out: Path) -> Iterator[None]:
    """An OSError while appending (a full disk: it named no file) as an OutputError naming
    ``out`` and saying that the rows written so far stay, for the next run to resume."""
    try:
        yield
    except OSError as exc:
        raise OutputError(
            f"{out}: {exc.strerror or exc}; the rows written so far are kept: run the command "
            "again to continue"
        ) from exc
