"""Pieces of the self-contained HTML pages (report, site audit): embedded PNGs."""

from __future__ import annotations

import base64
import html


def png_data_uri(png: bytes) -> str:
    """``png`` as a ``data:`` URI, for a page that fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_html(png: bytes, caption: str, css: str = "plot") -> str:
    """A ``<figure>`` of the embedded ``png`` with ``caption`` (escaped) as caption and alt text."""
    alt = html.escape(caption)
    return (
        f'<figure class="{css}"><img src="{png_data_uri(png)}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )
