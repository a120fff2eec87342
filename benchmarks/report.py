"""What the benchmarks that score run folders share: their command line and their output.

Imported by the scripts beside it (``python benchmarks/NAME.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def runs_parser(doc: str | None, draws: int | None = None) -> argparse.ArgumentParser:
    """A parser of run folders, ``--data`` and ``--out`` (and ``--draws``, when given a
    default), described by the first line of ``doc``."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root")
    if draws is not None:
        parser.add_argument("--draws", type=int, default=draws, help="random draws per shift")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    return parser


def publish(table: str, out: Path | None) -> None:
    """Print a Markdown ``table`` and, with ``out``, write it there too."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
