"""Scan a dataset root in the Kermany/Kaggle layout: ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pneumolab.data.classes import CLASS_NAMES, SPLIT_NAMES
from pneumolab.data.formats import ACCEPTED, IMAGE_SUFFIXES, UNREAD_IMAGE_SUFFIXES, sniff_file
from pneumolab.data.patients import patient_of
from pneumolab.errors import DataLayoutError, printable
from pneumolab.files import unreadable_folder
from pneumolab.once import Once

log = logging.getLogger(__name__)

LAYOUT_NAMES = frozenset(name.lower() for name in CLASS_NAMES + SPLIT_NAMES)
SCAN_LITTER = frozenset({"dicomdir", "__macosx", "thumbs.db", ".ds_store"})
"""Names (lower case) a folder scan passes over: a DICOM CD's index, macOS and Windows
metadata; and any name starting ``._`` (macOS AppleDouble files, never images)."""
SKIPPED_FOLDERS = frozenset({"@eadir", "#recycle", "#snapshot"})
"""Folders (lower case) a scan does not enter, as it does not enter hidden ones (``.thumbnails``):
a Synology NAS's thumbnails, recycle bin and snapshots hold re-saved copies of the images."""
MAX_SCAN_DEPTH = 100
"""Folder levels a scan goes down (Python 3.11's ``os.walk`` recurses per level: a tree of ~1,000
levels crashed it)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, class index (0 = NORMAL, 1 = PNEUMONIA) and patient ID."""

    path: Path
    label: int
    patient: str


def _child_dirs_by_name(folder: Path) -> dict[str, Path]:
    """Map lower-cased names of sub-folders to their paths; DataLayoutError where two split or
    class folders differ only in case (one of them would be left out)."""
    children: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = path.name.lower()
        if name in children and name in LAYOUT_NAMES:
            raise DataLayoutError(
                f"{children[name]} and {path}: two folders whose names differ only in case; "
                "merge them into one"
            )
        children[name] = path
    return children


def find_splits(root: Path, required: str = "train") -> dict[str, Path]:
    """Return the split folders present under ``root`` (``required`` must be one of them),
    matched case-insensitively."""
    root = Path(root)
    problem = unreadable_folder(root)
    if problem is not None:
        raise DataLayoutError(f"{root}: {problem}")
    if root.exists() and not root.is_dir():
        raise DataLayoutError(f"{root}: a file, not a dataset folder (ROOT/train/CLASS/images)")
    if not root.is_dir():
        raise DataLayoutError(f"{root}: dataset folder not found (run `pneumolab data fetch`?)")
    children = _child_dirs_by_name(root)
    splits = {name: children[name] for name in SPLIT_NAMES if name in children}
    if required not in splits:
        nested = [c for c in children.values() if required in _child_dirs_by_name(c)]
        hint = f"; did you mean {nested[0]}?" if nested else ""
        raise DataLayoutError(
            f"{root}: no '{required}' folder; expected "
            f"ROOT/{required}/{{NORMAL,PNEUMONIA}}/*.jpeg{hint}"
        )
    return splits


