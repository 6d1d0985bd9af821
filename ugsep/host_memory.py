"""Keep freed host memory in the process instead of handing it back to the OS after each batch.

glibc serves large blocks (a CPU batch's activations: megabytes) with mmap and returns them, or
trims the heap, on free, so the next batch page-faults every page again, a large share of a
CPU score worker's time. PyTorch's CPU tuning guide suggests jemalloc or
tcmalloc for the same reason; this needs no extra library. The cost is that the process keeps
its peak batch memory resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEEP_BYTES = 1 << 30


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; True where it took effect (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
