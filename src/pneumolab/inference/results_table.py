"""A whole results file of ``predict --out`` read and written at once, for engines that produce
rows out of order (Ray): the rows, columns and checks of :mod:`pneumolab.inference.results_file`
(CSV or JSON lines), plus Parquet with the same columns. Unfinished work is kept in Parquet part
files beside the output."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pneumolab.errors import ConfigError
from pneumolab.files import atomic_write
from pneumolab.inference.prediction import CLASS_PROBABILITY_FIELDS
from pneumolab.inference.results_file import (
    FIELDS,
    LEGACY_FIELDS,
    NOT_RESULTS,
    NotAResultsFile,
    Producer,
    ResultRow,
    check_producer,
    decode_text,
    one_row_per_source,
    parse,
    results_format,
    write_text_rows,
)

log = logging.getLogger(__name__)


def table_format(out: Path) -> str:
    """``parquet``, ``csv`` or ``jsonl`` from the file name; a clear error otherwise."""
    if out.suffix.lower() == ".parquet":
        return "parquet"
    try:
        return results_format(out)
    except ConfigError:
        raise ConfigError(f"{out}: output must end in .parquet, .csv or .jsonl") from None


def arrow_schema() -> Any:
    """The Parquet schema of result rows (pyarrow imported only when needed)."""
    import pyarrow as pa

    number, texts = pa.float64(), pa.list_(pa.string())
    types = {
        "probability": number,
        "threshold": number,
        "in_scope": pa.bool_(),
        "ood_score": number,
        "ood_threshold": number,
        "reasons": texts,
        "warnings": texts,
        "tta": pa.bool_(),
        **dict.fromkeys(CLASS_PROBABILITY_FIELDS, number),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in FIELDS])


def _parquet_rows(path: Path) -> list[ResultRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if tuple(table.column_names) not in (FIELDS, LEGACY_FIELDS):
        raise NotAResultsFile(f"{path}: {NOT_RESULTS}")
    return [ResultRow.from_record(record) for record in table.to_pylist()]


def read_results(path: Path, producer: Producer | None = None) -> list[ResultRow]:
    """The rows of a results file (none when it does not exist); NotAResultsFile for another
    kind of file, OutputError when ``producer`` is given and the rows were produced otherwise."""
    if not path.exists():
        return []
    fmt = table_format(path)
    if fmt == "parquet":
        try:
            rows = _parquet_rows(path)
        except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors too
            raise NotAResultsFile(f"{path}: not a readable Parquet results file ({exc})") from None
    else:
        rows = parse(decode_text(path.read_bytes()), results_format(path), path).rows
    if producer is not None:
        check_producer(rows, producer, path)
    return rows


def read_parts(folder: Path) -> list[ResultRow]:
    """The rows of every Parquet part file in ``folder``; a part cut short by a kill is
    deleted (its images are scored again)."""
    rows: list[ResultRow] = []
    for part in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            rows += _parquet_rows(part)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable part (%s); its images are scored again", part, exc)
            part.unlink()
    return rows


def merge(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """:func:`one_row_per_source`, sorted by source."""
    return sorted(one_row_per_source(rows), key=lambda row: row.source)


def write_results(path: Path, rows: list[ResultRow]) -> None:
    """Write ``rows`` as the whole file ``path``, atomically, in its format."""
    fmt = table_format(path)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([row.record() for row in rows], schema=arrow_schema())
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f)
        return
    write_text_rows(path, results_format(path), rows)
