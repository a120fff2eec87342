"""Untrusted text (file and folder names, DICOM values) made safe for where it is written: a
terminal, a Markdown table."""

from __future__ import annotations

import html
import re

from pneumolab.errors import printable

CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Control characters but tab: in a file name or DICOM value they could clear the screen,
recolour or overwrite a line of the terminal, or forge a line of their own."""


def terminal_safe(text: str) -> str:
    """:func:`~pneumolab.errors.printable`, with control characters (escape, line feed, carriage
    return...) shown as ``\\xNN``: text from file names or file headers, as a terminal gets it."""
    return CONTROL_CHARACTERS.sub(lambda found: f"\\x{ord(found[0]):02x}", printable(text))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula (OWASP's CSV injection list)."""


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV text cell that a spreadsheet shows as text: one that would start a
    formula (a run folder named ``=HYPERLINK(...)``) gets a leading ``'``, as OWASP advises;
    anything else is kept as it is."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


MARKDOWN_MARKUP = re.compile(r"([\\`*\[\]])")
"""Characters that start Markdown markup inside a line (code, emphasis, links), escaped with
a backslash in :func:`markdown_cell`; ``_`` is left as it is (names are full of it, and GitHub
Markdown does not emphasise within words)."""


def markdown_cell(text: object) -> str:
    """``text`` as one Markdown table cell (or bold name): on one line, ``<``, ``>`` and ``&``
    as HTML entities, ``|`` as its entity, code, emphasis and link markup backslash-escaped, so
    that a run folder named ``a|b``, ``<img ...>`` or ``[x](url)`` neither splits a row nor
    injects markup where the Markdown is rendered. Quotes stay as they are (readable in the
    raw file: they start no markup in text)."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return MARKDOWN_MARKUP.sub(r"\\\1", escaped).replace("|", "&#124;")
