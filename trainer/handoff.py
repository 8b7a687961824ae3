"""Batches from the loader's worker processes to the training process, through reused memory.

    buffers = BatchBuffers({"wave": ((16, 441000), np.int16), ("targets", "objects"): ...}, pin)
    buffers.arrays["wave"][i] = crop               # fill the batch in place
    return buffers.finish({"keys": keys, ...})     # what the worker hands the DataLoader

Every batch crosses from a worker to the training process. torch's own way puts each one in a
fresh block of shared memory, whose pages cost more than decoding its audio: 12 ms of page
faults per batch of 16 crops of 20 s (14 MB) measured on the 2-core development machine, against
1.4 ms to fill a block again, and the training process pays again to map it. So each worker
keeps a few blocks (memfd files it maps once) and reuses them: a batch travels as a small
message (the block's file descriptor and where its arrays lie), and the training process, while
unpickling it, copies the arrays out of the block (which it maps once and keeps while it is in
use) into the batch's own tensors: pinned memory when the loader pins, so the DataLoader's pin
step copies nothing more. Then it marks the block free with `os.pwrite`, and only then may the
worker fill it again; nothing the training process holds can change under it.

In the training process itself (no workers), or where there is no memfd (not Linux), batches
are plain tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import time
from collections.abc import Hashable, Mapping
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np
import torch

HEADER = 64  # the block's first byte says whether its batch is still to be read out
ALIGN = 64
FREE, BUSY = 0, 1

Name = Hashable  # "wave", or a path ("targets", head) into the batch's nested dicts
Specs = Mapping[Name, tuple[tuple[int, ...], Any]]


class _Blocks:
    """This worker process's blocks: (fd, mapping) pairs, reused once read out."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.blocks: list[tuple[int, mmap.mmap]] = []

    def take(self, nbytes: int) -> tuple[int, mmap.mmap]:
        for fd, block in self.blocks:
            if block[0] == FREE and len(block) >= nbytes:
                block[0] = BUSY
                return fd, block
        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create("soundnet-batch", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        block = mmap.mmap(fd, size)
        block[0] = BUSY
        self.blocks.append((fd, block))
        return fd, block


_blocks: _Blocks | None = None


def _worker_blocks() -> _Blocks:
    global _blocks
    if _blocks is None or _blocks.pid != os.getpid():  # a fresh worker: nothing inherited
        _blocks = _Blocks()
    return _blocks


def _layout(specs: Specs) -> tuple[list[tuple[Name, tuple[int, ...], str, int]], int]:
    """(name, shape, dtype, offset) of each array in a block, and the block's size."""
    layout, offset = [], HEADER
    for name, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        layout.append((name, tuple(shape), dtype.str, offset))
        offset += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    return layout, offset


class BatchBuffers:
    """A batch's arrays to fill in place: in a reused shared block inside a loader worker, else
    in the tensors of the batch itself."""

    def __init__(self, specs: Specs, pin: bool = False):
        self.pin = pin
        in_worker = torch.utils.data.get_worker_info() is not None
        self.block: tuple[int, mmap.mmap] | None = None
        if in_worker and hasattr(os, "memfd_create"):
            self.layout, size = _layout(specs)
            self.block = _worker_blocks().take(size)
            buf = self.block[1]
            self.arrays = {
                name: np.frombuffer(buf, dtype, math.prod(shape), offset).reshape(shape)
                for name, shape, dtype, offset in self.layout
            }
        else:
            self.tensors = {
                name: torch.from_numpy(np.empty(shape, dtype))
                for name, (shape, dtype) in specs.items()
            }
            self.arrays = {name: t.numpy() for name, t in self.tensors.items()}

    def finish(self, rest: dict[str, Any]) -> Any:
        """The batch: `rest` plus the filled arrays as tensors (or, from a worker, the message
        that becomes that batch when the training process unpickles it)."""
        if self.block is None:
            return _assemble(self.tensors, rest)
        self.arrays = {}  # the worker keeps no view of a block it hands over
        return _Shipped(self.block[0], self.layout, rest, self.pin)


class _Shipped:
    """A batch in a worker's block, as it travels: pickled as the block's descriptor and layout;
    unpickled (in the training process) into the batch, read out of the block."""

    def __init__(self, fd: int, layout: list, rest: dict[str, Any], pin: bool):
        self.fd, self.layout, self.rest, self.pin = fd, layout, rest, pin

    def __reduce__(self) -> tuple:
        return (_unpack, (DupFd(self.fd), self.layout, self.rest, self.pin))


def _unpack(dup: Any, layout: list, rest: dict[str, Any], pin: bool) -> dict[str, Any]:
    fd = dup.detach()
    try:
        block = _mapping(fd)
        tensors = {}
        pinned = pin and torch.cuda.is_available()
        for name, shape, dtype, offset in layout:
            if pinned:  # from CUDA's caching host allocator: reused memory, ready to copy
                tensor = torch.empty(shape, dtype=_TORCH_DTYPES[dtype], pin_memory=True)
            else:  # numpy's large arrays get huge pages: a fraction of torch.empty's page faults
                tensor = torch.from_numpy(np.empty(shape, dtype))
            source = np.frombuffer(block, dtype, math.prod(shape), offset).reshape(shape)
            np.copyto(tensor.numpy(), source)
            del source  # no view of the block outlives the copy
            tensors[name] = tensor
        os.pwrite(fd, bytes([FREE]), 0)  # copied out: the worker may fill the block again
    finally:
        os.close(fd)
    return _assemble(tensors, rest)


IDLE_S = 30.0
_mapped: dict[tuple[int, int], list] = {}  # (device, inode) -> [read-only mapping, last used]


def _mapping(fd: int) -> mmap.mmap:
    """The block behind `fd`, as this (the training) process maps it: once, and kept while it
    is in use (mapping a block anew each batch would fault its pages in again). A block unused
    for IDLE_S, its worker gone, is unmapped, so that the kernel can free it."""
    now = time.monotonic()
    for key, (old, used) in list(_mapped.items()):
        if now - used > IDLE_S:
            del _mapped[key]
            with contextlib.suppress(BufferError):
                old.close()
    stat = os.fstat(fd)
    key = (stat.st_dev, stat.st_ino)  # unique while mapped: the mapping keeps the file alive
    if key not in _mapped:
        _mapped[key] = [mmap.mmap(fd, stat.st_size, prot=mmap.PROT_READ), now]
    _mapped[key][1] = now
    return _mapped[key][0]


_TORCH_DTYPES = {
    np.dtype(np.int16).str: torch.int16,
    np.dtype(np.float32).str: torch.float32,
    np.dtype(np.float16).str: torch.float16,
    np.dtype(np.int64).str: torch.int64,
}


def _assemble(tensors: Mapping[Name, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    batch = dict(rest)
    for name, tensor in tensors.items():
        if isinstance(name, tuple):  # a path into nested dicts: ("targets", "objects")
            batch.setdefault(name[0], {})[name[1]] = tensor
        else:
            batch[name] = tensor
    return batch
