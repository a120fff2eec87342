"""compare and the runs' saved splits: each split.csv read once per compare."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import copy_run
from pneumolab.evaluation.comparison import SPLITS_DIFFER, compare_runs


def test_each_runs_split_is_read_once_and_a_different_one_is_still_told(
    tiny_run, tmp_path, monkeypatch
):
    """compare read every split.csv to tell whether the runs share a split (the first run's
    once more for each other run), then each again for its validation images."""
    run_dir, data = tiny_run
    runs = [copy_run(run_dir, tmp_path / name) for name in ("a", "b")]
    split = runs[1] / "split.csv"
    header, *rows = split.read_text().splitlines(keepends=True)
    split.write_text(header + "".join(reversed(rows)))  # the same images, another file
    opened: Counter[Path] = Counter()
    real_open = Path.open

    def counted(path: Path, *args, **kwargs):
        if path.name == "split.csv":
            opened[path] += 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counted)  # what read_bytes and read_text open with too
    compare_runs(runs, data, "val", tmp_path / "cmp")
    assert opened == {run / "split.csv": 1 for run in runs}
    assert SPLITS_DIFFER in (tmp_path / "cmp" / "results.md").read_text()
