"""Tests for pneumolab.data.layout: scanning ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pneumolab.data.classes import CLASS_NAMES
from pneumolab.data.layout import (
    MAX_SCAN_DEPTH,
    Sample,
    find_splits,
    image_files,
    scan_dataset,
    scan_split,
)
from pneumolab.errors import DataLayoutError, ImageLoadError

NORMAL_FILES = ("IM-0002-0001.jpeg", "IM-0001-0001.jpeg", "NORMAL2-IM-0413-0001.jpeg")
PNEUMONIA_FILES = ("person2_bacteria_3.jpeg", "person1_virus_6.jpeg", "person1_bacteria_1.jpeg")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_split(split_dir: Path, normal: str = "NORMAL", pneumonia: str = "PNEUMONIA") -> None:
    for name in NORMAL_FILES:
        _touch(split_dir / normal / name)
    for name in PNEUMONIA_FILES:
        _touch(split_dir / pneumonia / name)


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    root = tmp_path / "chest_xray"
    for split in ("train", "val", "test"):
        _make_split(root / split)
    return root


def test_scan_dataset_finds_all_splits(dataset_root: Path) -> None:
    data = scan_dataset(dataset_root)
    assert set(data) == {"train", "val", "test"}
    for samples in data.values():
        assert len(samples) == len(NORMAL_FILES) + len(PNEUMONIA_FILES)
        assert all(isinstance(s, Sample) for s in samples)


def test_labels_and_sorted_order(dataset_root: Path) -> None:
    samples = scan_split(dataset_root / "train")
    normal = [s for s in samples if s.label == 0]
    pneumonia = [s for s in samples if s.label == 1]
    assert {s.path.name for s in normal} == set(NORMAL_FILES)
    assert {s.path.name for s in pneumonia} == set(PNEUMONIA_FILES)
    assert all(s.path.parent.name == "NORMAL" for s in normal)
    assert all(s.path.parent.name == "PNEUMONIA" for s in pneumonia)
    # NORMAL (label 0) first, then PNEUMONIA, each class sorted by path.
    assert [s.label for s in samples] == [0] * len(NORMAL_FILES) + [1] * len(PNEUMONIA_FILES)
    assert [s.path for s in normal] == sorted(s.path for s in normal)
    assert [s.path for s in pneumonia] == sorted(s.path for s in pneumonia)
    assert {s.label for s in samples} == {0, 1}


def test_patient_ids_filled_in(dataset_root: Path) -> None:
    samples = scan_split(dataset_root / "train")
    by_name = {s.path.name: s.patient for s in samples}
    assert by_name["IM-0001-0001.jpeg"] == "im-0001"
    assert by_name["NORMAL2-IM-0413-0001.jpeg"] == "normal2-im-0413"
    assert by_name["person1_virus_6.jpeg"] == by_name["person1_bacteria_1.jpeg"] == "person1"


def test_scan_is_deterministic(dataset_root: Path, monkeypatch) -> None:
    first = scan_dataset(dataset_root)
    real_walk = os.walk

    def backwards(top, *args, **kwargs):
        # the same folders and files, listed the other way round
        for root, folders, names in real_walk(top, *args, **kwargs):
            folders.reverse()
            yield root, folders, names[::-1]

    monkeypatch.setattr(os, "walk", backwards)
    assert scan_dataset(dataset_root) == first
    for samples in first.values():
        for label in (0, 1):
            paths = [s.path for s in samples if s.label == label]
            assert paths == sorted(paths)


def test_folders_matched_case_insensitively(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _make_split(root / "Train", normal="normal", pneumonia="Pneumonia")
    _make_split(root / "VAL", normal="Normal", pneumonia="pneumonia")
    splits = find_splits(root)
    assert set(splits) == {"train", "val"}
    assert splits["train"].name == "Train"
    assert splits["val"].name == "VAL"
    data = scan_dataset(root)
    assert [s.label for s in data["train"]] == [0, 0, 0, 1, 1, 1]
    assert len(data["val"]) == 6


def test_only_present_splits_returned(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _make_split(root / "train")
    _make_split(root / "test")
    (root / "notes").mkdir()
    assert set(find_splits(root)) == {"train", "test"}


def test_non_image_files_ignored(tmp_path: Path) -> None:
    split = tmp_path / "train"
    _make_split(split)
    for junk in (".DS_Store", "readme.txt", "Thumbs.db", "image.jpeg.bak", "data.csv"):
        _touch(split / "NORMAL" / junk)
        _touch(split / "PNEUMONIA" / junk)
    (split / "NORMAL" / "folder.jpeg").mkdir()  # a directory with an image suffix
    _touch(split / "NORMAL" / "UPPER.JPG")
    _touch(split / "PNEUMONIA" / "scan.Png")
    samples = scan_split(split)
    names = {s.path.name for s in samples}
    assert names == {*NORMAL_FILES, *PNEUMONIA_FILES, "UPPER.JPG", "scan.Png"}
    assert all(s.path.is_file() for s in samples)


def test_scan_litter_is_passed_over_and_images_are_known_by_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DICOM CD's DICOMDIR and macOS AppleDouble files became error rows (exit code 1); a JPEG
    named .jfif, or a PNG without a suffix, vanished from a folder scan without a word."""
    folder = tmp_path / "site"
    dicm = b"\0" * 128 + b"DICM"
    _touch(folder / "DICOMDIR", dicm)
    _touch(folder / "._scan.jpeg", b"\0\5\26\7")  # AppleDouble: metadata under an image's name
    _touch(folder / "__MACOSX" / "._scan.jpeg", b"\0\5\26\7")
    jfif = _touch(folder / "scan.jfif", b"\xff\xd8\xff\xe0")
    bare = _touch(folder / "1.2.840.99", b"\x89PNG\r\n\x1a\n")
    _touch(folder / "scan.tif", b"II*\0")
    _touch(folder / "notes.txt", b"text")
    # thumbnails re-saved by a viewer or a NAS: counted as more X-rays of the class
    for copies in (".thumbnails", "@eaDir/scan.jfif", "#recycle"):
        _touch(folder / copies / "thumb.jpeg", b"\xff\xd8\xff\xe0")
    with caplog.at_level("INFO", logger="pneumolab"):
        assert image_files(folder) == sorted([bare, jfif])
    assert "2 file(s) passed over, not JPEG, PNG or DICOM (notes.txt, scan.tif)" in caplog.text


