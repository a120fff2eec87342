"""Keep freed memory in the process for reuse (Linux with glibc): the ``pneumolab`` command does
this at start.

glibc's ``malloc`` hands every block over 128 KiB to the kernel as its own mapping and unmaps it
when freed, so each batch's activation tensors (hundreds of MB at 224 px) come back as fresh
pages, every one zeroed by the kernel on first touch. On a 2-core CPU that page-fault churn
doubled the time of scoring Xception at 224 px in batches of 64 (benchmarks/allocator.py).
With mappings off (``M_MMAP_MAX = 0``) and the heap trimmed only beyond 2 GiB free, freed blocks
stay in the heap and the next batch reuses them: the price is a resident size that stays near
its peak. The same as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``
set before start, which PyTorch's CPU tuning guide suggests beside jemalloc or tcmalloc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

SYSTEM_MALLOC_VARIABLE = "PNEUMOLAB_SYSTEM_MALLOC"
"""Set (to anything but empty) to leave ``malloc`` as the system configured it."""
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the heap's top beyond which it is given back (bytes; ``mallopt``'s largest)."""


def reuse_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of unmapping it (see the module's
    docstring); once per process, before the heavy work. False where nothing was changed: not
    glibc, ``PNEUMOLAB_SYSTEM_MALLOC`` set, or the allocator already chosen at start
    (``GLIBC_TUNABLES`` or an ``LD_PRELOAD``-ed allocator such as jemalloc or tcmalloc)."""
    if os.environ.get(SYSTEM_MALLOC_VARIABLE):
        return False
    if os.environ.get("GLIBC_TUNABLES") or os.environ.get("LD_PRELOAD"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    changed = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not changed:
        log.debug("mallopt refused the settings: malloc left as the system configured it")
    return changed
