"""Thread-pool decoding ahead of the model: order, errors in place, bounded look-ahead."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pneumolab.errors import ImageLoadError
from pneumolab.inference.decoding import decoded_batches


def _load(path: Path) -> np.ndarray:
    if path.name.startswith("bad"):
        raise ImageLoadError(f"{path}: corrupt")
    return np.full((1, 2, 2), int(path.stem.split("-")[1]), dtype=np.uint8)


def test_batches_keep_file_order_and_put_errors_in_place():
    files = [Path(f"img-{i}.png") for i in range(7)]
    files[3] = Path("bad-3.png")
    batches = list(decoded_batches(files, _load, batch_size=3, workers=2))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [item for batch in batches for item in batch]
    assert [path for path, _ in flat] == files
    assert isinstance(flat[3][1], ImageLoadError) and "bad-3.png: corrupt" in str(flat[3][1])
    assert [int(pixels[0, 0, 0]) for path, pixels in flat if path != files[3]] == [0, 1, 2, 4, 5, 6]


def test_look_ahead_is_bounded():
    started: list[Path] = []
    lock = threading.Lock()

    def load(path: Path) -> np.ndarray:
        with lock:
            started.append(path)
        return np.zeros((1, 2, 2), np.uint8)

    files = [Path(f"img-{i}.png") for i in range(40)]
    batches = decoded_batches(files, load, batch_size=4, workers=2, ahead=2)
    first = next(batches)
    assert len(first) == 4
    assert len(started) <= 4 * 3  # the batch handed out plus two ahead, not all 40
    assert len(list(batches)) == 9


def test_any_other_exception_becomes_the_error_of_its_file(caplog):
    def broken(path: Path) -> np.ndarray:
        if path.name == "a.png":
            raise TypeError("a decoder's own error type")
        return np.zeros((1, 2, 2), np.uint8)

    [batch] = list(decoded_batches([Path("a.png"), Path("b.png")], broken, batch_size=2))
    (_, error), (_, pixels) = batch
    assert isinstance(error, ImageLoadError) and isinstance(pixels, np.ndarray)
    assert (
        str(error)
        == "a.png: unexpected error while reading it (TypeError: a decoder's own error type)"
    )
    assert "a.png: unexpected error while reading it" in caplog.text  # with its traceback


@pytest.mark.parametrize(("batch_size", "workers"), [(0, None), (4, 0), (-1, 2)])
def test_sizes_below_one_are_refused(batch_size, workers):
    with pytest.raises(ValueError, match="at least 1"):
        next(decoded_batches([Path("a.png")], Path, batch_size, workers))
