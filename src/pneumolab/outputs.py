"""Where outputs may go: never over a run's own files, never over existing work unless asked."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pneumolab.errors import OutputError
from pneumolab.files import folder_for
from pneumolab.run import RunDir

log = logging.getLogger(__name__)


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` if a file may be written there; OutputError naming it otherwise.

    Refused: a folder, a path under a file, any file a run directory owns (weights, metadata,
    split, checkpoints...), an existing file unless ``overwrite``, and a new file whose nearest
    existing folder this process may not write in (before any work, not after it).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give --out a file name")
    owner = RunDir.owning(path)
    if owner is not None:
        raise OutputError(
            f"{path}: belongs to the run {owner.root} and is never overwritten; "
            f"give --out another file name"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    if path.is_symlink() and not overwrite:  # to nowhere: a new file would replace the link
        raise OutputError(
            f"{path}: a link to {os.readlink(path)}, which does not exist; pass --overwrite to "
            "replace the link"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{path}: {parent} is a file, not a folder")
    folder = next(parent for parent in path.parents if parent.exists())  # where it is made
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {folder} (permission denied)")
    return path


def results_file(path: str | Path, overwrite: bool) -> Path:
    """The file a resumable job (``predict --out``) writes through ``path``, checked
    (:func:`check_output`; an existing one is resumed): its real path, links followed, so that
    two spellings of one file share its lock and a link is written through, not replaced. A
    link to nowhere is refused unless ``overwrite`` (then the link is replaced by the file); an
    existing file this process may not write, always (it is appended to, or replaced whole: a
    read-only file is someone's protected results)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return check_output(path, overwrite)
    real = check_output(os.path.realpath(path), overwrite=True)
    if real.exists() and not os.access(real, os.W_OK):
        raise OutputError(
            f"{real}: read-only (permission denied); make it writable to continue it, or give "
            "--out another path"
        )
    return real


def check_suffix(path: Path, suffix: str, what: str) -> None:
    """OutputError unless ``path`` ends in ``suffix`` (any case): ``what`` is written as such a
    file, and a name that says otherwise (``model.txt``) would mislead whoever opens it."""
    if path.suffix.lower() != suffix:
        raise OutputError(f"{path}: {what}; give --out a name ending in {suffix}")


def check_apart(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """OutputError where ``out`` is one of ``inputs`` (a manifest, an image) or lies inside an
    input folder: an output must never replace an input, nor be read as one by the next run."""
    target = Path(os.path.realpath(out))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if target == source:
            raise OutputError(
                f"{out}: is {given}, an input of this command; give --out another path"
            )
        if os.path.isdir(source) and target.is_relative_to(source):  # False where unreachable
            raise OutputError(
                f"{out}: inside {given}, an input folder of this command (its next run would "
                "read what this one writes); give --out a path outside it"
            )


@contextmanager
def writing_alone(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (the file ``NAME.lock`` beside it) while a job writes ``path``;
    OutputError naming it when another process holds it: two jobs appending to one results
    file would interleave their rows."""
    lock = FileLock(path.with_name(path.name + ".lock"), timeout=0)
    try:  # made first: filelock reports a lock file it cannot make as a lock held elsewhere
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(lock.lock_file, os.O_CREAT | os.O_WRONLY, 0o644))
    except OSError as exc:
        raise OutputError(f"{path}: cannot make its lock file {lock.lock_file}: {exc}") from None
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(
            f"{path}: another process is writing it (it holds {lock.lock_file}); wait for it "
            f"to finish, or give --out another file name"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def working_in(folder: Path, job: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself (``flock``: no lock file is left) while
    ``job`` (``training``, ``running a study``) writes in it; OutputError when another process
    holds it: two trainings into one run folder deleted or mixed each other's epochs. A folder
    made here and left empty is removed again. Where there are no such locks (Windows; NFS,
    whose emulated locks refuse a folder's read-only handle), the job goes on unlocked, with a
    warning."""
    with folder_for(folder), _folder_lock(folder, job):
        yield


@contextmanager
def _folder_lock(folder: Path, job: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows
        log.warning("%s: folders cannot be locked here; run one job on it at a time", folder)
        yield
        return
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{folder}: another process is {job} in it; wait for it to finish, or give "
                "--out another folder"
            ) from None
        except OSError as exc:
            log.warning("%s: cannot be locked here (%s); run one job on it at a time", folder, exc)
        yield
    finally:
        os.close(handle)
