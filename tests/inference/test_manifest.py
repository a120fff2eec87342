"""Manifests: every row with data names an image; what cannot be read is refused by line."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from pneumolab.errors import ConfigError
from pneumolab.inference.manifest import read_manifest


def test_csv_paths_are_relative_to_the_manifest_and_blank_rows_are_skipped(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n1,a.png\n,\n\n2,/abs/b.png\n")
    assert read_manifest(manifest) == [tmp_path / "a.png", Path("/abs/b.png")]


def test_csv_rows_without_a_path_are_refused_by_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,path\n1,a.png\n2,\n3\n4,"  "\n5,b.png\n')
    with pytest.raises(ConfigError, match=r"m\.csv: no image path at line 3, line 4, line 5 \("):
        read_manifest(manifest)
    manifest.write_text("id,path\n" + "".join(f"{i},\n" for i in range(8)))
    with pytest.raises(ConfigError, match=r"line 6 and 3 more"):
        read_manifest(manifest)


def test_parquet_paths_must_be_text_or_file_system_names(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = tmp_path / "m.parquet"
    not_utf8 = b"caf\xe9.png"
    pq.write_table(pa.table({"path": pa.array([b"a.png", not_utf8])}), manifest)
    assert read_manifest(manifest) == [tmp_path / "a.png", tmp_path / os.fsdecode(not_utf8)]
    for column in (
        pa.array(["a.png", "b.png"]).dictionary_encode(),  # a pandas category column
        pa.array(["a.png", "b.png"], type=pa.string_view()),
    ):
        pq.write_table(pa.table({"path": column}), manifest)
        assert read_manifest(manifest) == [tmp_path / "a.png", tmp_path / "b.png"]
    pq.write_table(pa.table({"path": pa.array([1, 2])}), manifest)
    with pytest.raises(ConfigError, match=r"m\.parquet: its 'path' column holds int64, not text"):
        read_manifest(manifest)
    pq.write_table(pa.table({"path": pa.array(["a.png", None, ""])}), manifest)
    with pytest.raises(ConfigError, match=r"m\.parquet: no image path at row 2, row 3"):
        read_manifest(manifest)


def test_a_csv_the_csv_module_cannot_parse_is_named(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "x" * 200_000 + "\n")  # over the csv module's field limit
    with pytest.raises(ConfigError, match=r"m\.csv: unreadable manifest \(field larger"):
        read_manifest(manifest)


def test_a_manifest_without_rows_says_so(tmp_path):
    """A header-only manifest gave "nothing to predict: give image files or folders, or
    --manifest FILE", though a manifest was given."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n\n")
    with pytest.raises(ConfigError, match=r"m\.csv: the manifest lists no images"):
        read_manifest(manifest)


def test_spaces_around_paths_and_names_are_not_part_of_them(tmp_path):
    """`id, path` had no 'path' column, and `scan.jpeg ` named a file that does not exist."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id, path\n1, a/scan.jpeg \n")
    assert read_manifest(manifest) == [tmp_path / "a" / "scan.jpeg"]


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_manifest_saved_with_another_separator_says_so(tmp_path, separator):
    """A European spreadsheet's `path;label` was refused as having no 'path' column."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path{separator}label\na.jpeg{separator}0\n")
    with pytest.raises(ConfigError, match=re.escape(f"looks {separator!r}-separated")):
        read_manifest(manifest)


def test_a_manifest_that_is_not_utf8_says_how_to_save_it(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path\ncafé.png\n".encode("latin-1"))  # Excel's plain "CSV"
    with pytest.raises(ConfigError, match=r"m\.csv: not UTF-8 text \(byte 8: .*CSV UTF-8"):
        read_manifest(manifest)


def test_a_folder_given_as_the_manifest_is_called_a_folder(tmp_path):
    """It said "manifest file not found" of a folder that is there."""
    with pytest.raises(ConfigError, match=r": a folder, not a manifest file"):
        read_manifest(tmp_path)
    with pytest.raises(ConfigError, match=r"gone\.csv: manifest file not found"):
        read_manifest(tmp_path / "gone.csv")


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
        paths = read_manifest(manifest)
    assert paths == [manifest.parent / "here.png", manifest.parent / "scans" / "x.png", gone]
    assert missing_told(caplog) == [
        f"{manifest}: 2 of the 3 images it lists not found (each is answered with an error, the "
        f"others still run): {manifest}:3: {manifest.parent / 'scans' / 'x.png'}, "
        f"{manifest}:6: {gone}"  # line 4 empty, line 5 blank cells: as an editor counts them
    ]
    caplog.clear()
    manifest.write_text("path\n" + "".join(f"{i}.png\n" for i in range(7)))
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        read_manifest(manifest)
    assert missing_told(caplog) == [
        f"{manifest}: none of the 7 images it lists found (relative paths are read from the "
        f"manifest's folder, {manifest.parent}): "
        + ", ".join(f"{manifest}:{i + 2}: {manifest.parent / f'{i}.png'}" for i in range(5))
        + " and 2 more"
    ]
    caplog.clear()
    manifest.write_text("path\nhere.png\n")
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        read_manifest(manifest)
    assert missing_told(caplog) == []


def test_a_parquet_manifest_names_a_missing_image_by_row(tmp_path, caplog):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.png").write_bytes(b"")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png"]}), manifest)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        read_manifest(manifest)
    assert missing_told(caplog) == [
        f"{manifest}: 1 of the 2 images it lists not found (each is answered with an error, the "
        f"others still run): {manifest} row 2: {tmp_path / 'b.png'}"
    ]
