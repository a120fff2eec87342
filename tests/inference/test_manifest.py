"""Manifests: every row with data names an image; what cannot be read is refused by line."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path

import pytest

from pneumolab.cli import main
from pneumolab.errors import ConfigError
from pneumolab.inference.manifest import manifest_images


def test_csv_paths_are_relative_to_the_manifest_and_blank_rows_are_skipped(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n1,a.png\n,\n\n2,/abs/b.png\n")
    assert manifest_images(manifest).paths == (tmp_path / "a.png", Path("/abs/b.png"))


def test_csv_rows_without_a_path_are_refused_by_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,path\n1,a.png\n2,\n3\n4,"  "\n5,b.png\n')
    with pytest.raises(ConfigError, match=r"m\.csv: no image path at line 3, line 4, line 5 \("):
        manifest_images(manifest)
    manifest.write_text("id,path\n" + "".join(f"{i},\n" for i in range(8)))
    with pytest.raises(ConfigError, match=r"line 6 and 3 more"):
        manifest_images(manifest)


def test_parquet_paths_must_be_text_or_file_system_names(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = tmp_path / "m.parquet"
    not_utf8 = b"caf\xe9.png"
    pq.write_table(pa.table({"path": pa.array([b"a.png", not_utf8])}), manifest)
    assert manifest_images(manifest).paths == (tmp_path / "a.png", tmp_path / os.fsdecode(not_utf8))
    for column in (
        pa.array(["a.png", "b.png"]).dictionary_encode(),  # a pandas category column
        pa.array(["a.png", "b.png"], type=pa.string_view()),
    ):
        pq.write_table(pa.table({"path": column}), manifest)
        assert manifest_images(manifest).paths == (tmp_path / "a.png", tmp_path / "b.png")
    pq.write_table(pa.table({"path": pa.array([1, 2])}), manifest)
    with pytest.raises(ConfigError, match=r"m\.parquet: its 'path' column holds int64, not text"):
        manifest_images(manifest)
    pq.write_table(pa.table({"path": pa.array(["a.png", None, ""])}), manifest)
    with pytest.raises(ConfigError, match=r"m\.parquet: no image path at row 2, row 3"):
        manifest_images(manifest)


def test_a_csv_the_csv_module_cannot_parse_is_named(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "x" * 200_000 + "\n")  # over the csv module's field limit
    with pytest.raises(ConfigError, match=r"m\.csv: unreadable manifest \(field larger"):
        manifest_images(manifest)


def test_a_manifest_without_rows_says_so(tmp_path):
    """A header-only manifest gave "nothing to predict: give image files or folders, or
    --manifest FILE", though a manifest was given."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n\n")
    with pytest.raises(ConfigError, match=r"m\.csv: the manifest lists no images"):
        manifest_images(manifest)


def test_spaces_around_paths_and_names_are_not_part_of_them(tmp_path):
    """`id, path` had no 'path' column, and `scan.jpeg ` named a file that does not exist."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id, path\n1, a/scan.jpeg \n")
    assert manifest_images(manifest).paths == (tmp_path / "a" / "scan.jpeg",)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_manifest_saved_with_another_separator_says_so(tmp_path, separator):
    """A European spreadsheet's `path;label` was refused as having no 'path' column."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path{separator}label\na.jpeg{separator}0\n")
    with pytest.raises(ConfigError, match=re.escape(f"looks {separator!r}-separated")):
        manifest_images(manifest)


