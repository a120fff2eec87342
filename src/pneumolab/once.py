"""Something said once (a warning): per key, in a process or an object, even where several
threads reach it together (the HTTP server loads runs and predicts on threads)."""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Once:
    """Keys claimed at most once each: :meth:`first` is true for one caller per key only."""

    def __init__(self) -> None:
        self._claimed: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, key: Hashable = None) -> bool:
        """True for the first call with ``key`` (the caller says it now), False for every later
        one. The check and the claim are one step under a lock: two threads checking at once
        cannot both be first."""
        with self._lock:
            if key in self._claimed:
                return False
            self._claimed.add(key)
            return True
