"""Inputs the user may not read (``chmod 000``, or behind such a folder) are named as there but
not readable, never as not found, nor as a bare "Permission denied" that stops the whole job.
``lock`` (conftest) refuses the OS calls as the kernel does for a user who is not root: tests
may run as root, whom permission bits do not stop."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pneumolab.cli import main
from pneumolab.data.layout import find_splits
from pneumolab.errors import DataLayoutError
from pneumolab.evaluation.audit import audit_folder
from pneumolab.run import RunDir

DENIED = "exists but cannot be read (permission denied)"


def _folder_with(folder: Path, image: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(image, folder / image.name)
    return folder


def test_predict_names_each_folder_it_may_not_read_and_scores_the_rest(
    scored, tmp_path, capsys, lock
):
    """A path behind a folder the user may not read, or a folder that may be listed but not
    entered (``chmod 644``), stopped the whole job with "PATH: Permission denied" (the other
    images unscored); a folder that may not be read itself said "folder not readable"."""
    run, images = scored
    shut = tmp_path / "shut"
    behind = _folder_with(shut / "sub", images[0])
    listed = _folder_with(tmp_path / "listed", images[1])
    closed = _folder_with(tmp_path / "closed", images[2])
    lock(shut)
    lock(listed, listable=True)
    lock(closed)
    given = [behind, behind / images[0].name, listed, closed, images[3]]
    assert main(["predict", str(run), *map(str, given), "--json"]) == 1
    answers = {
        line["source"]: line["error"]
        for line in map(json.loads, capsys.readouterr().out.splitlines())
    }
    reached = f"cannot be reached: the folder {shut} {DENIED}"
    assert answers == {
        str(behind): f"{behind}: {reached}",
        str(behind / images[0].name): f"{behind / images[0].name}: {reached}",
        str(listed): f"{listed}: folder {DENIED}",
        str(closed): f"{closed}: folder {DENIED}",
        str(images[3]): "",
    }


def test_audit_evaluate_and_datasets_name_a_folder_they_may_not_read(tmp_path, lock):
    """``audit`` and ``evaluate --data`` on a folder behind one the user may not read stopped
    with a bare "Permission denied"; ``evaluate --data`` on a folder not readable itself named
    one of its images ("PATH/train/NORMAL/x.png: Permission denied")."""
    shut = tmp_path / "shut"
    behind = shut / "site"
    behind.mkdir(parents=True)
    closed = tmp_path / "data"
    (closed / "train" / "NORMAL").mkdir(parents=True)
    (closed / "train" / "NORMAL" / "x.png").write_bytes(b"")
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.split.write_text("path,label,patient,subset\ntrain/NORMAL/x.png,0,x,val\n")
    lock(shut)
    lock(closed)
    reached = rf"cannot be reached: the folder {re.escape(str(shut))} {re.escape(DENIED)}"
    with pytest.raises(DataLayoutError, match=rf"site: {reached}; audit reads a folder"):
        audit_folder(run.root, behind)
    with pytest.raises(DataLayoutError, match=rf"data: folder {re.escape(DENIED)}; give the data"):
        run.read_split(closed, "val")
    with pytest.raises(DataLayoutError, match=rf"site: {reached}; give the data folder"):
        run.read_split(behind, "val")
    with pytest.raises(DataLayoutError, match=rf"data: folder {re.escape(DENIED)}$"):
        find_splits(closed)


def test_evaluate_data_names_a_class_folder_it_may_not_read(tmp_path, lock):
    """A class folder of ``--data`` that may not be read (``val/PNEUMONIA`` chmod 000) made its
    images "not under DATA", though the folder is there (docs/cli.md: never named not found)."""
    data = tmp_path / "data"
    for name in ("NORMAL", "PNEUMONIA"):
        (data / "val" / name).mkdir(parents=True)
        (data / "val" / name / "x.png").write_bytes(b"")
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.split.write_text(
        "path,label,patient,subset\nval/NORMAL/x.png,0,a,val\nval/PNEUMONIA/x.png,1,b,val\n"
    )
    shut = data / "val" / "PNEUMONIA"
    lock(shut)
    told = (
        f"{shut / 'x.png'}: cannot be reached: the folder {shut} {DENIED}; 1 of the run's val "
        "images are behind such a folder: give this account read permission"
    )
    with pytest.raises(DataLayoutError, match=f"^{re.escape(told)}$"):
        run.read_split(data, "val")
