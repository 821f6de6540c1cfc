"""Keeping the memory of large numpy temporaries for reuse while a file is read.

The bulk readers make and free arrays of a few MB for every chunk of a file. glibc's malloc
gives such memory back to the system when it is freed (a large block is its own mapping, and
the heap is trimmed when its free top grows past a threshold it adjusts as it goes), so every
chunk faults its pages in again: on the 211 MB log of `benchmarks/read_logs.py` that was
about 100,000 page faults and 0.4 CPU seconds of 2.2. With the two thresholds raised,
freed blocks stay in the heap and the next chunk reuses them; `release` hands the free memory
back once a file is read.

Other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # free memory kept at the top of the heap before it is given back
MAPPED_BYTES = 256 << 20  # blocks at least this large still get their own mapping


@functools.cache
def glibc():
    """The C library when it is glibc, else None."""
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name)
        library.mallopt, library.malloc_trim  # noqa: B018 (glibc has both)
    except (OSError, AttributeError, TypeError):
        return None
    return library


def keep_freed_memory() -> None:
    """Let freed blocks stay in the heap for reuse (for the rest of the process)."""
    library = glibc()
    if library is not None:
        library.mallopt(M_MMAP_THRESHOLD, MAPPED_BYTES)
        library.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)


def release() -> None:
    """Give the heap's free memory back to the system."""
    library = glibc()
    if library is not None:
        library.malloc_trim(0)
