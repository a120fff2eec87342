"""The list of images to score, from a manifest file: a ``path`` column in CSV or Parquet."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pneumolab.errors import ConfigError
from pneumolab.files import blocked_by, permission_problem
from pneumolab.inference.inputs import source_key

log = logging.getLogger(__name__)

COLUMN = "path"
SHOWN = 5
"""How many rows without a path an error names, and missing images a warning."""
ANSWERED = " (each is answered with an error, the others still run)"
"""What a warning about listed images that cannot be read says becomes of them."""
TEXT_TYPES = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")
"""Arrow types a Parquet path column may hold (or a dictionary of): text, or file names' bytes."""


@dataclass(frozen=True)
class ManifestImages:
    """The images a manifest lists, in its order, and where it lists each: ``MANIFEST:LINE``
    (a CSV's line as a text editor counts it), a Parquet file's ``MANIFEST row N``."""

    manifest: Path
    paths: tuple[Path, ...]
    places: tuple[str, ...]

    @cached_property
    def _place_of(self) -> dict[str, str]:
        """The first place listing each image, by its results file's key."""
        places: dict[str, str] = {}
        for path, place in zip(self.paths, self.places, strict=True):
            places.setdefault(str(source_key(path)), place)
        return places

    def noted(self, source: str | Path, error: str) -> str:
        """``error``, of the image ``source`` (as given, or a results file's key), after where
        the manifest lists it (``MANIFEST:LINE: ``: an image's error named only the image,
        which a long manifest may list on any line); as it is for an image it does not list."""
        place = self._place_of.get(str(source_key(Path(source))))
        if place is None or error.startswith(f"{place}: "):
            return error
        return f"{place}: {error}"

    def warn_missing(self) -> None:
        """Warn where the manifest lists images that cannot be found, each as ``PLACE: PATH``
        (the first five, and how many): those that do not exist, and apart those behind a
        folder this process may not read (they exist, or may)."""
        listed = list(zip(self.places, self.paths, strict=True))
        gone, blocked = _unreachable(listed)
        count = f"of the {len(listed)} images it lists"
        if gone and len(gone) == len(listed):
            folder = f"relative paths are read from the manifest's folder, {self.manifest.parent}"
            _warn(self.manifest, f"none {count} found ({folder})", gone)
        elif gone:
            _warn(self.manifest, f"{len(gone)} {count} not found{ANSWERED}", gone)
        if blocked:
            why = "a folder on the way exists but cannot be read (permission denied)"
            _warn(
                self.manifest, f"{len(blocked)} {count} cannot be reached: {why}{ANSWERED}", blocked
            )


def manifest_images(manifest: str | Path) -> ManifestImages:
    """The image paths in ``manifest``'s ``path`` column (CSV with a header row, or Parquet; a
    Parquet column of bytes is decoded as the file system's names), and where it lists each;
    relative paths are relative to the manifest's folder, spaces around them dropped. A blank
    CSV row (every cell empty) is skipped; a row with data but no path is an error naming its
    line, as is a column that is not text, and a manifest without rows. Errors name the file;
    one that exists but may not be read says so (never "not found"). Listed images that do not
    exist stay in the list (their reading fails naming each, the others still run)."""
    manifest = Path(manifest)
    if not os.path.isfile(manifest):  # os.path: False, not PermissionError, behind a locked folder
        problem = (
            "a folder, not a manifest file"
            if os.path.isdir(manifest)
            else "manifest file not found"
            if blocked_by(manifest) is None
            else permission_problem(manifest)
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
    except PermissionError:
        raise ConfigError(f"{manifest}: {permission_problem(manifest)}") from None
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
    places = [f"{manifest}:{n}" if unit == "line" else f"{manifest} row {n}" for n, _ in listed]
    return ManifestImages(manifest, tuple(path for _, path in listed), tuple(places))


def _more(items: list[str]) -> str:
    """`` and N more`` where ``items`` are more than :data:`SHOWN`, else ""."""
    return f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""


def _unreachable(listed: list[tuple[str, Path]]) -> tuple[list[str], list[str]]:
    """``PLACE: PATH`` of the listed images that do not exist (a link to nothing too), and of
    those a folder on the way hides (permission denied: they exist, or may)."""
    gone: list[str] = []
    blocked: list[str] = []
    for place, path in listed:
        try:
            os.stat(path)
        except PermissionError:
            blocked.append(f"{place}: {path}")
        except OSError:
            gone.append(f"{place}: {path}")
    return gone, blocked


def _warn(manifest: Path, what: str, named: list[str]) -> None:
    """One warning about ``manifest``'s images: ``what``, then the first of ``named``."""
    log.warning("%s: %s: %s%s", manifest, what, ", ".join(named[:SHOWN]), _more(named))


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
