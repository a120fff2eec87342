"""Stream predictions over many files into CSV or JSON lines, resumable after an interruption."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from pneumolab.errors import ConfigError, ImageLoadError
from pneumolab.inference.predictor import Predictor, expand_paths

FIELDS = (
    "source",
    "probability",
    "label",
    "threshold",
    "in_scope",
    "ood_score",
    "ood_threshold",
    "reasons",
    "warnings",
    "error",
)
LIST_SEPARATOR = "; "
"""Joins a row's reasons and warnings in a CSV cell."""


@dataclass(frozen=True)
class BatchSummary:
    """How a streamed prediction went."""

    written: int
    already_done: int
    failed: int


def _format(out: Path) -> str:
    if out.suffix.lower() == ".csv":
        return "csv"
    if out.suffix.lower() in {".jsonl", ".ndjson"}:
        return "jsonl"
    raise ConfigError(f"{out}: output must end in .csv or .jsonl")


def _complete_rows(out: Path, fmt: str) -> list[dict]:
    """Rows already in ``out``; a last line cut off by an interruption is dropped from the file."""
    text = out.read_text()
    complete = text[: text.rfind("\n") + 1]
    if complete != text:
        out.write_text(complete)
    if fmt == "jsonl":
        return [json.loads(line) for line in complete.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(complete)))


def _line(row: dict, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps(row) + "\n"
    buffer = io.StringIO()
    cells = {k: LIST_SEPARATOR.join(v) if isinstance(v, list) else v for k, v in row.items()}
    csv.DictWriter(buffer, fieldnames=FIELDS).writerow(cells)
    return buffer.getvalue()


def predict_to_file(
    predictor: Predictor,
    paths: Sequence[str | Path],
    out: str | Path,
    batch_size: int = 32,
    progress: bool = True,
    workers: int | None = None,
) -> BatchSummary:
    """Predict every image under ``paths`` into ``out`` (.csv or .jsonl), one row per image, as it goes.

    Images whose row is already in ``out`` (without an error) are skipped, so re-running the same
    command resumes an interrupted job; failed images are retried. Rows are flushed per batch.
    One stream of :meth:`Predictor.predict_paths` (``workers`` decoding threads) serves the
    whole job, so decoding stays ahead of the model across batches.
    """
    out = Path(out)
    fmt = _format(out)
    rows = _complete_rows(out, fmt) if out.exists() else []
    done = {row["source"] for row in rows if not row.get("error")}
    files = expand_paths(paths)
    todo = [p for p in files if str(p) not in done]
    written = failed = 0
    with out.open("a", newline="") as f, Progress(disable=not progress, transient=True) as bar:
        if not rows and fmt == "csv":
            f.write(",".join(FIELDS) + "\r\n")
        task = bar.add_task("predicting", total=len(todo))
        results = predictor.predict_paths(todo, batch_size, workers)
        for path, result in zip(todo, results, strict=True):
            if isinstance(result, ImageLoadError):
                failed += 1
                row = dict.fromkeys(FIELDS) | {"source": str(path), "error": str(result)}
            else:
                row = result.to_dict() | {"error": ""}
            f.write(_line(row, fmt))
            written += 1
            if written % batch_size == 0 or written == len(todo):
                f.flush()
                bar.advance(task, (written - 1) % batch_size + 1)
    return BatchSummary(written=written, already_done=len(files) - len(todo), failed=failed)
