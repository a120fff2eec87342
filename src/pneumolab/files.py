"""Writing files so that a kill never leaves half of one, with the user's umask (a file
written by one account can be read by the group it was made for); and saying why an input
cannot be read where the file system refuses it."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pneumolab.errors import OutputError
from pneumolab.once import Once

log = logging.getLogger(__name__)

_STAGING = ".staging-"  # staged_files' folder: .staging-<machine>-<pid>-<mkdtemp's part>
_STAGING_NAME = re.compile(r"\.staging-(?P<machine>.+)-(?P<pid>\d+)-[a-z0-9_]+")
_MACHINE = re.compile(r"[^@]+(@[0-9a-f]{12})?")
"""A machine as :func:`_machine` names it; ``host@<digits>`` (the PID namespace alone) is how
names read before they carried the boot."""
_TOLD_OLDER_STAGING = Once()
BOOT_ID = "/proc/sys/kernel/random/boot_id"
"""Linux's identifier of this boot of this machine (new at every boot; a cloned VM's differs)."""
PID_NAMESPACE = "/proc/self/ns/pid"
"""This process's PID namespace (its inode number tells namespaces of one boot apart)."""


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks: one hasher for weights, OOD models,
    downloads, duplicate images and the feature cache's keys."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def blocked_by(path: str | Path) -> Path | None:
    """The first folder above ``path``, from the top, that exists and that this process may not
    enter (no search permission): it hides whether ``path`` exists. None where there is none."""
    above = reversed(Path(path).parents)
    return next((p for p in above if os.path.isdir(p) and not os.access(p, os.X_OK)), None)


def permission_problem(path: str | Path) -> str:
    """What a PermissionError on ``path`` means, for an error naming it: a folder above it that
    exists but cannot be read, or ``path`` itself (a file or a folder) that cannot be. Never
    "not found": the path is there, the process may not read it."""
    blocker = blocked_by(path)
    if blocker is not None:
        return (
            f"cannot be reached: the folder {blocker} exists but cannot be read (permission denied)"
        )
    kind = "folder" if os.path.isdir(path) else "file"
    return f"{kind} exists but cannot be read (permission denied)"