def test_a_manifest_that_is_not_utf8_says_how_to_save_it(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path\ncafé.png\n".encode("latin-1"))  # Excel's plain "CSV"
    with pytest.raises(ConfigError, match=r"m\.csv: not UTF-8 text \(byte 8: .*CSV UTF-8"):
        manifest_images(manifest)


def test_a_folder_given_as_the_manifest_is_called_a_folder(tmp_path):
    """It said "manifest file not found" of a folder that is there."""
    with pytest.raises(ConfigError, match=r": a folder, not a manifest file"):
        manifest_images(tmp_path)
    with pytest.raises(ConfigError, match=r"gone\.csv: manifest file not found"):
        manifest_images(tmp_path / "gone.csv")


def missing_told(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "images it lists" in r.getMessage()]


def test_listed_images_that_do_not_exist_are_named_by_manifest_line(tmp_path, caplog):
    """A missing image's error named the image, not where a long manifest lists it."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "here.png").write_bytes(b"")
    manifest = tmp_path / "lists" / "m.csv"
    gone = tmp_path / "elsewhere" / "gone.png"
    manifest.write_text(f"id,path\n1,here.png\n2,scans/x.png\n\n,\n3, {gone} \n")
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        images = manifest_images(manifest)
        images.warn_missing()
    assert images.paths == (manifest.parent / "here.png", manifest.parent / "scans" / "x.png", gone)
    assert missing_told(caplog) == [
        f"{manifest}: 2 of the 3 images it lists not found (each is answered with an error, the "
        f"others still run): {manifest}:3: {manifest.parent / 'scans' / 'x.png'}, "
        f"{manifest}:6: {gone}"  # line 4 empty, line 5 blank cells: as an editor counts them
    ]
    caplog.clear()
    manifest.write_text("path\n" + "".join(f"{i}.png\n" for i in range(7)))
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        manifest_images(manifest).warn_missing()
    assert missing_told(caplog) == [
        f"{manifest}: none of the 7 images it lists found (relative paths are read from the "
        f"manifest's folder, {manifest.parent}): "
        + ", ".join(f"{manifest}:{i + 2}: {manifest.parent / f'{i}.png'}" for i in range(5))
        + " and 2 more"
    ]
    caplog.clear()
    manifest.write_text("path\nhere.png\n")
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        manifest_images(manifest).warn_missing()
    assert missing_told(caplog) == []


def test_a_parquet_manifest_names_a_missing_image_by_row(tmp_path, caplog):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.png").write_bytes(b"")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png"]}), manifest)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        manifest_images(manifest).warn_missing()
    assert missing_told(caplog) == [
        f"{manifest}: 1 of the 2 images it lists not found (each is answered with an error, the "
        f"others still run): {manifest} row 2: {tmp_path / 'b.png'}"
    ]


def test_a_manifest_that_may_not_be_read_says_so(tmp_path, lock):
    """A manifest behind a folder the user may not read stopped ``predict`` with a bare
    "Permission denied" (the Python API: a PermissionError); one not readable itself said
    "unreadable manifest ([Errno 13] ...)". ``lock``: the kernel's refusals, as a user who is
    not root meets them (tests may run as root)."""
    shut = tmp_path / "shut"
    shut.mkdir()
    (shut / "m.csv").write_text("path\na.png\n")
    own = tmp_path / "own.csv"
    own.write_text("path\na.png\n")
    lock(shut)
    lock(own)
    reached = rf"cannot be reached: the folder {re.escape(str(shut))} exists but cannot be read"
    with pytest.raises(ConfigError, match=rf"m\.csv: {reached} \(permission denied\)$"):
        manifest_images(shut / "m.csv")
    with pytest.raises(ConfigError, match=r"own\.csv: file exists but cannot be read \(permission"):
        manifest_images(own)
    with pytest.raises(ConfigError, match=r"gone\.csv: manifest file not found"):
        manifest_images(tmp_path / "gone.csv")


def test_listed_images_behind_a_folder_that_may_not_be_read_are_not_called_missing(
    tmp_path, caplog, lock
):
    """An image in a folder the user may not read was warned about as not found."""
    (tmp_path / "here.png").write_bytes(b"")
    (tmp_path / "shut").mkdir()
    (tmp_path / "shut" / "x.png").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nhere.png\nshut/x.png\ngone.png\n")
    lock(tmp_path / "shut")
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        manifest_images(manifest).warn_missing()
    answered = "(each is answered with an error, the others still run)"
    assert missing_told(caplog) == [
        f"{manifest}: 1 of the 3 images it lists not found {answered}: "
        f"{manifest}:4: {tmp_path / 'gone.png'}",
        f"{manifest}: 1 of the 3 images it lists cannot be reached: a folder on the way exists "
        f"but cannot be read (permission denied) {answered}: {manifest}:3: "
        f"{tmp_path / 'shut' / 'x.png'}",
    ]


def test_an_error_is_told_after_where_the_manifest_lists_its_image(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\na.png\nb.png\na.png\n")
    images = manifest_images(manifest)
    assert images.noted(tmp_path / "b.png", "E") == f"{manifest}:3: E"
    assert images.noted(tmp_path / "x" / ".." / "a.png", "E") == f"{manifest}:2: E"  # first
    assert images.noted(tmp_path / "b.png", f"{manifest}:3: E") == f"{manifest}:3: E"  # once
    assert images.noted(tmp_path / "other.png", "E") == "E"


def test_an_unreadable_listed_image_is_answered_with_its_manifest_line(
    scored, tmp_path, capsys, caplog
):
    """A listed image that failed to decode was answered naming the image only, not where the
    manifest lists it (only a missing one's warning did): the --json line, the error on stderr
    and the results file's error column now begin with ``MANIFEST:LINE: ``; a resumed file
    retries it and names it once."""
    run, images = scored
    (tmp_path / "broken.png").write_text("not an image")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{images[0]}\nbroken.png\n")
    refused = "not an image file of an accepted format (JPEG, PNG or DICOM)"
    assert main(["predict", str(run), "--manifest", str(manifest), "--json"]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    told = f"{manifest}:3: {tmp_path / 'broken.png'}: {refused}"
    assert [line["error"] for line in lines] == ["", told]
    assert told in " ".join(captured.err.split())  # wrapped or not
    out = tmp_path / "results.csv"
    for _ in range(2):  # the second run retries the failed image
        assert main(["predict", str(run), "--manifest", str(manifest), "--out", str(out)]) == 1
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [row["error"] for row in rows] == [
            "",
            f"{manifest}:3: {rows[1]['source']}: {refused}",
        ]


def test_a_refused_out_is_all_a_manifest_job_prints(scored, tmp_path, capsys, caplog):
    """With a manifest listing missing images and an --out that is refused (not a results
    file), the warning about the images came before the refusal; it comes once --out is
    accepted, before scoring."""
    run, images = scored
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{images[0]}\ngone.png\n")
    mine = tmp_path / "mine.csv"
    mine.write_text("id,notes\n1,keep me\n")
    command = ["predict", str(run), "--manifest", str(manifest), "--out"]
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        assert main([*command, str(mine)]) == 2
    err = capsys.readouterr().err
    assert "not a pneumolab results file" in err and "images it lists" not in err
    assert missing_told(caplog) == [] and mine.read_text() == "id,notes\n1,keep me\n"
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        assert main([*command, str(tmp_path / "results.csv")]) == 1
    assert missing_told(caplog) == [
        f"{manifest}: 1 of the 2 images it lists not found (each is answered with an error, the "
        f"others still run): {manifest}:3: {tmp_path / 'gone.png'}"
    ]


def test_a_score_that_is_not_a_number_names_its_manifest_line_in_the_table(
    scored, tmp_path, monkeypatch, capsys
):
    """A listed image whose score was NaN got a table row whose reason named no manifest line,
    though its --json line and its results file row name it, as every other failed image's."""
    import numpy as np

    from pneumolab.inference.prediction import NOT_A_NUMBER
    from pneumolab.inference.predictor import Predictor
    from pneumolab.inference.scores import Scores

    run, images = scored
    monkeypatch.chdir(tmp_path)  # a short manifest path: the table's cell holds it unwrapped
    manifest = Path("m.csv")
    manifest.write_text(f"path\n{images[0]}\n")
    loaded = Predictor.from_run

    def broken(*args, **kwargs):
        predictor = loaded(*args, **kwargs)
        scorer = predictor.scorer
        predictor.scorer = lambda pixels: Scores(np.full(len(pixels), np.nan), scorer(pixels).ood)
        return predictor

    monkeypatch.setattr(Predictor, "from_run", broken)
    assert main(["predict", str(run), "--manifest", str(manifest)]) == 1
    assert f"{manifest}:2: {NOT_A_NUMBER}" in capsys.readouterr().out
