"""The held-out log's git commit: pneumolab's own checkout, never a repository around it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import pneumolab
from conftest import dirty_suffix
from pneumolab.evaluation import heldout


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_an_installed_package_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    """A wheel installed into a project's own .venv: git finds the project's repository from the
    package folder, but the package's files are not tracked there (a user's commit was logged)."""
    project = tmp_path / "project"
    package = project / ".venv" / "site-packages" / "pneumolab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (project / "notes.txt").write_text("the user's work")
    _git(project, "init", "-q")
    _git(project, "add", "notes.txt")
    author = ["-c", "user.name=u", "-c", "user.email=u@example.org"]
    _git(project, *author, "commit", "-q", "-m", "the user's commit")
    monkeypatch.setattr(pneumolab, "__file__", str(package / "__init__.py"))
    assert heldout._git_commit() is None
    _git(project, "add", "-f", ".venv/site-packages/pneumolab/__init__.py")  # a vendored copy
    _git(project, *author, "commit", "-q", "-m", "vendor pneumolab")
    assert heldout._git_commit() == _git(project, "rev-parse", "HEAD")
    (package / "__init__.py").chmod(0o755)  # a mode change alone: the same code
    assert heldout._git_commit() == _git(project, "rev-parse", "HEAD")
    (package / "__init__.py").write_text("# edited")  # the code that runs is not the commit's
    assert heldout._git_commit() == _git(project, "rev-parse", "HEAD") + "-dirty"
    (project / "notes.txt").write_text("the user's other work")  # outside pneumolab: clean
    (package / "__init__.py").write_text("")
    assert heldout._git_commit() == _git(project, "rev-parse", "HEAD")


def test_a_checkout_records_its_commit():
    package = Path(pneumolab.__file__).parent
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True)
    if found.returncode != 0:
        pytest.skip("pneumolab does not run from a git checkout here")
    assert heldout._git_commit() == found.stdout.decode().strip() + dirty_suffix(package)
