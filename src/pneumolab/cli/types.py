"""Argument types that check a flag's value when it is parsed (argparse prints the error)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from pneumolab.config import check_target_sensitivity


def bounded(
    kind: type[int] | type[float], low: float | None = None, high: float | None = None
) -> Callable[[str], int | float]:
    """An argparse ``type``: ``kind`` parsed, finite, within ``[low, high]`` (either optional)."""
    span = " and ".join(
        part
        for part in (
            f">= {low}" if low is not None else "",
            f"<= {high}" if high is not None else "",
        )
        if part
    )

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_article(kind)}") from None
        too_low = low is not None and value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _article(kind: type) -> str:
    return "an integer" if kind is int else "a number"


def target_sensitivity(text: str) -> float:
    """An argparse ``type``: a sensitivity a threshold can keep, in (0, 1] (the config's rule)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_target_sensitivity(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


POSITIVE_INT = bounded(int, 1)
PORT = bounded(int, 0, 65535)
