"""Giving freed memory back to the OS, the one way it is done (the catalog after its build, prepare after each shard).

Arrow's allocator keeps freed pages for reuse and glibc keeps what C++ and Python freed in its heap until trimmed:
a process that just freed a large temporary would otherwise hold it as RSS for the rest of its life, and the next
temporary would land in another place of a fragmented heap, so RSS would creep with every repetition.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa


def give_back_freed_memory() -> None:
    """Return Arrow's unused pool pages and glibc's free heap pages to the OS (milliseconds)."""
    pa.default_memory_pool().release_unused()
    try:
        # The symbols already loaded into this process (libc's among them): no library search.
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        pass