def test_class_folders_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    """ROOT/test/normal and ROOT/test/NORMAL: one of them was left out without a word."""
    split = tmp_path / "test"
    _make_split(split)
    _touch(split / "normal" / "IM-0009-0001.jpeg")
    with pytest.raises(DataLayoutError, match="differ only in case"):
        scan_split(split)


def test_folders_nested_too_deep_are_a_clear_error(tmp_path: Path) -> None:
    deep = path = tmp_path / "site"
    deep.mkdir()
    for _ in range(
        MAX_SCAN_DEPTH + 1
    ):  # refused by depth before os.walk's recursion (~1,000 levels) could fail
        path = path / "d"
        path.mkdir()  # one level at a time (mkdir(parents=True) recurses too)
    (path / "scan.jpeg").write_bytes(b"x")
    with pytest.raises(DataLayoutError, match="nested over 100 levels deep"):
        image_files(deep)


def test_a_file_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    import os

    split = tmp_path / "train"
    _make_split(split)
    _touch(split / "NORMAL" / os.fsdecode(b"caf\xe9.jpeg"))
    with pytest.raises(DataLayoutError, match=r"caf\\xe9\.jpeg: file name is not UTF-8 text"):
        scan_split(split)


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataLayoutError, match="nowhere"):
        find_splits(missing)
    with pytest.raises(DataLayoutError, match="not found"):
        scan_dataset(missing)
    missing.write_text("a file")  # it said "dataset folder not found" of a file that is there
    with pytest.raises(DataLayoutError, match=r"nowhere: a file, not a dataset folder"):
        find_splits(missing)


def test_root_is_a_file(tmp_path: Path) -> None:
    path = _touch(tmp_path / "archive.zip")
    with pytest.raises(DataLayoutError, match=r"archive\.zip"):
        find_splits(path)


def test_no_train_folder(tmp_path: Path) -> None:
    root = tmp_path / "myroot"
    _make_split(root / "test")
    with pytest.raises(DataLayoutError) as info:
        find_splits(root)
    message = str(info.value)
    assert "myroot" in message
    assert "'train'" in message
    assert "did you mean" not in message


def test_no_train_folder_hints_nested_layout(tmp_path: Path) -> None:
    root = tmp_path / "download"
    _make_split(root / "chest_xray" / "train")
    (root / "__MACOSX").mkdir()
    with pytest.raises(DataLayoutError) as info:
        find_splits(root)
    message = str(info.value)
    assert "'train'" in message
    assert "did you mean" in message
    assert str(root / "chest_xray") in message


