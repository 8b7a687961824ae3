"""glibc's malloc told to keep the memory it frees, for the next CPU batch to reuse.

By default glibc serves every allocation over its mmap threshold (128 kB, raised as mappings
are freed, to 32 MB at most) with a fresh mapping from the kernel and unmaps it when freed. A
batch of a network on the CPU allocates and frees tensors of tens to hundreds of MB (a teacher,
EfficientNet-Lite0 on 32 frames: expanded activations of 154 MB each; the student, SoundNet-8 on
16 crops of 20 s: a first layer of 226 MB), so every page of them was faulted in and zeroed
again for every batch. So the programs (pipeline.run, the pipeline's worker processes,
trainer.main, eval.run, eval.predict) ask glibc (`mallopt`), first thing, to serve nothing with
its own mapping (M_MMAP_MAX 0), to keep freed memory rather than hand it back (M_TRIM_THRESHOLD
1 GiB), and to put every thread in the main heap (M_ARENA_MAX 1): a thread's own heaps hold at
most 64 MB, and larger tensors would be mapped anyway; they are few, so threads hardly wait on
its lock. A process then stays at its peak memory between batches instead of returning to it
for every batch.

Measured on the 2-core development machine. Teachers: 40 batches in a worker thread took
31-33 s, kept 11-13 s (peak 1.52 against 1.57 GB); 10 batches cost 11 s of user and 12 s of
system time (4.7 million page faults), kept 8 s and 0.2 s; stage 1 on a one-hour video took
42 s, kept 20 s; two threads' batches at once: 0.2-0.4 GiB more at the peak on 500 clips.
Trainer (CPU, 12 steps of batch 16, the whole run): 24.9-26.1 s, kept 19.9-20.2 s (system time
12 s -> 5-7 s; peak RSS 2.2 -> 2.7 GB); its loader's workers are unchanged (within noise). Huge
pages (THP) cut the faults but not the zeroing: 10 teacher batches took 6.6-8.8 s with them,
3.3 s kept, 9.4 s before. Settings given in the environment at start-up reach every thread;
called at run time, they miss the heaps of threads made before (torch's, pyarrow's), so the
call alone gets most of the gain, not always all.

The same settings go into the environment (MALLOC_*_, where not already set), so that the
processes a program starts (Beam's multi-processing workers, the trainer's loader workers)
begin with them; both images set them too (docker/), for the processes a runner or torchrun
starts. A library import (the HEAR API in a user's process) changes nothing. Without glibc
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
