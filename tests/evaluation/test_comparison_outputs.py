"""What a comparison leaves in ``--out``: its files as one set, an earlier comparison never
half-replaced, and a stopped comparison that can simply be run again."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from conftest import copy_run
from pneumolab.errors import OutputError
from pneumolab.evaluation import comparison
from pneumolab.evaluation.comparison import ComparisonRow, check_comparison, write_comparison


def _row(name: str, true_positives: int) -> ComparisonRow:
    return ComparisonRow(
        name, "m", "finetune", 32, 15, 0.9, 0.9, 0.8, 0.95, "0.90–1.00", 0.5,
        None, None, 1.0, None, None, None, None, None, None, [[4, 1], [10 - true_positives, true_positives]], name,
    )  # fmt: skip


def _files(out: Path) -> dict[str, str]:
    """Every file under ``out`` (hidden ones too) by its path there, with a digest."""
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def _stop_at_second_figure(monkeypatch, error: BaseException) -> None:
    drawn = []
    real = comparison.confusion_matrix_figure

    def draw(*args, **kwargs):
        drawn.append(args)
        if len(drawn) == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(comparison, "confusion_matrix_figure", draw)


def _write(out: Path, rows: list[ComparisonRow], remove_stale: bool = True) -> None:
    write_comparison(rows, out, "val", extra={"margins.md": "m\n"}, remove_stale=remove_stale)


def test_a_stop_while_drawing_leaves_the_earlier_comparison_whole(tmp_path, monkeypatch):
    """The confusion figures were written straight into ``confusion/`` before the table: a
    stop at the second one left the earlier table beside a new ``a.png`` of another run."""
    out = tmp_path / "cmp"
    _write(out, [_row("a", 9), _row("b", 9)])
    earlier = _files(out)
    _stop_at_second_figure(monkeypatch, RuntimeError("stopped"))
    with pytest.raises(RuntimeError):
        _write(out, [_row("a", 5), _row("c", 5)])
    assert _files(out) == earlier  # no figure replaced, nothing staged left behind
    monkeypatch.undo()
    _write(out, [_row("a", 5), _row("c", 5)])  # the rerun replaces it whole
    assert sorted(_files(out)) == [
        "confusion/a.png", "confusion/c.png", "margins.md", "results.csv", "results.md",
        "results.png",
    ]  # fmt: skip
    assert _files(out)["confusion/a.png"] != earlier["confusion/a.png"]


def test_a_stop_in_a_new_folder_leaves_nothing_and_the_rerun_is_not_refused(tmp_path, monkeypatch):
    """A stopped comparison left ``confusion/x.png``: refusing it blocked the rerun; kept, a
    rerun of other runs left it beside a table that does not list it."""
    out = tmp_path / "cmp"
    _stop_at_second_figure(monkeypatch, RuntimeError("stopped"))
    with pytest.raises(RuntimeError):
        _write(out, [_row("x", 9), _row("y", 9)])
    assert not out.exists()
    monkeypatch.undo()
    run = tmp_path / "runs" / "x"
    assert check_comparison([run], out) == ["x"]  # what compare_runs checks first
    _write(out, [_row("x", 9)], remove_stale=False)
    assert sorted(p.name for p in (out / "confusion").iterdir()) == ["x.png"]


def test_an_earlier_comparison_is_refused_without_overwrite_and_named(tmp_path):
    out = tmp_path / "cmp"
    _write(out, [_row("a", 9), _row("b", 9)])
    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "c"]
    with pytest.raises(OutputError) as refused:
        check_comparison(runs, out)
    message = str(refused.value)
    assert message.startswith(f"{out}: holds an earlier comparison (results.csv, results.md, ")
    assert "pass --overwrite to replace them as one set" in message
    assert "or give --out another folder" in message
    assert check_comparison(runs, out, overwrite=True) == ["a", "c"]


def test_a_figure_of_this_comparisons_name_is_refused_without_overwrite(tmp_path):
    """``confusion/<name>.png`` without a table (someone's figure, or what an older version
    left) was replaced silently."""
    out = tmp_path / "cmp"
    mine = out / "confusion" / "a.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    (out / "confusion" / "other.png").write_bytes(b"kept")
    with pytest.raises(OutputError, match=r"files this comparison would write, without a results"):
        check_comparison([tmp_path / "runs" / "a"], out)
    assert mine.read_bytes() == b"mine"
    assert check_comparison([tmp_path / "runs" / "b"], out) == ["b"]  # another name: kept


def test_overwrite_replaces_the_earlier_set_whole(tmp_path, caplog):
    caplog.set_level(logging.INFO, "pneumolab")
    out = tmp_path / "cmp"
    _write(out, [_row("a", 9), _row("b", 9)])
    (out / "notes.txt").write_text("the user's")
    _write(out, [_row("c", 9)], remove_stale=True)
    assert sorted(p.name for p in (out / "confusion").iterdir()) == ["c.png"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert "b.png: its model is not in the new table" in caplog.text


def test_a_compare_stopped_while_drawing_keeps_the_earlier_one_and_runs_again(
    tiny_run, tmp_path, monkeypatch, capsys
):
    """The command end to end: Ctrl-C at the second confusion figure of an ``--overwrite``
    over a finished comparison, then the reruns."""
    from pneumolab.cli import main

    run_dir, data = tiny_run
    runs = [str(copy_run(run_dir, tmp_path / name)) for name in ("first", "second")]
    out = tmp_path / "cmp"
    compare = ["compare", *runs, "--data", str(data), "--out", str(out)]
    assert main(compare) == 0
    earlier = _files(out)
    assert main(compare) == 2
    assert "holds an earlier comparison" in capsys.readouterr().err
    _stop_at_second_figure(monkeypatch, KeyboardInterrupt())
    assert main([*compare, "--overwrite"]) == 130
    assert _files(out) == earlier
    fresh = [*compare[:-1], str(tmp_path / "fresh")]
    _stop_at_second_figure(monkeypatch, KeyboardInterrupt())
    assert main(fresh) == 130 and not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    assert main(fresh) == 0  # the stopped job's rerun, no flag needed
    assert main([*compare, "--overwrite"]) == 0
    assert sorted(_files(out)) == sorted(earlier)


def test_the_margins_pair_the_evaluations_in_memory_not_their_files_read_back(
    tmp_path, monkeypatch
):
    """``compare`` wrote each run's ``eval/<split>/`` and then read every run's score files
    back for each criterion's margins (``predictions.csv`` twice with ``--shift``, once per
    criterion, and ``shift_predictions.csv``). It pairs the scores it holds now: no score file
    is read, and the margins are those the files give."""
    from conftest import write_run, write_synthetic_dataset
    from pneumolab.evaluation import selection
    from pneumolab.evaluation.selection import margins_over

    data = write_synthetic_dataset(tmp_path / "data", per_class=6)
    images = sorted((data / "train").rglob("*.png"))
    split = "path,label,patient,subset\n" + "".join(
        f"{p.relative_to(data).as_posix()},{int('PNEUMONIA' in p.parts)},{p.stem},val\n"
        for p in images
    )
    runs = {}
    for seed, name in enumerate(("a", "b")):
        runs[name] = write_run(tmp_path / "runs" / name, images, seed=seed)
        runs[name].split.write_text(split)
    read: list[str] = []
    for reader in ("read_predictions", "read_shift_predictions"):
        real = getattr(selection, reader)
        monkeypatch.setattr(
            selection, reader, lambda *a, real=real, reader=reader: read.append(reader) or real(*a)
        )
    rows, outputs = comparison.compare_runs(
        list(runs.values()), data, "val", tmp_path / "cmp", shift=True
    )
    assert read == []
    expected = [
        margins_over(runs, comparison.leading_model(rows, criterion), criterion).markdown("val")
        for criterion in ("roc_auc", "shift_roc_auc")
    ]  # from the files the evaluations wrote
    assert read  # the spies see a read from the files
    assert outputs["margins"].read_text() == "# Margins\n\n" + "\n".join(expected)
