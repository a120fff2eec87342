"""The results file of ``pneumolab predict --out``: CSV or JSON lines, one row per image.

Every row names what produced it (``model_version``, ``threshold``, ``backend``, ``tta``), so a
file says which model scored it, and a resumed job can refuse a file that another run, threshold,
backend or TTA setting wrote. Rows end in ``\\r\\n`` (CSV) or ``\\n`` (JSON lines); only text after
the last row end can be a write cut short by a kill, and it is dropped. Anything else that is not
a valid row (another file's header, a non-JSON line) makes the whole file refused, untouched.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pneumolab.errors import ConfigError, OutputError
from pneumolab.files import atomic_write
from pneumolab.inference.prediction import (
    NOT_A_NUMBER,
    OUT_OF_SCOPE_LABEL,
    SUBTYPE_FIELDS,
    Prediction,
)

SCOPE_FIELDS = ("in_scope", "ood_score", "ood_threshold", "reasons", "warnings")
"""The scope gate's verdict on an image (:class:`~pneumolab.inference.prediction.Prediction`)."""
FIELDS = (
    "source",
    "probability",
    "label",
    "threshold",
    *SCOPE_FIELDS,
    "model_version",
    "backend",
    "tta",
    "error",
    *SUBTYPE_FIELDS,
)
"""A results file's columns: a three-class run's subtype and class probabilities last (empty
for a binary run), so that the columns of before stay where they were."""
LEGACY_FIELDS = FIELDS[: FIELDS.index("error") + 1]
"""The columns of the files written before 2026-12-07, without the subtype columns: read (their
rows with no subtype), and rewritten with :data:`FIELDS` when resumed."""
PRODUCER_FIELDS = ("model_version", "backend", "tta")
LINE_FIELDS = tuple(name for name in FIELDS if name not in PRODUCER_FIELDS)
"""The keys of every ``predict --json`` line, in order: a results file's columns but those that
say what produced the rows (``model_version`` digests the weights: a one-image call would read
them all for it)."""
LIST_SEPARATOR = "; "
"""Joins a row's reasons and warnings in a CSV cell; an item's own ``"; "`` (a DICOM tag's
text) is written ``", "`` there, so that the cell splits back into its items."""
BOOLEAN_TEXT = {True: "true", False: "false"}
"""How CSV rows write ``tta`` and ``in_scope``."""
TEXT_BOOLEAN = {text: value for value, text in BOOLEAN_TEXT.items()}
Format = Literal["csv", "jsonl"]
TERMINATOR = {"csv": "\r\n", "jsonl": "\n"}


@dataclass(frozen=True)
class Producer:
    """What scored the rows: the model (version + weights digest), its threshold, backend, TTA,
    and whether an out-of-scope image is labelled ``OUT_OF_SCOPE`` (else its class,
    ``--keep-label``: no column, a row shows it where its image is out of scope)."""

    model_version: str
    threshold: float
    backend: str
    tta: bool
    scope_verdict: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class ResultRow:
    """One image's row: a probability and label, or the error that stopped it."""

    source: str
    probability: float | None
    label: str | None
    producer: Producer
    error: str = ""
    scope: tuple[Any, ...] = (None,) * len(SCOPE_FIELDS)
    """The values of SCOPE_FIELDS, as the prediction gave them (None: not known)."""
    subtype: tuple[Any, ...] = (None,) * len(SUBTYPE_FIELDS)
    """The values of SUBTYPE_FIELDS, as the prediction gave them (None: not given)."""

    def scope_verdict(self) -> bool | None:
        """Whether this row's out-of-scope image was labelled ``OUT_OF_SCOPE`` (True) or by its
        class (False); None where the row does not tell (in scope, or failed)."""
        if self.label == OUT_OF_SCOPE_LABEL:
            return True
        out_of_scope = self.scope[0] is False
        return False if out_of_scope and self.label is not None else None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ResultRow:
        """The row of a mapping in :meth:`record`'s form (validated by the caller)."""
        producer = Producer(
            record["model_version"], record["threshold"], record["backend"], record["tta"]
        )
        scope = tuple(record[k] for k in SCOPE_FIELDS)
        subtype = tuple(record.get(k) for k in SUBTYPE_FIELDS)  # absent from LEGACY_FIELDS
        return cls(
            record["source"],
            record["probability"],
            record["label"],
            producer,
            record["error"],
            scope,
            subtype,
        )

    def record(self) -> dict[str, Any]:
        """The row as a mapping in column order (the producer flattened into it)."""
        p = self.producer
        return {
            "source": self.source,
            "probability": self.probability,
            "label": self.label,
            "threshold": p.threshold,
            **dict(zip(SCOPE_FIELDS, self.scope, strict=True)),
            "model_version": p.model_version,
            "backend": p.backend,
            "tta": p.tta,
            "error": self.error,
            **dict(zip(SUBTYPE_FIELDS, self.subtype, strict=True)),
        }


