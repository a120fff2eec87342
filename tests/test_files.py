"""Atomic writes: the target changes only on success, nothing is left beside it, the mode is
the umask's, and a writer killed earlier (its temporary file left behind) blocks nothing; a set
of files written as one (``staged_files``), and the staging folder a killed one left behind."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumolab import files
from pneumolab.errors import OutputError
from pneumolab.files import (
    atomic_write,
    folder_for,
    staged_files,
    write_atomically,
    write_bytes_atomically,
    write_text_atomically,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_success_replaces_the_file_with_the_umasks_mode(tmp_path, umask_027):
    target = tmp_path / "sub" / "meta.json"
    write_text_atomically(target, "{}")
    write_atomically(tmp_path / "w.bin", lambda partial: partial.write_bytes(b"\x00"))
    assert target.read_text() == "{}" and (target.stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "w.bin").stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["meta.json", "sub", "w.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half of the new")
        raise RuntimeError("killed")

    def fail(partial: Path) -> None:
        partial.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(target, fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_new_file_written_meanwhile_by_another_process_is_kept(tmp_path):
    """Without replace, a file that appeared after the job's check is never replaced."""
    target = tmp_path / "model.onnx"

    def another_process_wins(partial: Path) -> None:
        partial.write_bytes(b"mine")
        target.write_bytes(b"theirs")

    with pytest.raises(OutputError, match=r"model\.onnx: written by another process.*--overwrite"):
        write_atomically(target, another_process_wins, replace=False)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left
    write_bytes_atomically(tmp_path / "new.onnx", b"mine", replace=False)
    assert (tmp_path / "new.onnx").read_bytes() == b"mine"


def test_without_hard_links_a_new_file_is_checked_then_renamed(tmp_path, monkeypatch):
    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_bytes_atomically(tmp_path / "new.onnx", b"mine", replace=False)
    assert (tmp_path / "new.onnx").read_bytes() == b"mine"
    with pytest.raises(OutputError, match=r"new\.onnx: already exists"):
        write_bytes_atomically(tmp_path / "new.onnx", b"again", replace=False)
    assert (tmp_path / "new.onnx").read_bytes() == b"mine"


def test_a_temporary_that_cannot_be_made_is_named_as_the_file_asked_for(tmp_path, monkeypatch):
    def refused(suffix, prefix, dir):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}xyz{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as error:
        write_text_atomically(tmp_path / "r.html", "<p>")
    assert error.value.filename == str(tmp_path / "r.html")


@pytest.mark.parametrize("replace", [True, False])
def test_a_folder_where_the_file_goes_is_named_and_kept(tmp_path, replace):
    """It said "Is a directory: '.x.png.k9pof6i6.tmp' -> 'x.png'" (replace) or "written by
    another process while this one was writing it" (not)."""
    (tmp_path / "x.png" / "inside").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"x\.png: is a folder, not a file"):
        write_bytes_atomically(tmp_path / "x.png", b"png", replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    assert (tmp_path / "x.png" / "inside").is_dir()


def test_a_failed_job_removes_the_folders_it_made_and_keeps_the_rest(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), folder_for(tmp_path / "kept" / "a" / "b" / "c"):
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not any(
        (tmp_path / "kept").iterdir()
    )


def test_what_a_killed_writer_left_does_not_block_the_next(tmp_path):
    target = tmp_path / "meta.json"
    for pid in (1, os.getpid()):  # the names writers of before used: a PID repeats in containers
        (tmp_path / f".meta.json.{pid}.tmp").write_text("torn")
    write_text_atomically(target, "{}")
    assert target.read_text() == "{}"


def test_text_is_written_as_utf8_whatever_the_locale(tmp_path):
    """Pages declare UTF-8 and cards hold "—": a C locale must not make the write fail."""
    import os
    import subprocess
    import sys

    target = tmp_path / "page.html"
    text = "'\\u2014 \\u00d7'"  # "— ×" in ASCII (a C locale cannot decode its argv)
    script = f"from pneumolab.files import write_text_atomically as w; w({str(target)!r}, {text})"
    env = os.environ | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    assert target.read_bytes() == "— ×".encode()


def test_a_full_disk_names_the_file_it_was_writing(tmp_path, monkeypatch):
    """ENOSPC comes from write() or fsync(), which name no file: the message must."""
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as raised:
        write_text_atomically(target, "{}")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    with pytest.raises(OSError) as raised:
        write_atomically(target, lambda partial: os.fsync(0))
    assert raised.value.filename == str(target)
    with pytest.raises(OSError) as raised, staged_files(tmp_path / "val", {"a"}, "a") as staging:
        (staging / "a").write_text("1")
        os.fsync(0)
    assert raised.value.filename == str(tmp_path / "val")
    assert [p.name for p in tmp_path.iterdir()] == []


OWNED = {"metrics.json", "scores.csv", "roc.png"}


def _write_set(folder: Path, names: dict[str, str]) -> None:
    with staged_files(folder, OWNED, last="metrics.json") as staging:
        for name, text in names.items():
            (staging / name).write_text(text)


def test_a_set_replaces_the_earlier_one_and_keeps_what_it_does_not_own(tmp_path):
    folder = tmp_path / "eval" / "val"
    _write_set(folder, {"scores.csv": "1", "roc.png": "1", "metrics.json": "1"})
    (folder / "report.html").write_text("a report")
    _write_set(folder, {"scores.csv": "2", "metrics.json": "2"})  # no ROC this time
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "scores.csv": "2", "metrics.json": "2", "report.html": "a report",
    }  # fmt: skip
    assert [p.name for p in tmp_path.joinpath("eval").iterdir()] == ["val"]  # no staging left


