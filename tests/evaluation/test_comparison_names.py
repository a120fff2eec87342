"""The names a comparison gives its runs (they name the table's rows and the figures' files)."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pneumolab.errors import RunDirError
from pneumolab.evaluation.comparison import _unique_names


def test_folder_names_when_they_differ():
    assert _unique_names([Path("/s/runs/a"), Path("/s/runs/b")]) == ["a", "b"]


def test_namesakes_get_as_many_parent_folders_as_tell_them_apart():
    two_studies = [Path("/w/study1/runs/xception"), Path("/w/study2/runs/xception")]
    assert _unique_names(two_studies) == ["study1-runs-xception", "study2-runs-xception"]
    mixed = [Path("/w/copy/small"), Path("/w/a/runs/small"), Path("/w/b/runs/small")]
    assert _unique_names(mixed) == ["copy-small", "a-runs-small", "b-runs-small"]
    assert _unique_names([Path("/x/a/b"), Path("/a/b")]) == ["x-a-b", "a-b"]


def test_a_run_whose_name_is_its_own_keeps_it():
    runs = [Path("/w/seed/runs/small"), Path("/w/s2/runs/small"), Path("/w/api/runs/r2")]
    assert _unique_names(runs) == ["seed-runs-small", "s2-runs-small", "r2"]


def test_a_run_given_twice_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="the same run is given twice"):
        _unique_names([tmp_path / "run", tmp_path / "sub" / ".." / "run"])


def test_paths_that_read_alike_once_joined_are_numbered_apart():
    """``a-b/x`` and ``a/b-x`` both joined to ``...-a-b-x`` at full depth: two rows shared a
    name, one confusion matrix was overwritten and a run fell out of the margins."""
    runs = [Path("/p/a-b/x"), Path("/p/z/x"), Path("/p/a/b-x"), Path("/p/w/b-x")]
    assert _unique_names(runs) == ["p-a-b-x", "z-x", "p-a-b-x-2", "w-b-x"]


@given(st.lists(st.lists(st.sampled_from(["a", "b", "x", "a-b", "b-x"]), min_size=1, max_size=4)))
def test_distinct_paths_always_get_distinct_names(paths):
    runs = list(dict.fromkeys(Path("/", *parts) for parts in paths))
    assert len(set(_unique_names(runs))) == len(runs)


@pytest.mark.parametrize("order", [1, -1])
def test_a_figure_a_split_cannot_define_ranks_last_in_any_order(order):
    """With NaN in the criterion, max() answered by the rows' order: NaN compares false."""
    from pneumolab.evaluation.comparison import ComparisonRow, leading_model

    def row(name: str, auc: float) -> ComparisonRow:
        return ComparisonRow(
            name, "m", "finetune", 32, 10, 0.9, 0.9, float("nan"), auc, "", 0.5,
            None, None, 1.0, None, None, None, None, None, None, [[1, 0], [0, 1]], name,
        )  # fmt: skip

    rows = [row("undefined", float("nan")), row("scored", 0.99)][::order]
    assert leading_model(rows, "roc_auc") == "scored"


@pytest.mark.parametrize("order", [1, -1])
def test_one_auc_told_apart_by_its_last_bit_is_a_tie_for_specificity(order):
    """153/200 came out of scikit-learn as 0.765 and as 0.7649999999999999: that bit, not the
    stated tie-break (specificity), chose the model."""
    from pneumolab.evaluation.comparison import ComparisonRow, leading_model

    def row(name: str, auc: float, specificity: float) -> ComparisonRow:
        return ComparisonRow(
            name, "m", "finetune", 32, 10, 0.9, 0.9, specificity, auc, "", 0.5,
            None, None, 1.0, None, None, None, None, None, None, [[1, 0], [0, 1]], name,
        )  # fmt: skip

    rows = [row("less_specific", 0.765, 0.25), row("more_specific", 0.7649999999999999, 0.5)]
    assert leading_model(rows[::order], "roc_auc") == "more_specific"


def _shifted(name: str, sensitivity: float, specificity: float):
    from pneumolab.evaluation.comparison import ComparisonRow

    return ComparisonRow(
        name, "m", "finetune", 32, 10, 0.9, 0.97, 0.9, 0.99, "", 0.5,
        None, None, 1.0, None, None, 0.9, specificity, sensitivity, None, [[1, 0], [0, 1]], name,
    )  # fmt: skip


@pytest.mark.parametrize("order", [1, -1])
def test_shift_specificity_ranks_only_models_that_keep_the_target_sensitivity(order):
    """A model calling nearly every shifted image NORMAL (sensitivity 0.017) had the best
    shift specificity (1.0) and became the study's best."""
    from pneumolab.evaluation.comparison import leading_model

    rows = [_shifted("misses_pneumonia", 0.017, 1.0), _shifted("keeps_target", 0.98, 0.6)]
    assert leading_model(rows[::order], "shift_specificity", 0.97) == "keeps_target"
    assert leading_model(rows[::order], "shift_specificity") == "misses_pneumonia"  # no floor


def test_shift_specificity_without_a_model_at_the_floor_takes_the_closest_and_says_so():
    from pneumolab.evaluation.comparison import leading_model
    from pneumolab.study.runner import _floor_reason

    rows = [_shifted("far", 0.2, 1.0), _shifted("closest", 0.9, 0.3), _shifted("none", None, 1.0)]
    leader = leading_model(rows, "shift_specificity", 0.97)
    assert leader == "closest"
    reason = _floor_reason(rows[1], 0.97)
    assert "0.9000" in reason and "no model kept the target sensitivity 0.97" in reason
    assert "at least the target 0.97" in _floor_reason(_shifted("kept", 0.97, 0.5), 0.97)


def test_a_comparison_into_a_run_directory_is_refused(tiny_run, capsys):
    """It wrote results.*, margins.md and confusion/ among the run's own files."""
    from pneumolab.cli import main

    run_dir, data = tiny_run
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["compare", str(run_dir), "--data", str(data), "--out", str(run_dir)]) == 2
    assert "is a run directory; give the comparison a folder of its own" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


@pytest.mark.parametrize("one", ["/w/runs/a", Path("/w/runs/a")])
def test_one_run_path_given_alone_is_refused_not_read_letter_by_letter(tmp_path, one):
    """``compare_runs("/w/runs/a", ...)`` said "/: the same run is given twice", and
    ``build_ensemble`` "/: not a finished run"; neither makes its output folder."""
    from pneumolab.evaluation.comparison import compare_runs
    from pneumolab.pipeline.ensemble import build_ensemble

    with pytest.raises(
        TypeError, match=r"compare_runs takes a list of run folders.*\['/w/runs/a'\]"
    ):
        compare_runs(one, tmp_path, "val", tmp_path / "cmp")
    with pytest.raises(TypeError, match="build_ensemble takes a list of run folders"):
        build_ensemble(one, tmp_path / "ens")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "ens").exists()
