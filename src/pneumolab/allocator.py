"""Two policies for glibc's ``malloc`` (Linux), one per kind of process.

:func:`reuse_freed_memory`, for the compute commands (the ``pneumolab`` console script calls it
before anything else): glibc gives blocks above its mmap threshold (128 KiB, raised up to 32 MiB
as mapped blocks are freed) a mapping of their own and unmaps them when freed, so each batch's
largest activation tensors (hundreds of MB at 224 px) come back as fresh pages, every one zeroed
by the kernel on first touch. On a 2-core CPU that page-fault churn made PyTorch scoring 1.7–2.2x
slower (benchmarks/allocator.py). With mappings off (``M_MMAP_MAX`` 0) and the heap trimmed only
beyond 2 GiB free, freed blocks stay in the process and the next batch reuses them; the price is
a resident size that stays near its peak. A block over 64 MiB allocated outside the main thread
is still mapped and unmapped each time (glibc's thread arenas grow by at most 64 MiB); training
and scoring allocate theirs on the main thread. PyTorch's CPU tuning guide recommends jemalloc or
TCMalloc for the same reuse; this gets it without preloading a library.

:func:`release_large_buffers_when_freed`, for ``pneumolab serve``: the opposite, so that a
decoded upload's memory goes back to the system when the request ends.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

log = logging.getLogger(__name__)

SYSTEM_MALLOC_VARIABLE = "PNEUMOLAB_SYSTEM_MALLOC"
"""Set (to anything but empty) to leave ``malloc`` as the system configured it."""
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
"""glibc's defaults of those settings."""
REUSE_TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the heap's top beyond which it is given back (bytes; ``mallopt``'s largest)."""
LEGACY_MALLOC_VARIABLES = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
"""glibc's older environment variables for the same settings."""


def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded through ctypes; None where libc is not glibc or ctypes is missing."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except (ImportError, OSError):
        return None


def _glibc_mallopt(settings: dict[int, int]) -> bool:
    """``mallopt`` each ``parameter: value``, all of them tried; False where libc is not glibc
    or cannot be reached from Python (nothing changed), or where glibc refused one."""
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    results = [mallopt(parameter, value) for parameter, value in settings.items()]
    return all(result == 1 for result in results)


def _preloaded_malloc() -> bool:
    """Whether the process's ``malloc`` is another than glibc's (jemalloc or TCMalloc through
    ``LD_PRELOAD``, a sanitiser): the address the process resolves differs from glibc's own."""
    glibc = _glibc()
    if glibc is None:
        return False
    import ctypes

    try:
        process, own = (
            ctypes.cast(lib.malloc, ctypes.c_void_p).value for lib in (ctypes.CDLL(None), glibc)
        )
    except (OSError, AttributeError):
        return False
    return process != own


def _malloc_chosen_by_user() -> str | None:
    """Why the process's ``malloc`` is the user's choice and not to be changed, or None."""
    if os.environ.get(SYSTEM_MALLOC_VARIABLE):
        return SYSTEM_MALLOC_VARIABLE
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    legacy = next((name for name in LEGACY_MALLOC_VARIABLES if name in os.environ), None)
    if legacy is not None:
        return legacy
    if _preloaded_malloc():
        return "another malloc than glibc's (LD_PRELOAD: jemalloc, tcmalloc...)"
    return None


def reuse_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of unmapping it (see the module's
    docstring); once per process, before the heavy work. False where nothing was changed: not
    glibc, ``PNEUMOLAB_SYSTEM_MALLOC`` set, or ``malloc`` already chosen at start (malloc
    settings in ``GLIBC_TUNABLES`` or glibc's ``MALLOC_*_`` variables, or another allocator
    such as jemalloc or TCMalloc preloaded)."""
    chosen = _malloc_chosen_by_user()
    if chosen is not None:
        log.debug("malloc left as it is: %s", chosen)
        return False
    return _glibc_mallopt({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: REUSE_TRIM_THRESHOLD})


def release_large_buffers_when_freed(threshold: int = 1 << 20) -> bool:
    """glibc: allocate every buffer of ``threshold`` bytes or more with mmap, so a decoded
    image's memory returns to the system when it is freed. Without it glibc raises that
    threshold to 32 MB after the first large free, and each of its per-thread arenas (up to 8
    per core) keeps the peak of the decodes its thread ran. Undoes :func:`reuse_freed_memory`
    (mappings back on, glibc's default trim threshold) unless ``malloc`` is the user's choice,
    whose other settings are kept. False where libc is not glibc."""
    settings = {M_MMAP_THRESHOLD: threshold}
    if _malloc_chosen_by_user() is None:
        settings = {
            M_MMAP_MAX: DEFAULT_MMAP_MAX,
            M_TRIM_THRESHOLD: DEFAULT_TRIM_THRESHOLD,
        } | settings
    return _glibc_mallopt(settings)
