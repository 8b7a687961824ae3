"""glibc's malloc told to keep the memory it frees, for the next teacher batch to reuse.

By default glibc serves every allocation over its mmap threshold (128 kB, raised as mappings
are freed, to 32 MB at most) with a fresh mapping from the kernel and unmaps it when freed. A
teacher batch on the CPU allocates and frees tensors of tens to hundreds of MB (EfficientNet-
Lite0, 32 frames: the expanded activations are 154 MB each), so every page of them was faulted
in and zeroed again for every batch. Measured on the 2-core development machine: 40 batches in
a worker thread took 31-33 s, kept 11-13 s (peak memory 1.52 against 1.57 GB); 10 batches cost
11 s of user and 12 s of system time (4.7 million page faults), kept 8 s and 0.2 s; stage 1 on
a one-hour video took 42 s, kept 20 s. So the pipeline's processes ask glibc (`mallopt`) to
serve nothing with its own mapping (M_MMAP_MAX 0), to keep freed memory rather than hand it
back (M_TRIM_THRESHOLD 1 GiB), and to put every thread in the main heap (M_ARENA_MAX 1): a
thread's own heaps hold at most 64 MB, and larger tensors would be mapped anyway; they are few,
so threads hardly wait on its lock. A process then stays at its peak memory between batches
instead of returning to it for every batch (two threads' batches at once: 0.2-0.4 GiB more at
the peak on 500 clips). Huge pages (THP) cut the faults but not the zeroing: 10 batches took
6.6-8.8 s with them, 3.3 s kept, 9.4 s before. Settings given in the environment at start-up
reach every thread; called at run time, they miss the heaps of threads made before (torch's,
pyarrow's), so the call alone gets most of the gain, not always all.

The same settings go into the environment (MALLOC_*_, where not already set), so that the
processes this one starts (Beam's multi-processing workers) begin with them; the pipeline image
sets them too (docker/pipeline.Dockerfile), for worker processes a runner starts. Without glibc
(macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
KEEP_BYTES = 1 << 30  # freed memory under 1 GiB at the heap's top stays with the process
# mallopt's parameters (malloc.h) and the environment variables glibc reads at start-up
SETTINGS = (
    (-4, 0, "MALLOC_MMAP_MAX_"),  # M_MMAP_MAX
    (-1, KEEP_BYTES, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD
    (-8, 1, "MALLOC_ARENA_MAX"),  # M_ARENA_MAX
)


def keep_freed_memory() -> bool:
    """Apply the settings to this process (once is enough; again is harmless) and to the
    processes it starts. False where the C library is not glibc."""
    if not GLIBC:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    for param, value, variable in SETTINGS:
        libc.mallopt(param, value)
        os.environ.setdefault(variable, str(value))
    return True
