"""Host memory, the one way each thing is done: giving freed memory back to the OS (the catalog after its build,
prepare after each shard), and keeping what a training step frees for the next step (training and pretraining).

Arrow's allocator keeps freed pages for reuse and glibc keeps what C++ and Python freed in its heap until trimmed:
a process that just freed a large temporary would otherwise hold it as RSS for the rest of its life, and the next
temporary would land in another place of a fragmented heap, so RSS would creep with every repetition.
"""

from __future__ import annotations

import ctypes
import os

import pyarrow as pa

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, where a freed one is reused; 256 MiB covers a step's temporaries on a CPU
# (activations, flat optimizer buffers of models up to ~60M parameters) and leaves model-sized buffers to mmap.
RETAIN_MMAP_THRESHOLD = 256 << 20
# Free memory at the top of the heap is given back to the OS only beyond this.
RETAIN_TRIM_THRESHOLD = 1 << 30
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def give_back_freed_memory() -> None:
    """Return Arrow's unused pool pages and glibc's free heap pages to the OS (milliseconds)."""
    pa.default_memory_pool().release_unused()
    try:
        # The symbols already loaded into this process (libc's among them): no library search.
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        pass


def retain_freed_memory() -> bool:
    """Keep what a training step frees in this process for the next step: glibc otherwise maps every block over
    128 KiB (gradients, optimizer temporaries, activations) fresh from the kernel and unmaps it when freed, so each
    step page-faults its memory in again -- 4-7 % of a tiny model's CPU step (BENCHMARKS.md, "Training speed").
    False, changing nothing, where the C library is not glibc or the environment already sets glibc's MALLOC_*
    thresholds (the user's choice wins). Process-wide and irreversible; RSS then stays near its peak."""
    if any(name in os.environ for name in GLIBC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAIN_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD)
    )