def unreadable_folder(folder: str | Path) -> str | None:
    """:func:`permission_problem` of ``folder`` where it is a folder this process may not list
    or enter, or one a folder above it hides; None otherwise (readable, or not there)."""
    if os.path.isdir(folder):
        return None if os.access(folder, os.R_OK | os.X_OK) else permission_problem(folder)
    return permission_problem(folder) if blocked_by(folder) is not None else None


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would have (0666 minus the umask); for files
    that a library created with a private temporary-file mode (safetensors writes 0600)."""
    os.chmod(path, 0o666 & ~current_umask())


def _temporary_beside(path: Path, suffix: str) -> Path:
    """A new, empty file of a unique name in ``path``'s folder (a name a killed writer left
    behind is never reused, even by a process of the same PID); OutputError where ``path`` is a
    folder, which the file could never replace (the error named the temporary, or blamed
    another process)."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file; move it away or write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_failures(path, replace_name=True):  # not the hidden temporary's name
        handle, name = tempfile.mkstemp(suffix=suffix, prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    return Path(name)


@contextmanager
def naming_failures(path: str | Path, replace_name: bool = False) -> Iterator[None]:
    """Re-raise an OSError that names no file (a full disk, a size limit: the write fails, not
    the open), or with ``replace_name`` any OSError, as one naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and not replace_name:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def publish(partial: Path, path: Path, replace: bool = True) -> None:
    """Move the finished ``partial`` to ``path``: renamed over it, or with ``replace=False``
    linked there, which fails where ``path`` exists: OutputError when another process wrote it
    since this job checked (two jobs writing one new file: the second never replaces the
    first's). Where the filesystem has no hard links, checked then renamed."""
    if replace:
        os.replace(partial, path)
        return
    try:
        os.link(partial, path)
    except FileExistsError:
        raise OutputError(
            f"{path}: written by another process while this one was writing it; pass "
            "--overwrite to replace it"
        ) from None
    except OSError:  # a filesystem without hard links (FAT, some network shares)
        if path.exists():
            raise OutputError(f"{path}: already exists; pass --overwrite to replace it") from None
        os.replace(partial, path)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", replace: bool = True, **open_args: Any
) -> Iterator[IO]:
    """Write ``path`` through a temporary file beside it that :func:`publish` moves there on
    success only, with the umask's mode; ``open_args`` go to :func:`open` (newline...). Text
    is UTF-8 unless ``encoding`` says otherwise, whatever the locale (pages declare it, cards
    hold "—")."""
    path = Path(path)
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")
    tmp = _temporary_beside(path, ".tmp")
    try:
        with naming_failures(path), open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        apply_umask(tmp)
        publish(tmp, path, replace)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(
    path: str | Path, write: Callable[[Path], object], replace: bool = True
) -> Path:
    """Call ``write`` on a temporary file beside ``path`` (for libraries that write to a path,
    such as safetensors), give it the umask's mode (:func:`apply_umask`), then :func:`publish`
    it at ``path``; on failure ``path`` is untouched."""
    path = Path(path)
    partial = _temporary_beside(path, ".partial")
    try:
        with naming_failures(path):
            write(partial)
        apply_umask(partial)
        publish(partial, path, replace)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_bytes_atomically(
    path: str | Path, data: bytes | memoryview, replace: bool = True
) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write` (a library's serialised bytes:
    written by Python, a full disk is an OSError naming ``path``, not the library's error)."""
    with atomic_write(path, "wb", replace) as f:
        f.write(data)
    return Path(path)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def make_folder(folder: Path) -> list[Path]:
    """Make ``folder`` (and its parents) where it is missing; the folders this call made, deepest
    first (none where another process made it meanwhile). OutputError for a link to nowhere or
    a file in its place (``mkdir`` said only "File exists")."""
    if folder.is_symlink() and not folder.exists():
        raise OutputError(f"{folder}: a link to {os.readlink(folder)}, which does not exist")
    for place in (folder, *folder.parents):
        if place.exists() and not place.is_dir():
            where = "" if place == folder else f"{place} "
            raise OutputError(f"{folder}: {where}is a file, not a folder")
    missing = [place for place in (folder, *folder.parents) if not place.exists()]
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return []
    return missing


@contextmanager
def folder_for(folder: Path) -> Iterator[None]:
    """``folder`` made (:func:`make_folder`) where missing for the block, and removed again, with
    the parents this call made, where the block left them empty (a refused or failed job leaves
    nothing)."""
    made = make_folder(folder)
    try:
        yield
    finally:
        for place in made:  # deepest first; one that holds something stops it
            try:
                place.rmdir()
            except OSError:
                break


@contextmanager
def staged_files(folder: str | Path, owned: Collection[str], last: str) -> Iterator[Path]:
    """Write a set of files into ``folder`` as one: yield an empty staging folder inside it (a
    hidden one: on the folder's own file system, writable where the folder is) to write them
    in, sub-folders included; on success ``folder``'s ``last`` file is removed, the staged files
    are moved in with ``last`` at the end (a folder without ``last`` holds an unfinished set),
    and the files of ``owned`` that were not staged are removed (an earlier run's leftovers).
    ``owned`` names files by their path in ``folder`` (``confusion/a.png``). On failure
    ``folder`` is untouched (one made here is removed again). Files in ``folder`` outside
    ``owned`` are kept. The staging folder's name carries this machine and process; one left by
    a killed process is removed by the next call on ``folder`` (:func:`_clear_leftover_staging`)."""
    folder = Path(folder)
    with folder_for(folder):
        _clear_leftover_staging(folder)
        prefix = f"{_STAGING}{_machine()}-{os.getpid()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        try:
            with naming_failures(folder):
                yield staging
            _move_in(staging, folder, owned, last)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_in(staging: Path, folder: Path, owned: Collection[str], last: str) -> None:
    """:func:`staged_files`' commit: the staged files moved into ``folder``, ``last`` last."""
    staged = {
        entry.relative_to(staging).as_posix() for entry in staging.rglob("*") if entry.is_file()
    }
    if last not in staged or not staged <= set(owned):
        raise ValueError(f"staged {sorted(staged)}: must hold {last} and only {sorted(owned)}")
    for name in staged:  # on disk before any is moved in
        with open(staging / name, "rb") as f:
            os.fsync(f.fileno())
    (folder / last).unlink(missing_ok=True)
    for name in sorted(staged - {last}):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, folder / name)
    for name in set(owned) - staged:
        (folder / name).unlink(missing_ok=True)
    os.replace(staging / last, folder / last)


def _machine() -> str:
    """Where a PID names one process, as a staging folder's name carries it: the host name
    (characters a file name may not hold replaced) and, on Linux, ``@`` and 12 hex digits of
    SHA-256 of this boot (:data:`BOOT_ID`: two hosts of one name, a cloned VM, differ) and the
    PID namespace (a container that shares the host name and the folder numbers its processes
    apart; the initial namespace's number is the same on every host). Without /proc, the host
    name alone."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "_"
    try:
        boot = Path(BOOT_ID).read_bytes().strip()
        namespace = os.stat(PID_NAMESPACE).st_ino
    except OSError:
        return host
    return f"{host}@{hashlib.sha256(b'%s %d' % (boot, namespace)).hexdigest()[:12]}"


def _is_dead(pid: int) -> bool:
    """Whether no process of ``pid`` runs here: True only where that is certain (a process of
    another user answers PermissionError: it runs; off POSIX ``os.kill`` would end it)."""
    if os.name != "posix" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def _clear_leftover_staging(folder: Path) -> None:
    """Remove the staging folders in ``folder`` that :func:`staged_files` of a killed process
    left (SIGKILL, out of memory, power loss): those whose name says this machine and a PID that
    runs no more, each logged. Any other ``.staging-*`` folder (another machine's, a live PID's:
    a run writing there now) is left alone and warned about; one named by an older pneumolab
    (before names carried the boot), which is never removed, is warned about once per process.
    Nothing else is touched; links are not followed. A folder this process may not list (a drop
    box) is not looked in."""
    try:
        entries = sorted(folder.iterdir())
    except PermissionError:  # a drop box (mode 0333): written to and entered, never listed
        log.debug("%s: cannot be listed; its leftover staging folders are not looked for", folder)
        return
    here = _machine()
    for entry in entries:
        if not entry.name.startswith(_STAGING) or entry.is_symlink() or not entry.is_dir():
            continue
        name = _STAGING_NAME.fullmatch(entry.name)
        if name is None or not _MACHINE.fullmatch(name["machine"]):
            if _TOLD_OLDER_STAGING.first(entry):
                log.warning(
                    "%s: a hidden staging folder left by an older pneumolab: the files of an "
                    "unfinished write, kept because its name cannot tell whether that run has "
                    "ended; it is safe to delete once no other job writes to %s",
                    entry,
                    folder,
                )
            continue
        if name["machine"] == here and _is_dead(int(name["pid"])):
            shutil.rmtree(entry, ignore_errors=True)  # another run may be clearing it too
            if not entry.exists():
                log.warning(
                    "removed leftover staging folder %s of an interrupted run (pid %s)",
                    entry,
                    name["pid"],
                )
                continue
            owner = f"an interrupted run (pid {name['pid']}), which could not be removed"
        elif name["machine"] != here:
            owner = f"process {name['pid']} on {name['machine']} (another host, boot or container)"
        else:
            owner = f"process {name['pid']}, which is still running"
        log.warning(
            "%s: staging folder of %s; left alone: it can be deleted if no pneumolab run is "
            "writing to %s",
            entry,
            owner,
            folder,
        )
