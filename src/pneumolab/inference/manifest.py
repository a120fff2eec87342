"""The list of images to score, from a manifest file: a ``path`` column in CSV or Parquet."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from pneumolab.errors import ConfigError

log = logging.getLogger(__name__)

COLUMN = "path"
SHOWN = 5
"""How many rows without a path an error names, and missing images a warning."""
TEXT_TYPES = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")
"""Arrow types a Parquet path column may hold (or a dictionary of): text, or file names' bytes."""


def read_manifest(manifest: str | Path) -> list[Path]:
    """The image paths in ``manifest``'s ``path`` column (CSV with a header row, or Parquet; a
    Parquet column of bytes is decoded as the file system's names); relative paths are relative
    to the manifest's folder, spaces around them dropped. A blank CSV row (every cell empty)
    is skipped; a row with data but no path is an error naming its line, as is a column that
    is not text, and a manifest without rows. Errors name the file. Listed images that do not
    exist stay in the list (their reading fails naming each, the others still run), and a
    warning names where the manifest lists them (:func:`_warn_missing`)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        problem = (
            "a folder, not a manifest file" if manifest.is_dir() else "manifest file not found"
        )
        raise ConfigError(f"{manifest}: {problem}")
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".parquet":
            rows = _parquet_rows(manifest)
        elif suffix == ".csv":
            rows = _csv_rows(manifest)
        else:
            raise ConfigError(f"{manifest}: a manifest is a .csv or .parquet file")
    except ImportError:
        raise ConfigError(
            f"{manifest}: reading Parquet needs pyarrow: pip install 'pneumolab[distributed]'"
        ) from None
    except UnicodeDecodeError as exc:  # before ValueError, its base class
        raise ConfigError(
            f"{manifest}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
            '"CSV UTF-8" (Excel) or re-encode it, e.g. iconv -f latin1 -t utf-8'
        ) from None
    except (OSError, ValueError, csv.Error) as exc:
        raise ConfigError(f"{manifest}: unreadable manifest ({exc})") from None
    unit = "line" if suffix == ".csv" else "row"
    missing = [f"{unit} {number}" for number, value in rows if not (value and value.strip())]
    if missing:
        raise ConfigError(
            f"{manifest}: no image path at {', '.join(missing[:SHOWN])}{_more(missing)} (every "
            f"row needs one in its '{COLUMN}' column)"
        )
    if not rows:  # predict would say "nothing to predict: give ... --manifest FILE"
        raise ConfigError(f"{manifest}: the manifest lists no images (no row under its header)")
    listed = [(number, manifest.parent / value.strip()) for number, value in rows if value]
    _warn_missing(manifest, unit, listed)
    return [path for _, path in listed]


def _more(items: list[str]) -> str:
    """`` and N more`` where ``items`` are more than :data:`SHOWN`, else ""."""
    return f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""


def _warn_missing(manifest: Path, unit: str, listed: list[tuple[int, Path]]) -> None:
    """Warn where ``manifest`` lists images that do not exist, each as ``MANIFEST:LINE: PATH``
    (a CSV's line as a text editor counts it; a Parquet file's ``MANIFEST row N``): their
    errors name only the image, which a long manifest may list anywhere."""
    gone = [
        f"{manifest}:{number}: {path}" if unit == "line" else f"{manifest} row {number}: {path}"
        for number, path in listed
        if not os.path.exists(path)  # a link to nothing too
    ]
    if not gone:
        return
    if len(gone) < len(listed):
        what = f"{len(gone)} of the {len(listed)} images it lists not found (each is answered with "
        what += "an error, the others still run)"
    else:
        what = f"none of the {len(listed)} images it lists found (relative paths are read from "
        what += f"the manifest's folder, {manifest.parent})"
    log.warning("%s: %s: %s%s", manifest, what, ", ".join(gone[:SHOWN]), _more(gone))


def _csv_rows(manifest: Path) -> list[tuple[int, str | None]]:
    """(line number as a text editor counts it, path) for each row that is not blank; header
    names are read without the spaces around them (``id, path``)."""
    with manifest.open(newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" too
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        names = [name.strip() for name in header]
        if COLUMN not in names:
            other = next((d for d in (";", "\t") if any(d in name for name in header)), None)
            raise _no_column(
                manifest,
                f"; it looks {other!r}-separated: save it comma-separated" if other else "",
            )
        column = header[names.index(COLUMN)]
        return [(reader.line_num, row[column]) for row in reader if not _blank(row)]


def _blank(row: dict[str | None, str | list[str] | None]) -> bool:
    """Whether every cell of a CSV row is empty (a spreadsheet's blank row); cells past the
    header's columns come as a list under ``None``, missing ones as ``None``."""
    extra = row.get(None)
    cells = [v for k, v in row.items() if k is not None] + (
        extra if isinstance(extra, list) else []
    )
    return not any(isinstance(cell, str) and cell.strip() for cell in cells)


def _parquet_rows(manifest: Path) -> list[tuple[int, str | None]]:
    """(row number from 1, path) for each row; bytes decoded with :func:`os.fsdecode`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    if COLUMN not in table.column_names:
        raise _no_column(manifest)
    column = table.column(COLUMN)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not any(getattr(pa.types, f"is_{name}")(kind) for name in TEXT_TYPES):
        raise ConfigError(
            f"{manifest}: its '{COLUMN}' column holds {column.type}, not text (image paths)"
        )
    values = column.to_pylist()
    return [
        (i, os.fsdecode(value) if isinstance(value, bytes) else value)
        for i, value in enumerate(values, start=1)
    ]


def _no_column(manifest: Path, hint: str = "") -> ConfigError:
    return ConfigError(f"{manifest}: no '{COLUMN}' column (one image path per row){hint}")