def test_a_set_goes_into_a_linked_folder_through_the_link(tmp_path):
    """Staged beside the folder, a set could not be moved into a folder that is a link to (or a
    mount of) another file system: staged inside it, it always can."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    _write_set(tmp_path / "out", {"scores.csv": "1", "metrics.json": "1"})
    assert (tmp_path / "out").is_symlink() and sorted(p.name for p in target.iterdir()) == [
        "metrics.json", "scores.csv",
    ]  # fmt: skip


def test_a_set_moves_its_sub_folders_files_in_and_removes_the_owned_ones_it_lacks(tmp_path):
    """A comparison's confusion figures (``confusion/<name>.png``) are part of its set."""
    folder = tmp_path / "cmp"
    owned = {"results.md", "confusion/a.png", "confusion/b.png", "confusion/c.png"}
    for figures in (["a", "b"], ["c"]):
        with staged_files(folder, owned, last="results.md") as staging:
            (staging / "confusion").mkdir()
            for name in figures:
                (staging / "confusion" / f"{name}.png").write_text(name)
            (staging / "results.md").write_text(" ".join(figures))
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*")} == {
        "confusion", "confusion/c.png", "results.md",
    }  # fmt: skip
    assert (folder / "results.md").read_text() == "c"


def test_a_set_that_fails_leaves_the_earlier_one_whole(tmp_path):
    folder = tmp_path / "val"
    _write_set(folder, {"scores.csv": "1", "roc.png": "1", "metrics.json": "1"})
    with pytest.raises(RuntimeError), staged_files(folder, OWNED, "metrics.json") as staging:
        (staging / "scores.csv").write_text("2")
        raise RuntimeError("killed while drawing the figures")
    assert {p.name: p.read_text() for p in folder.iterdir()} == dict.fromkeys(OWNED, "1")
    assert [p.name for p in tmp_path.iterdir()] == ["val"]


KILLED = """
import os, sys
from pneumolab.files import staged_files
with staged_files(sys.argv[1], {"metrics.json"}, "metrics.json") as staging:
    (staging / "metrics.json").write_text("half")
    print(staging.name, os.getpid(), flush=True)
    os._exit(9)  # SIGKILL, the OOM killer, a power cut: no cleanup runs
"""