def test_missing_class_folder(tmp_path: Path) -> None:
    split = tmp_path / "train"
    _touch(split / "NORMAL" / "IM-0001-0001.jpeg")
    (split / "other").mkdir()
    with pytest.raises(DataLayoutError) as info:
        scan_split(split)
    message = str(info.value)
    assert str(split) in message
    assert "PNEUMONIA" in message
    assert "other" in message  # lists what it found instead


def test_no_class_folders_at_all(tmp_path: Path) -> None:
    split = tmp_path / "train"
    split.mkdir()
    with pytest.raises(DataLayoutError) as info:
        scan_split(split)
    message = str(info.value)
    assert str(split) in message
    assert all(name in message for name in CLASS_NAMES)
    assert "none" in message


def test_missing_class_folder_through_scan_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _make_split(root / "train")
    _touch(root / "val" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    with pytest.raises(DataLayoutError) as info:
        scan_dataset(root)
    assert str(root / "val") in str(info.value)
    assert "NORMAL" in str(info.value)


def test_class_folders_without_images(tmp_path: Path) -> None:
    split = tmp_path / "train"
    _touch(split / "NORMAL" / "notes.txt")
    (split / "PNEUMONIA").mkdir(parents=True)
    with pytest.raises(DataLayoutError) as info:
        scan_split(split)
    message = str(info.value)
    assert str(split) in message
    assert "no images" in message
    assert ".jpeg" in message


def test_a_dangling_link_is_listed_so_that_reading_it_names_it(tmp_path: Path) -> None:
    split = tmp_path / "train"
    _touch(split / "NORMAL" / "IM-0001-0001.jpeg")
    _touch(split / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    (split / "NORMAL" / "IM-0002-0001.jpeg").symlink_to(tmp_path / "gone.jpeg")
    names = [s.path.name for s in scan_split(split)]
    assert names == ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg", "person1_bacteria_1.jpeg"]


def test_one_class_folder_without_images(tmp_path: Path) -> None:
    split = tmp_path / "train"
    _touch(split / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    _touch(split / "NORMAL" / "notes.txt")
    with pytest.raises(DataLayoutError, match="NORMAL"):
        scan_split(split)


def test_linked_folders_are_followed_once_and_unreadable_ones_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    site = tmp_path / "site"
    _touch(site / "a.jpeg")
    _touch(site / "zreal" / "d.png")
    (site / "alias").symlink_to(site / "zreal")  # listed under its real name, whatever the order
    _touch(tmp_path / "elsewhere" / "b.png")
    (site / "linked").symlink_to(tmp_path / "elsewhere")
    (site / "loop").symlink_to(site)  # back up the tree: walked once
    _touch(site / "locked" / "c.jpeg")
    scandir = os.scandir

    def refuse_locked(path):  # what a folder without read permission does (tests may run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    assert image_files(site) == [
        site / "a.jpeg",
        site / "linked" / "b.png",
        site / "locked",
        site / "zreal" / "d.png",
    ]


def test_a_link_above_the_folder_scanned_never_pulls_in_its_siblings(tmp_path: Path) -> None:
    """``PNEUMONIA/loop -> ..`` walked the whole split: every NORMAL image was listed again
    under PNEUMONIA (trained and scored with the wrong label)."""
    split = tmp_path / "train"
    _make_split(split)
    (split / "PNEUMONIA" / "loop").symlink_to("..")
    (split / "PNEUMONIA" / "root").symlink_to(tmp_path)
    assert image_files(split / "PNEUMONIA") == sorted((split / "PNEUMONIA").glob("*.jpeg"))


def test_images_of_formats_not_read_are_listed_to_be_refused_by_name(tmp_path):
    """A 16-bit TIFF export vanished from a results file, counted only in a log line; a dataset
    scan still passes them over (listed, they joined the validation split's grouping)."""
    from PIL import Image

    from pneumolab.data.imageio import load_image

    for name in ("scan.tif", "film.BMP", "clip.gif"):
        Image.new("L", (40, 40)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    listed = image_files(tmp_path, unread_formats=True)
    assert [p.name for p in listed] == ["clip.gif", "film.BMP", "scan.tif"]
    assert image_files(tmp_path) == []
    with pytest.raises(ImageLoadError, match=r"scan\.tif: a TIFF image, not an image file of an"):
        load_image(tmp_path / "scan.tif")
