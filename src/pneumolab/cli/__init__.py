"""Command-line interface: a thin layer over the Python API (see ``pneumolab --help``)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

from rich.logging import RichHandler

from pneumolab.cli.commands import console
from pneumolab.cli.parser import build_parser
from pneumolab.errors import PneumolabError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pneumolab`` console script."""
    args = build_parser().parse_args(argv)
    handler = RichHandler(console=console, show_path=False, show_time=False)
    package_log = logging.getLogger("pneumolab")
    package_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not package_log.handlers:
        package_log.addHandler(handler)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal deprecation
    try:
        return args.func(args)
    except PneumolabError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; a training run can be continued with --resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