@pytest.fixture
def killed(tmp_path):
    """A folder holding a finished set and the staging folder of a process killed while
    writing the next one (which no longer runs), and that process's PID."""
    folder = tmp_path / "val"
    _write_set(folder, {"scores.csv": "1", "roc.png": "1", "metrics.json": "1"})
    done = subprocess.run([sys.executable, "-c", KILLED, folder], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr[-2000:]
    name, pid = done.stdout.split()
    assert (folder / name / "metrics.json").read_text() == "half"
    return folder, folder / name, int(pid)


def test_the_staging_folder_of_a_killed_run_goes_with_the_next_set(killed, caplog):
    folder, leftover, pid = killed
    with (
        caplog.at_level(logging.WARNING, logger="pneumolab"),
        pytest.raises(RuntimeError),
        staged_files(folder, OWNED, "metrics.json") as staging,
    ):
        assert staging.parent == folder and not leftover.exists()
        raise RuntimeError("stopped: the earlier set stays whole")
    assert {p.name: p.read_text() for p in folder.iterdir()} == dict.fromkeys(OWNED, "1")
    assert caplog.messages == [
        f"removed leftover staging folder {leftover} of an interrupted run (pid {pid})"
    ]


def test_staging_folders_that_may_be_a_live_runs_are_kept_and_named_once(killed, caplog):
    """Another host's (or another PID namespace's: a container) PID says nothing here. A file
    or a link of such a name is no staging folder."""
    folder, leftover, pid = killed
    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "kept").write_text("x")
    others = [leftover.rename(folder / f".staging-elsewhere.example-{pid}-abcd1234")]
    if "@" in leftover.name:  # the PID namespace is known (Linux): another one's token
        token = files._machine().split("@")[1]
        others.append(folder / leftover.name.replace(token, f"{int(token, 16) ^ 1:012x}"))
        others[-1].mkdir()
    (folder / ".staging-a-note").write_text("x")
    (folder / leftover.name).symlink_to(outside)
    before = sorted(p.relative_to(folder.parent) for p in folder.parent.rglob("*"))
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        _write_set(folder, {"scores.csv": "2", "metrics.json": "2"})
    assert sorted(p.relative_to(folder.parent) for p in folder.parent.rglob("*")) == [
        p for p in before if p.name != "roc.png"
    ]
    assert len(caplog.messages) == len(others)
    for other, message in zip(sorted(others), caplog.messages, strict=True):
        assert message.startswith(f"{other}: staging folder of ")
        assert message.endswith(f"it can be deleted if no pneumolab run is writing to {folder}")


def test_a_concurrent_runs_staging_folder_is_kept(tmp_path, caplog):
    """Two runs writing one folder at once: the one that starts second leaves the first's
    staging folder alone (its PID runs), and both sets are written, the later one last."""
    folder = tmp_path / "val"
    with staged_files(folder, OWNED, "metrics.json") as first:
        (first / "metrics.json").write_text("first")
        with caplog.at_level(logging.WARNING, logger="pneumolab"):
            _write_set(folder, {"metrics.json": "second"})
        assert caplog.messages == [
            f"{first}: staging folder of process {os.getpid()}, which is still running; left "
            f"alone: it can be deleted if no pneumolab run is writing to {folder}"
        ]
    assert [(p.name, p.read_text()) for p in folder.iterdir()] == [("metrics.json", "first")]


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="no /proc (not Linux)")
def test_a_staging_folder_of_another_boot_with_this_host_name_is_kept(killed, tmp_path, caplog):
    """Two hosts of one name (cloned VMs; containers in the initial PID namespace, whose number
    is the same on every host) writing one shared (NFS) folder: a staging folder the other left,
    named with this host name and a PID that runs no more here, may be its live run. Names
    carried host and PID namespace only, so each host removed the other's live staging folder;
    they carry this boot now (a name of the earlier form is another's, or a pneumolab's of
    before)."""
    folder, leftover, pid = killed
    other_boot = tmp_path / "boot_id"
    other_boot.write_text("0b5e4c3a-1111-4222-8333-444455556666\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "BOOT_ID", str(other_boot))
        there = files._machine()
    host, namespace = there.split("@")[0], os.stat(files.PID_NAMESPACE).st_ino
    assert host == files._machine().split("@")[0] and there != files._machine()
    other = leftover.rename(folder / f".staging-{there}-{pid}-abcd1234")
    before = folder / f".staging-{host}@{namespace}-{pid}-abcd1234"  # as named before
    before.mkdir()
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        _write_set(folder, {"scores.csv": "2", "metrics.json": "2"})
    assert other.is_dir() and before.is_dir()
    # in the folder's order, which the PID namespace's number decides (the token is its hash)
    assert caplog.messages == sorted(
        [
            f"{before}: {OLDER}{folder}",
            f"{other}: staging folder of process {pid} on {there} (another host, boot or "
            f"container); left alone: it can be deleted if no pneumolab run is writing to {folder}",
        ]
    )


OLDER = (
    "a hidden staging folder left by an older pneumolab: the files of an unfinished write, kept "
    "because its name cannot tell whether that run has ended; it is safe to delete once no "
    "other job writes to "
)


def test_an_older_pneumolabs_staging_folder_is_named_once_per_process(tmp_path, caplog):
    """A staging folder named before names carried the boot (or host and PID) is never removed:
    it was warned about at every write into its folder, forever, as possibly a live run's."""
    folder = tmp_path / "val"
    older = [folder / ".staging-k2j4abcd", folder / ".staging-host@4026531836-123-abcd1234"]
    for leftover in older:
        leftover.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        for text in "12":
            _write_set(folder, {"scores.csv": text, "metrics.json": text})
    assert all(leftover.is_dir() for leftover in older)
    assert caplog.messages == [f"{leftover}: {OLDER}{folder}" for leftover in sorted(older)]


def test_without_proc_the_machine_is_the_host_name(monkeypatch, tmp_path):
    monkeypatch.setattr(files, "BOOT_ID", str(tmp_path / "no-proc" / "boot_id"))
    assert "@" not in files._machine() and files._machine()


def test_a_folder_that_may_be_written_but_not_listed_takes_a_set(tmp_path, monkeypatch, caplog):
    """A drop box (mode 0333: written to and entered, never listed) failed with a bare
    PermissionError before anything was written, looking for leftover staging folders. As root,
    whom the mode does not stop, the listing is refused as the kernel refuses a user."""
    folder = tmp_path / "dropbox"
    folder.mkdir()
    folder.chmod(0o333)
    real = Path.iterdir

    def unlisted(path: Path) -> Iterator[Path]:
        if path == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    if os.geteuid() == 0:
        monkeypatch.setattr(Path, "iterdir", unlisted)
    try:
        with caplog.at_level(logging.WARNING, logger="pneumolab"):
            _write_set(folder, {"scores.csv": "1", "metrics.json": "1"})
    finally:
        folder.chmod(0o755)
    assert (folder / "metrics.json").read_text() == "1" and caplog.messages == []
    assert sorted(p.name for p in real(folder)) == ["metrics.json", "scores.csv"]


def test_a_pid_of_another_user_is_alive(killed, monkeypatch, caplog):
    """``os.kill(pid, 0)`` on another account's process fails with PermissionError: it runs."""
    folder, leftover, pid = killed
    real = os.kill

    def not_yours(to: int, signal: int) -> None:
        if to != pid:  # any other process as it is
            return real(to, signal)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_yours)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        _write_set(folder, {"metrics.json": "2"})
    assert leftover.is_dir() and f"process {pid}, which is still running" in caplog.text