def listed_as_image(path: Path) -> bool:
    """Whether a folder scan lists ``path`` as an image: an image suffix on a file, or on a
    symlink whose target is gone (listed, so that reading it names it instead of skipping it
    silently)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _litter(name: str) -> bool:
    return name.lower() in SCAN_LITTER or name.startswith("._")


def _skipped_folder(name: str) -> bool:
    """A folder whose images are copies, not the dataset's: hidden, or a NAS's own."""
    return _litter(name) or name.startswith(".") or name.lower() in SKIPPED_FOLDERS


def image_files(folder: Path, unread_formats: bool = False) -> list[Path]:
    """The images under ``folder`` at any depth, sorted: what :func:`listed_as_image` lists,
    files of any other name whose content is an accepted format (PACS exports often name files
    without a suffix; ``.jfif``), and every folder that could not be read or entered (listed,
    so that reading it names it instead of its images vanishing). Symlinked folders are
    followed, each real folder once. With ``unread_formats`` (a job that answers every file:
    predict, audit, explain), images of formats pneumolab does not read (TIFF, GIF...) too, to
    be refused by name; else, as in a dataset (whose split they would join), they are passed
    over with the other files: in a log line that counts them (a DICOM CD's DICOMDIR and
    macOS/Windows metadata silently).
    DataLayoutError for folders nested deeper than :data:`MAX_SCAN_DEPTH`."""
    found: list[Path] = []
    skipped: list[Path] = []
    walked: set[str] = set()
    top, top_real = len(Path(folder).parts), os.path.realpath(folder)
    for root, folders, names in os.walk(
        folder, onerror=lambda error: found.append(Path(error.filename)), followlinks=True
    ):
        real = os.path.realpath(root)
        above = real != top_real and top_real.startswith(real.rstrip(os.sep) + os.sep)
        if real in walked or above:  # a link back up the tree (beyond the folder scanned: its
            folders.clear()  # class's siblings under this class), or a second link to one folder
            continue
        walked.add(real)
        if not os.access(root, os.X_OK):  # listed, not entered (read without search permission):
            found.append(Path(root))  # its files cannot be opened; listed as an unreadable one
            folders.clear()
            continue
        if folders and len(Path(root).parts) - top >= MAX_SCAN_DEPTH:
            raise DataLayoutError(f"{folder}: folders nested over {MAX_SCAN_DEPTH} levels deep")
        folders[:] = sorted(
            (name for name in folders if not _skipped_folder(name)),
            key=lambda name: os.path.islink(os.path.join(root, name)),  # real first
        )
        for name in names:
            path = Path(root, name)
            if _litter(name):
                continue
            unread = unread_formats and path.suffix.lower() in UNREAD_IMAGE_SUFFIXES
            if listed_as_image(path) or (path.is_file() and (unread or sniff_file(path))):
                found.append(path)
            else:
                skipped.append(path)
    if skipped:
        examples = ", ".join(printable(p.name) for p in sorted(skipped)[:3])
        log.info(
            "%s: %d file(s) passed over, not %s (%s%s)",
            folder,
            len(skipped),
            ACCEPTED,
            examples,
            ", ..." if len(skipped) > 3 else "",
        )
    return sorted(found)


def check_utf8_name(path: str | Path, otherwise: str = "") -> None:
    """DataLayoutError for a file name that is not UTF-8, where it must be (a run's split and
    score files, Arrow tables); ``otherwise`` adds another way out to the message."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataLayoutError(
            f"{printable(str(path))}: file name is not UTF-8 text; rename it "
            f"(e.g. with `convmv -f latin1 -t utf8`){otherwise}"
        ) from None


def scan_split(split_dir: Path) -> list[Sample]:
    """List the images of one split folder, sorted by path, with labels from the class folders
    (other folders in it are named in a warning: their images are left out)."""
    split_dir = Path(split_dir)
    classes = _child_dirs_by_name(split_dir)
    missing = [c for c in CLASS_NAMES if c.lower() not in classes]
    if missing:
        found = sorted(p.name for p in classes.values()) or "none"
        raise DataLayoutError(
            f"{split_dir}: missing class folder(s) {missing}; found {found}. "
            f"Expected one folder per class: {list(CLASS_NAMES)}"
        )
    class_names = {name.lower() for name in CLASS_NAMES}
    others = tuple(
        path.name
        for name, path in classes.items()
        if name not in class_names and name not in SCAN_LITTER and not name.startswith(".")
    )
    if others:
        _warn_left_out(split_dir, others)
    samples: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        folder = classes[name.lower()]
        images = [
            Sample(path=path, label=label, patient=patient_of(path)) for path in image_files(folder)
        ]
        if not images:
            raise DataLayoutError(
                f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this class folder"
            )
        for sample in images:
            check_utf8_name(sample.path)  # the run's split and score files are UTF-8 text
        samples += images
    return samples


_TOLD_LEFT_OUT = Once()
"""Splits (with the folders in them that are not classes) already named in this process."""


def _warn_left_out(split_dir: Path, folders: tuple[str, ...]) -> None:
    """Name the folders of a split that are not classes, once per process (a study scans each
    split once per model)."""
    if not _TOLD_LEFT_OUT.first((split_dir, folders)):
        return
    names = ", ".join(map(printable, folders))
    log.warning(
        "%s: folder(s) %s left out: not one of the classes %s", split_dir, names, list(CLASS_NAMES)
    )


def scan_dataset(root: Path, problems: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    """Scan every split present under ``root``; with ``problems``, a split that cannot be
    scanned is recorded there (split -> why) and left out instead of raising."""
    splits = {}
    for name, path in find_splits(root).items():
        try:
            splits[name] = scan_split(path)
        except DataLayoutError as exc:
            if problems is None:
                raise
            problems[name] = str(exc)
    return splits
