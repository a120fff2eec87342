"""Decode image files on a thread pool, a few batches ahead of the model.

PIL releases the GIL while it decodes and resizes, and onnxruntime (or PyTorch) while it
computes, so threads spread JPEG decoding over the cores and overlap it with inference.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pneumolab.errors import ImageLoadError

log = logging.getLogger(__name__)

T = TypeVar("T")
"""What ``load`` makes of one file: its pixels (with their scope checks, for the predictor)."""


def attempt(load: Callable[[Path], T], path: Path) -> T | ImageLoadError:
    """``load(path)``, or the ImageLoadError that stands for the file: the loaders' own, or one
    naming the file for any other exception (its traceback logged), so that one odd file of an
    archive becomes its row and never stops the job."""
    try:
        return load(path)
    except ImageLoadError as exc:
        return exc
    except Exception as exc:
        log.warning("%s: unexpected error while reading it", path, exc_info=True)
        return ImageLoadError(
            f"{path}: unexpected error while reading it ({type(exc).__name__}: {exc})"
        )


def decoded_batches(
    files: Sequence[Path],
    load: Callable[[Path], T],
    batch_size: int,
    workers: int | None = None,
    ahead: int = 2,
) -> Iterator[list[tuple[Path, T | ImageLoadError]]]:
    """``load`` every file on ``workers`` threads (default: one per core), batch by batch, in
    order; up to ``ahead`` batches are decoded while the caller works on the current one.

    An ImageLoadError (:func:`attempt`) stands in for the pixels of a file that could not be
    read. Memory stays bounded by ``(ahead + 1) * batch_size`` decoded images.
    """
    if batch_size < 1 or (workers is not None and workers < 1):
        raise ValueError(f"batch_size and workers must be at least 1, got {batch_size}, {workers}")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        pending: deque[list[tuple[Path, Future[T | ImageLoadError]]]] = deque()
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            pending.append([(path, pool.submit(attempt, load, path)) for path in chunk])
            if len(pending) > ahead:
                yield [(path, future.result()) for path, future in pending.popleft()]
        while pending:
            yield [(path, future.result()) for path, future in pending.popleft()]
