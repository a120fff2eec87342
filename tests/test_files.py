"""Atomic writes: the target changes only on success, nothing is left beside it, the mode is
the umask's, and a writer killed earlier (its temporary file left behind) blocks nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pneumolab.files import atomic_write, write_atomically, write_text_atomically


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