def test_a_killed_runs_staging_folder_that_cannot_be_removed_is_named(killed, monkeypatch, caplog):
    folder, leftover, pid = killed
    real = shutil.rmtree

    def read_only(path: Path, ignore_errors: bool = False) -> None:
        if path != leftover:  # only the leftover stays (a read-only mount)
            real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", read_only)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        _write_set(folder, {"metrics.json": "2"})
    assert leftover.is_dir() and caplog.messages == [
        f"{leftover}: staging folder of an interrupted run (pid {pid}), which could not be "
        f"removed; left alone: it can be deleted if no pneumolab run is writing to {folder}"
    ]


def test_a_set_must_hold_its_last_file_and_only_owned_ones(tmp_path):
    for names in ({"scores.csv": "1"}, {"metrics.json": "1", "other.txt": "1"}):
        with pytest.raises(ValueError, match=r"must hold metrics\.json"):
            _write_set(tmp_path / "val", names)
    assert not (tmp_path / "val").exists()


def test_a_folder_that_cannot_be_made_says_why(tmp_path):
    """A link to nowhere, or a file on the way, gave only mkdir's "File exists"."""
    from pneumolab.errors import OutputError
    from pneumolab.files import make_folder

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match=r"a link to .*nowhere, which does not exist"):
        make_folder(tmp_path / "dangling")
    with pytest.raises(OutputError, match=r"a_file/sub: .*a_file is a file, not a folder"):
        make_folder(tmp_path / "a_file" / "sub")
    (tmp_path / "audit").symlink_to(tmp_path / "gone")  # an --out folder that is such a link
    with (
        pytest.raises(OutputError, match="audit: a link to"),
        staged_files(tmp_path / "audit", {"a"}, "a"),
    ):
        pass
    assert make_folder(tmp_path / "new") and not make_folder(tmp_path / "new")
