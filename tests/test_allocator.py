"""glibc malloc policies (pneumolab.allocator): freed memory kept for reuse by the ``pneumolab``
command, given back by ``pneumolab serve``."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from pneumolab import allocator

GLIBC = allocator._glibc_mallopt(
    {}
)  # an empty call: True exactly where glibc's mallopt is reachable

FAULTS_OF_REPEATED_BLOCKS = """
import ctypes, resource, sys
from pneumolab import allocator

ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages even where THP is always
applied = [getattr(allocator, policy)() for policy in sys.argv[1:]]


def faults_of_five_blocks():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = bytearray(64 * 2**20)  # malloc'd and written: every page touched
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults_of_five_blocks()  # the first blocks grow the heap
print(all(applied), faults_of_five_blocks())
"""
PAGES_OF_FIVE_BLOCKS = 5 * 64 * 2**20 // 4096


def run_blocks(*policies: str, **env: str) -> tuple[bool, int]:
    """(whether every policy applied, minor page faults of five 64 MiB blocks) in a fresh
    process that applied ``policies`` (functions of pneumolab.allocator) in order."""
    inherited = (
        allocator.SYSTEM_MALLOC_VARIABLE,
        "GLIBC_TUNABLES",
        "LD_PRELOAD",
        *allocator.LEGACY_MALLOC_VARIABLES,
    )
    clean = {k: v for k, v in os.environ.items() if k not in inherited}
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_BLOCKS, *policies],
        env=clean | env,
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def clear_malloc_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """No malloc choice of the user's in this process's environment."""
    for name in (
        allocator.SYSTEM_MALLOC_VARIABLE,
        "GLIBC_TUNABLES",
        *allocator.LEGACY_MALLOC_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(not GLIBC, reason="the policies are glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_anew():
    """glibc unmapped each freed 64 MiB block: the next one came back as 16,384 fresh pages."""
    assert run_blocks()[1] > PAGES_OF_FIVE_BLOCKS // 2  # the baseline really faults: this can fail
    opted_out, faults = run_blocks("reuse_freed_memory", **{allocator.SYSTEM_MALLOC_VARIABLE: "1"})
    assert not opted_out
    assert faults > PAGES_OF_FIVE_BLOCKS // 2
    applied, faults = run_blocks("reuse_freed_memory")
    assert applied
    assert faults < 1_000


@pytest.mark.skipif(not GLIBC, reason="the policies are glibc's")
def test_the_servers_policy_undoes_reuse():
    """`pneumolab serve` runs under the console script, which chose reuse first: its decoded
    uploads must still go back to the system when freed."""
    applied, faults = run_blocks("reuse_freed_memory", "release_large_buffers_when_freed")
    assert applied
    assert faults > PAGES_OF_FIVE_BLOCKS // 2


@pytest.mark.parametrize(
    "variable, value",
    [
        (allocator.SYSTEM_MALLOC_VARIABLE, "1"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"),
        ("MALLOC_TRIM_THRESHOLD_", "1000000"),
    ],
)
def test_a_malloc_chosen_by_the_user_is_left_alone(monkeypatch, variable, value):
    clear_malloc_choices(monkeypatch)
    monkeypatch.setenv(variable, value)
    called = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda settings: called.append(settings))
    assert allocator.reuse_freed_memory() is False
    assert called == []


def test_serve_keeps_the_users_malloc_settings_but_its_threshold(monkeypatch):
    clear_malloc_choices(monkeypatch)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
    set_by_serve = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda settings: set_by_serve.append(settings))
    allocator.release_large_buffers_when_freed()
    assert set_by_serve == [{allocator.M_MMAP_THRESHOLD: 1 << 20}]


@pytest.mark.skipif(not GLIBC, reason="the policies are glibc's")
@pytest.mark.skipif(
    bool(os.environ.get("LD_PRELOAD")), reason="a preloaded library may be a malloc"
)
def test_other_tunables_and_glibcs_own_malloc_are_no_choice(monkeypatch):
    """Only malloc settings count: an unrelated GLIBC_TUNABLES or preload left reuse off."""
    clear_malloc_choices(monkeypatch)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert allocator._malloc_chosen_by_user() is None


def test_no_reachable_glibc_changes_nothing_and_raises_nothing(monkeypatch):
    def unreachable(*args: object) -> None:
        raise OSError("libc.so.6: cannot open shared object file")

    clear_malloc_choices(monkeypatch)
    monkeypatch.setattr(ctypes, "CDLL", unreachable)
    assert allocator.reuse_freed_memory() is False
    assert allocator.release_large_buffers_when_freed() is False


def test_the_console_script_sets_it_before_the_command_line_runs(monkeypatch):
    import pneumolab.cli
    from pneumolab.__main__ import main as console_script

    order = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: order.append("allocator"))
    monkeypatch.setattr(pneumolab.cli, "main", lambda: order.append("cli") or 0)
    assert console_script() == 0
    assert order == ["allocator", "cli"]
