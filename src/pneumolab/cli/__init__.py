"""Command-line interface: a thin layer over the Python API (see ``pneumolab --help``)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

from rich.logging import RichHandler

from pneumolab.cli.console import TerminalSafe, console, report_error, say, to_devnull
from pneumolab.cli.flag_checks import refuse_ignored_flags
from pneumolab.cli.parser import build_parser
from pneumolab.errors import PneumolabError, TrainingInterrupted
from pneumolab.run import RunDir

__all__ = ["build_parser", "main"]


INTERRUPT_HINTS = {
    "cmd_train": "; continue it with --resume",
    "cmd_study": "; run the same command again to continue the study",
    "cmd_predict": "; with --out, run the same command again to continue",
}
"""What to say after Ctrl+C, by command (the others have nothing to continue)."""


class _PlainLogHandler(logging.StreamHandler):
    """``LEVEL message`` lines on the console's stream; a reader gone (``2>&1 | head``) stops
    the command as rich's handler does (exit 141), not with logging's "Logging error"."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise  # the BrokenPipeError being handled
        super().handleError(record)


def _log_handler() -> logging.Handler:
    """Rich's log handler on a terminal; elsewhere (a pipe, a log file) plain ``LEVEL message``
    lines: rich wrapped them at the console's width and padded them with spaces, splitting the
    commands they suggest."""
    if console.is_terminal:
        return RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler = _PlainLogHandler(console.file)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pneumolab`` console script."""
    args = build_parser().parse_args(argv)
    handler = _log_handler()
    handler.addFilter(TerminalSafe())
    package_log = logging.getLogger("pneumolab")
    package_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not package_log.handlers:
        package_log.addHandler(handler)
    # Lightning's info lines (devices, tips) only with -v: pneumolab logs the compute it used.
    # Its rank-zero logger, as importing lightning.pytorch later resets the package logger's level
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_info.setLevel(logging.INFO if args.verbose else logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal deprecation
    try:
        refuse_ignored_flags(args)
        return args.func(args)
    except TrainingInterrupted as exc:  # Lightning stopped at the signal, its last epoch saved
        if args.func.__name__ == "cmd_study":
            say(("interrupted", "yellow"), INTERRUPT_HINTS["cmd_study"])
        else:
            say((str(exc), "yellow"))
        return 143 if exc.signal == "SIGTERM" else 130
    except PneumolabError as exc:
        report_error(exc)
        return 2
    except ModuleNotFoundError as exc:  # a dependency pneumolab installs is gone: no traceback
        if not exc.name or exc.name.split(".")[0] == "pneumolab":
            raise  # pneumolab's own module: a bug, whose traceback says where
        report_error(
            Exception(
                f"the Python package {exc.name or exc} is missing from this environment (a "
                "broken or partial installation): reinstall pneumolab with its dependencies"
            )
        )
        return 2
    except BrokenPipeError:  # `| head`: the reader has gone; nothing more to say to it
        to_devnull(sys.stdout)
        return 141
    except OSError as exc:  # a file system refusal pneumolab did not foresee: still no traceback
        where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        report_error(Exception(f"{where}: {exc.strerror or exc}" if where else str(exc)))
        return 2
    except KeyboardInterrupt:
        hint = INTERRUPT_HINTS.get(args.func.__name__, "")
        if args.func.__name__ == "cmd_train" and not RunDir(args.out).last_checkpoint.is_file():
            hint = ""  # stopped before its first checkpoint: nothing to resume
        elif args.func.__name__ == "cmd_train" and RunDir(args.out).is_complete():
            hint = (  # stopped while finishing: a resume would be refused as finished
                "; the run had finished (meta.json written): `pneumolab report RUN_DIR --data "
                "DATA_DIR` writes its model card again if it is missing"
            )
        if args.func.__name__ == "cmd_predict" and getattr(args, "overwrite", False):
            hint = "; run it again without --overwrite to continue (with it, it starts over)"
        say(("interrupted", "yellow"), hint)
        return 130


if __name__ == "__main__":
    sys.exit(main())
