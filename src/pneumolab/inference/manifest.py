"""The list of images to score, from a manifest file: a ``path`` column in CSV or Parquet."""

from __future__ import annotations

import csv
from pathlib import Path

from pneumolab.errors import ConfigError

COLUMN = "path"


def read_manifest(manifest: str | Path) -> list[Path]:
    """The image paths in ``manifest``'s ``path`` column (CSV with a header row, or Parquet);
    relative paths are relative to the manifest's folder. Errors name the file."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ConfigError(f"{manifest}: manifest file not found")
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(manifest)
            values = table.column(COLUMN).to_pylist() if COLUMN in table.column_names else None
        elif suffix == ".csv":
            with manifest.open(newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" too
                reader = csv.DictReader(f)
                has_column = COLUMN in (reader.fieldnames or [])
                values = [row[COLUMN] for row in reader] if has_column else None
        else:
            raise ConfigError(f"{manifest}: a manifest is a .csv or .parquet file")
    except ImportError:
        raise ConfigError(
            f"{manifest}: reading Parquet needs pyarrow: pip install 'pneumolab[distributed]'"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{manifest}: unreadable manifest ({exc})") from None
    if values is None:
        raise ConfigError(f"{manifest}: no '{COLUMN}' column (one image path per row)")
    return [manifest.parent / value for value in values if value]
