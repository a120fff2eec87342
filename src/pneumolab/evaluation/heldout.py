"""The held-out guard: every look at the test split is recorded in ``RUN_DIR/test_evaluations.jsonl``
(time, pneumolab version, git commit, config digest), so a reader can tell how often it was seen."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pneumolab
from pneumolab.files import sha256_of
from pneumolab.run import RunDir

TEST_LOG = "test_evaluations.jsonl"


def _git_commit() -> str | None:
    """The commit of the git checkout that pneumolab's own files run from, with ``-dirty`` where
    those files differ from it (the code that ran is then not that commit's), or None (no git,
    not a checkout; an installed package inside another project's repository is not that
    project's commit: its files are not tracked there)."""
    package = Path(pneumolab.__file__).parent

    def git(*command: str) -> str:
        done = subprocess.run(
            ["git", "-c", "core.fileMode=false", *command],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "--", "__init__.py")
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    try:  # tracked files only: a mode change is no edit
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return f"{commit}-unknown" if commit else None  # the commit, unsure of edits
    return (commit + ("-dirty" if changed else "")) or None


def check_test_log(run: RunDir) -> None:
    """OSError naming the log where a look at the test split could not be recorded (a
    read-only run folder, say), raised before the look: figures seen are figures counted. A
    log it had to create to find out is removed again (a look that then fails left an empty
    one behind)."""
    log = run.root / TEST_LOG
    existed = log.exists()
    with log.open("a"):
        pass
    if not existed:
        log.unlink()


def log_test_evaluation(run: RunDir) -> int:
    """Append one line to ``RUN_DIR/test_evaluations.jsonl`` (held-out guard: every look at the
    test split is recorded) and return how many test evaluations the run has had, this one included."""
    config_hash = sha256_of(run.config) if run.config.is_file() else None
    entry = {
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "pneumolab_version": pneumolab.__version__,
        "git_commit": _git_commit(),
        "config_sha256": config_hash,
    }
    with (run.root / TEST_LOG).open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return count_test_evaluations(run)


def count_test_evaluations(run: RunDir) -> int:
    """How many times the run has been evaluated on the test split (lines of its log)."""
    if not (run.root / TEST_LOG).is_file():
        return 0
    return sum(
        1 for line in (run.root / TEST_LOG).read_text(encoding="utf-8").splitlines() if line.strip()
    )
