"""Where the command line prints: rich consoles that cannot be tripped by a file name.

No string is read as rich markup (``markup=False``: a file named ``a[/i].jpeg`` prints as it is;
styles are given as ``(text, style)`` pairs), and a file name whose bytes are not UTF-8 prints
with those bytes as ``\\xNN`` instead of failing the write.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import IO, Any, cast

from rich.console import Console
from rich.text import Text

from pneumolab.errors import printable
from pneumolab.text import terminal_safe


class _PrintableStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` (looked up at each write, as rich does), via printable()."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _target(self) -> io.TextIOBase:
        stream = getattr(sys, self.name)  # None where the stream was closed (`>&-`)
        return stream if stream is not None else io.StringIO()  # written to nowhere

    def write(self, text: str) -> int:
        target = self._target()
        encoding = getattr(target, "encoding", None) or "utf-8"  # an ASCII or Latin-1 stdout too
        return target.write(printable(text).encode(encoding, "backslashreplace").decode(encoding))

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "encoding", None) or "utf-8"


class _SafeConsole(Console):
    """A console whose plain strings (print's arguments, table cells) show their control
    characters as ``\\xNN``: they hold file names and DICOM values."""

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(terminal_safe(text), **options)

    def on_broken_pipe(self) -> None:
        """The reader went away (``| head``): quiet from now on, and the BrokenPipeError the
        command line answers with 141, as for plain prints (rich exited with 1, which says
        "some inputs failed")."""
        self.quiet = True
        raise BrokenPipeError


def _console(name: str, width: int) -> Console:
    """A console on ``sys.<name>``; a fixed ``width`` when it is not a terminal (no cut paths)."""
    stream = getattr(sys, name)
    terminal = stream is not None and stream.isatty()
    return _SafeConsole(
        file=cast(IO[str], _PrintableStream(name)),  # a text stream, as rich needs
        markup=False,
        soft_wrap=name == "stderr",
        width=None if terminal else width,
    )


console = _console("stderr", 160)
stdout = _console("stdout", 200)


def say(*parts: str | tuple[str, str], on: Console = console) -> None:
    """Print plain strings and ``(text, style)`` pairs as one line, on stderr unless ``on``
    says otherwise (control characters, which a file name may hold, shown as ``\\xNN``)."""
    safe = [terminal_safe(p) if isinstance(p, str) else (terminal_safe(p[0]), p[1]) for p in parts]
    on.print(Text.assemble(*safe))


class TerminalSafe(logging.Filter):
    """A log handler's filter: the message with its arguments, control characters shown as
    ``\\xNN`` (log lines name files)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = terminal_safe(record.getMessage()), None
        return True


def report_error(error: Exception) -> None:
    """``error: <message>`` on stderr; nothing where stderr's reader has gone (``2>&1 | head``),
    so that the exit code still says what happened (it became 1, an uncaught closed pipe)."""
    try:
        say(("error:", "bold red"), f" {error}")
    except BrokenPipeError:
        to_devnull(sys.stderr)


def to_devnull(stream: IO[str]) -> None:
    """Point ``stream``'s descriptor at /dev/null, its reader gone: nothing written later (a
    flush at exit included) fails; nothing where it has no descriptor (output captured)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