def json_line(source: str, outcome: Prediction | Exception, threshold: float) -> dict[str, Any]:
    """An image's ``predict --json`` line: :data:`LINE_FIELDS` for every image, valued as a
    results file's JSON lines are: ``error`` empty for a prediction; for an image that failed
    (unreadable, or a score that is not a number) its reason, the prediction's values null."""
    if isinstance(outcome, Prediction) and math.isfinite(outcome.probability):
        fields = outcome.to_dict() | {"error": ""}
        return {name: fields[name] for name in LINE_FIELDS}
    error = NOT_A_NUMBER if isinstance(outcome, Prediction) else str(outcome)
    return dict.fromkeys(LINE_FIELDS) | {"source": source, "threshold": threshold, "error": error}


class NotAResultsFile(OutputError):
    """The file at ``--out`` is something else than a pneumolab results file."""


def results_format(path: Path) -> Format:
    """``csv`` or ``jsonl`` from the file name; ConfigError otherwise."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    ray = "; .parquet with --engine ray" if suffix == ".parquet" else ""
    raise ConfigError(f"{path}: output must end in .csv or .jsonl{ray}")


TEXT: dict[str, Any] = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
"""How results files are opened: UTF-8, a path's raw non-UTF-8 bytes kept as they are."""


def write_text_rows(path: Path, fmt: Format, rows: Iterable[ResultRow]) -> None:
    """Write ``rows`` as the whole text results file ``path`` (header included), atomically."""
    with atomic_write(path, **TEXT) as f:
        f.write(header(fmt) + "".join(encode(row, fmt) for row in rows))


def header(fmt: Format) -> str:
    """What a new file starts with: the CSV column names, nothing for JSON lines."""
    return ",".join(FIELDS) + TERMINATOR["csv"] if fmt == "csv" else ""


def list_cell(items: Iterable[str]) -> str:
    """A CSV cell of ``items`` that splits back into them at :data:`LIST_SEPARATOR`."""
    return LIST_SEPARATOR.join(item.replace(LIST_SEPARATOR, ", ") for item in items)


def encode(row: ResultRow, fmt: Format) -> str:
    """One row as a complete line (terminator included)."""
    record = row.record()
    if fmt == "jsonl":
        return json.dumps(record) + TERMINATOR["jsonl"]
    record |= {k: BOOLEAN_TEXT[v] for k, v in record.items() if isinstance(v, bool)}
    record |= {k: list_cell(v) for k, v in record.items() if isinstance(v, list)}
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator=TERMINATOR["csv"]).writerow(record)
    return buffer.getvalue()


@dataclass(frozen=True)
class ParsedResults:
    """The valid rows of a results file, and whether it ended in a torn (cut-off) row."""

    rows: list[ResultRow]
    torn: bool
    legacy: bool = False
    """Written with :data:`LEGACY_FIELDS` (before the subtype columns)."""


LEFT = "left untouched — choose another --out, or pass --overwrite to start it again"
NOT_RESULTS = (
    f"not a pneumolab results file (expected the columns {', '.join(FIELDS)}); "
    "left untouched — choose another --out, or pass --overwrite to replace it"
)


