"""Freed memory kept for reuse (pneumolab.allocator): what the ``pneumolab`` command does at start."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from pneumolab import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

FAULTS_OF_REPEATED_BLOCKS = """
import resource
from pneumolab.allocator import reuse_freed_memory

reused = reuse_freed_memory()


def faults_of_five_blocks():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = bytearray(64 * 2**20)  # malloc'd and written: every page touched
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults_of_five_blocks()  # the first blocks grow the heap
print(reused, faults_of_five_blocks())
"""


def run_blocks(**env: str) -> tuple[bool, int]:
    """(whether the setting applied, minor page faults of five 64 MiB blocks) in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    clean.pop(allocator.SYSTEM_MALLOC_VARIABLE, None)
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_BLOCKS],
        env=clean | env,
        capture_output=True,
        text=True,
        check=True,
    )
    reused, faults = done.stdout.split()
    return reused == "True", int(faults)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_anew():
    """glibc unmapped each freed 64 MiB block: the next one came back as 16,384 fresh pages."""
    reused, faults = run_blocks()
    assert reused
    assert faults < 1_000
    system, system_faults = run_blocks(**{allocator.SYSTEM_MALLOC_VARIABLE: "1"})
    assert not system
    assert system_faults > 5 * 16_384 // 2  # the baseline really faults: the check can fail


@pytest.mark.parametrize(
    "variable, value",
    [
        (allocator.SYSTEM_MALLOC_VARIABLE, "1"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"),
        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2"),
    ],
)
def test_an_allocator_chosen_by_the_user_is_left_alone(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    called = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: called.append(a))
    assert allocator.reuse_freed_memory() is False
    assert called == []


def test_the_console_script_sets_it_before_the_command_line_runs(monkeypatch):
    import pneumolab.cli
    from pneumolab.__main__ import main as console_script

    order = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: order.append("allocator"))
    monkeypatch.setattr(pneumolab.cli, "main", lambda: order.append("cli") or 0)
    assert console_script() == 0
    assert order == ["allocator", "cli"]
