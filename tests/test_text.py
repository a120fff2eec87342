"""Untrusted names as Markdown table cells: one cell, no markup, quotes readable."""

from __future__ import annotations

import pytest

from pneumolab.text import markdown_cell, spreadsheet_safe


@pytest.mark.parametrize(
    ("name", "cell"),
    [
        ("model 'x' not found", "model 'x' not found"),  # was model &#x27;x&#x27; not found
        ('say "hi"', 'say "hi"'),
        ("a|b", "a&#124;b"),
        ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
        ("[click](http://example.org)", "\\[click\\](http://example.org)"),
        ("a*b* `c` \\d", "a\\*b\\* \\`c\\` \\\\d"),
        ("mobilenetv2_160_clahe", "mobilenetv2_160_clahe"),
        ("two\nlines\t here", "two lines here"),
    ],
)
def test_markdown_cell(name, cell):
    assert markdown_cell(name) == cell


@pytest.mark.parametrize(
    ("name", "cell"),
    [
        ('=HYPERLINK("http://example.org","x")', '\'=HYPERLINK("http://example.org","x")'),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("+1", "'+1"),
        ("-run", "'-run"),
        ("mobilenetv2_160", "mobilenetv2_160"),
        ("a=b", "a=b"),
    ],
)
def test_spreadsheet_safe(name, cell):
    assert spreadsheet_safe(name) == cell