def decode_text(data: bytes) -> str:
    """A results file's bytes as text; bytes that are not UTF-8 (a path's raw bytes, a write
    cut inside a character) come back as the same bytes when written with ``surrogateescape``."""
    return data.decode("utf-8", errors="surrogateescape")


def parse(text: str, fmt: Format, source: Path) -> ParsedResults:
    """The rows of a results file's ``text``; NotAResultsFile naming ``source`` and the line."""
    end = text.rfind(TERMINATOR[fmt])
    complete = text[: end + len(TERMINATOR[fmt])] if end >= 0 else ""
    tail = text[len(complete) :]
    if not complete and tail and not _could_start_a_file(tail, fmt):
        raise NotAResultsFile(f"{source}: {NOT_RESULTS}")
    if fmt == "jsonl":
        rows, legacy = _parse_jsonl(complete, source)
        return ParsedResults(rows, torn=bool(tail), legacy=legacy)
    rows, torn, legacy = _parse_csv(complete, source)
    return ParsedResults(rows, torn=torn or bool(tail), legacy=legacy)


def _could_start_a_file(tail: str, fmt: Format) -> bool:
    """Whether ``tail`` (no complete line) is what a killed first write would leave."""
    start = header("csv") if fmt == "csv" else '{"source": '
    return start.startswith(tail) or tail.startswith(start)


def _csv_records(text: str, source: Path) -> tuple[list[list[str]], bool]:
    """The records of ``text``, and whether the last one was cut inside a quoted field (a path
    holding a line break, cut by a kill right after it)."""
    records: list[list[str]] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records.extend(reader)
    except csv.Error as exc:
        if "unexpected end of data" not in str(exc) or not records:
            raise NotAResultsFile(f"{source}: {NOT_RESULTS} ({exc})") from None
        return records, True
    return records, False


def _parse_csv(text: str, source: Path) -> tuple[list[ResultRow], bool, bool]:
    """The rows, whether the last was cut, whether the file has :data:`LEGACY_FIELDS`."""
    if not text:
        return [], False, False
    records, torn = _csv_records(text, source)
    columns = tuple(records[0])
    if columns not in (FIELDS, LEGACY_FIELDS):
        raise NotAResultsFile(f"{source}: {NOT_RESULTS}")
    rows = []
    for number, values in enumerate(records[1:], start=2):
        where = f"{source}: row {number}"
        if len(values) != len(columns):
            raise NotAResultsFile(f"{where} has {len(values)} columns; {NOT_RESULTS}")
        record: dict[str, Any] = dict(zip(columns, values, strict=True))
        for key in ("tta", "in_scope"):  # in_scope was written True / False until 2026-12-06
            record[key] = TEXT_BOOLEAN.get(record[key].lower(), record[key] or None)
        for key in ("probability", "label", *SCOPE_FIELDS, *SUBTYPE_FIELDS):
            record[key] = None if record.get(key, "") == "" else record[key]
        rows.append(_row(record, where, number_text=True))
    return rows, torn, columns == LEGACY_FIELDS


def _parse_jsonl(text: str, source: Path) -> tuple[list[ResultRow], bool]:
    """The rows, and whether a line has :data:`LEGACY_FIELDS`."""
    rows, legacy = [], False
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        where = f"{source}: line {number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise NotAResultsFile(f"{where} is not JSON; {NOT_RESULTS}") from None
        if not isinstance(record, dict) or tuple(record) not in (FIELDS, LEGACY_FIELDS):
            raise NotAResultsFile(f"{where}: {NOT_RESULTS}")
        legacy = legacy or tuple(record) == LEGACY_FIELDS
        rows.append(_row(record, where, number_text=False))
    return rows, legacy


def _number(value: Any, text: bool) -> float:
    number = float(value) if text else value
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise ValueError(value)
    return float(number)


def _row(record: dict[str, Any], where: str, number_text: bool) -> ResultRow:
    """A validated row; NotAResultsFile saying what is wrong with it."""
    try:
        probability = record["probability"]
        if probability is not None:
            probability = _number(probability, number_text)
        threshold = _number(record["threshold"], number_text)
        if not isinstance(record["tta"], bool):
            raise ValueError(record["tta"])
        strings = [record[k] for k in ("source", "model_version", "backend", "error")]
        if not all(isinstance(s, str) for s in strings) or not record["source"]:
            raise ValueError(strings)
        if (probability is None) == (not record["error"]):
            raise ValueError("a row has either a probability or an error")
        if probability is not None and not isinstance(record["label"], str):
            raise ValueError(record["label"])
        subtype, *class_probs = (record.get(k) for k in SUBTYPE_FIELDS)
        if subtype is not None and not isinstance(subtype, str):
            raise ValueError(subtype)
        numbers = [None if p is None else _number(p, number_text) for p in class_probs]
    except ValueError as exc:
        raise NotAResultsFile(f"{where}: invalid value ({exc}); {NOT_RESULTS}") from None
    read = dict(zip(SUBTYPE_FIELDS, [subtype, *numbers], strict=True))
    return ResultRow.from_record(
        record | read | {"probability": probability, "threshold": threshold}
    )


def check_producer(rows: list[ResultRow], producer: Producer, source: Path) -> None:
    """OutputError when a row of ``source`` was produced otherwise than ``producer`` would
    (its out-of-scope labels included: :func:`check_scope_labels`)."""
    other = next((row.producer for row in rows if row.producer != producer), None)
    if other is None:
        check_scope_labels(rows, producer, source)
        return
    names = [
        n
        for n in ("model_version", "threshold", "backend", "tta")
        if getattr(other, n) != getattr(producer, n)
    ]
    theirs = ", ".join(f"{n} {getattr(other, n)!r}" for n in names)
    ours = ", ".join(f"{n} {getattr(producer, n)!r}" for n in names)
    raise OutputError(
        f"{source}: its rows were written with {theirs}, but this command has {ours}; {LEFT}"
    )


def check_scope_labels(rows: list[ResultRow], producer: Producer, source: Path) -> None:
    """OutputError when ``source`` labels out-of-scope images otherwise than ``producer``
    would (``--keep-label`` on one side only), so that one file's labels mean one thing."""
    if any(row.scope_verdict() not in (None, producer.scope_verdict) for row in rows):
        labels = {True: "OUT_OF_SCOPE", False: "by their class (--keep-label)"}
        raise OutputError(
            f"{source}: its out-of-scope images are labelled {labels[not producer.scope_verdict]}, "
            f"but this command labels them {labels[producer.scope_verdict]}; {LEFT}"
        )


@dataclass(frozen=True)
class ResumePlan:
    """What resuming a results file keeps, and whether the file must be rewritten to just that
    (header + kept rows: a torn last row or failed rows to retry are dropped, a file of
    :data:`LEGACY_FIELDS` gets every column)."""

    kept: list[ResultRow]
    rewrite: bool


def plan_resume(
    text: str, fmt: Format, producer: Producer, source: Path, retried: Container[str]
) -> ResumePlan:
    """How to resume the results file ``source`` holding ``text`` with ``producer``'s rows,
    for a job that scores ``retried`` (sources) unless a row of theirs succeeded already;
    NotAResultsFile or OutputError (another producer) when it must not be touched."""
    parsed = parse(text, fmt, source)
    check_producer(parsed.rows, producer, source)
    kept = resumable_rows(parsed.rows, retried)
    rewrite = parsed.torn or parsed.legacy or len(kept) != len(parsed.rows) or not text
    return ResumePlan(kept, rewrite=rewrite)


def resumable_rows(rows: list[ResultRow], retried: Container[str]) -> list[ResultRow]:
    """The rows a resumed job keeps (:func:`one_row_per_source`), less the error rows of the
    sources it scores again (a job over other folders dropped the record of every earlier
    unreadable image)."""
    return one_row_per_source(r for r in rows if not (r.error and r.source in retried))


def one_row_per_source(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """One row per source, in the order sources first come: the first scored row where there
    is one, else the last error (a failed image retried successfully is listed once)."""
    kept: dict[str, ResultRow] = {}
    for row in rows:
        earlier = kept.get(row.source)
        if earlier is None or earlier.error:
            kept[row.source] = row
    return list(kept.values())
