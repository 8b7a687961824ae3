"""Batches from the loader's worker processes to the training process, through reused memory.

    buffers = BatchBuffers({"wave": ((16, 441000), np.int16), ("targets", "objects"): ...})
    buffers.arrays["wave"][i] = crop               # fill the batch in place (decode into it)
    return buffers.finish({"keys": keys, ...})     # what the worker hands the DataLoader

Every batch crosses from a worker to the training process. torch's own way puts each one in a
fresh block of shared memory, whose pages cost more than decoding its audio: 12 ms of page
faults per batch of 16 crops of 20 s (14 MB) measured on the 2-core development machine, and
the training process pays again to map it and to copy it out. So each process keeps a few
blocks (memfd files it maps once) and reuses them; their pages stay faulted in, and a crop
decoded straight into a reused block costs no more than decoding alone (a fresh array for each
decoded sample cost a fifth of a FLAC decode more). A batch travels as a small message (the
block's file descriptor and where its arrays lie); the training process, while unpickling it,
maps the block (once, and keeps the mapping while it is in use) and makes the batch's tensors
views of it: nothing is copied. When the last of those tensors is gone (the training loop has
moved on, or the DataLoader's pin-memory thread has copied the batch into pinned memory) the
block is marked free, and only then may its worker fill it again: nothing the training process
holds can change under it. A batch kept (a reference held) keeps its block; the worker makes
another.

In the training process itself (no workers) batches live in its own reused blocks, freed the
same way; where there is no memfd (not Linux) they are plain tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import time
import weakref
from collections.abc import Hashable, Mapping
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np
import torch

HEADER = 64  # the block's first byte says whether a batch in it is still in use
ALIGN = 64
FREE, BUSY = 0, 1

Name = Hashable  # "wave", or a path ("targets", head) into the batch's nested dicts
Specs = Mapping[Name, tuple[tuple[int, ...], Any]]
Layout = list[tuple[Name, tuple[int, ...], str, int]]  # (name, shape, dtype, offset)


class _Blocks:
    """This process's blocks: (fd, mapping) pairs, reused once their batch is released."""

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


def _process_blocks() -> _Blocks:
    global _blocks
    if _blocks is None or _blocks.pid != os.getpid():  # a fresh worker: nothing inherited
        _blocks = _Blocks()
    return _blocks


def _layout(specs: Specs) -> tuple[Layout, int]:
    """(name, shape, dtype, offset) of each array in a block, and the block's size."""
    layout, offset = [], HEADER
    for name, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        layout.append((name, tuple(shape), dtype.str, offset))
        offset += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    return layout, offset


def _views(block: mmap.mmap, layout: Layout) -> dict[Name, np.ndarray]:
    return {
        name: np.frombuffer(block, dtype, math.prod(shape), offset).reshape(shape)
        for name, shape, dtype, offset in layout
    }


def _leased_tensors(block: mmap.mmap, layout: Layout) -> dict[Name, torch.Tensor]:
    """The batch's tensors, views of `block`; the block is marked free once none is left."""
    lease = np.frombuffer(block, np.uint8)  # every tensor's storage keeps this alive
    weakref.finalize(lease, _release, block)
    tensors = {}
    for name, shape, dtype, offset in layout:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        view = lease[offset : offset + nbytes].view(dtype).reshape(shape)
        tensors[name] = torch.from_numpy(view)
    return tensors


def _release(block: mmap.mmap) -> None:
    with contextlib.suppress(ValueError):  # a mapping closed at interpreter exit
        block[0] = FREE


class BatchBuffers:
    """A batch's arrays to fill in place, in one of this process's reused blocks."""

    def __init__(self, specs: Specs):
        self.in_worker = torch.utils.data.get_worker_info() is not None
        self.layout, size = _layout(specs)
        self.block: tuple[int, mmap.mmap] | None = None
        if hasattr(os, "memfd_create"):
            self.block = _process_blocks().take(size)
            self.arrays = _views(self.block[1], self.layout)
        else:
            self.arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in specs.items()}

    def finish(self, rest: dict[str, Any], rows: int | None = None) -> Any:
        """The batch: `rest` plus the filled arrays (their first `rows` rows, if given) as
        tensors; from a worker, the message that becomes that batch when the training process
        unpickles it."""
        layout = [
            (name, shape if rows is None else (rows, *shape[1:]), dtype, offset)
            for name, shape, dtype, offset in self.layout
        ]
        arrays, self.arrays = self.arrays, {}  # this side keeps no view of a block it hands over
        if self.block is None:
            return _assemble(
                {n: torch.from_numpy(arrays[n][: s[0]]) for n, s, _, _ in layout}, rest
            )
        del arrays
        fd, block = self.block
        self.block = None
        if self.in_worker:
            return _Shipped(fd, layout, rest)
        return _assemble(_leased_tensors(block, layout), rest)

    def release(self) -> None:
        """Give the block back unused (a batch abandoned part-filled)."""
        self.arrays = {}
        if self.block is not None:
            _release(self.block[1])
            self.block = None


class _Shipped:
    """A batch in a worker's block, as it travels: pickled as the block's descriptor and layout;
    unpickled (in the training process) into the batch, views of the block."""

    def __init__(self, fd: int, layout: Layout, rest: dict[str, Any]):
        self.fd, self.layout, self.rest = fd, layout, rest

    def __reduce__(self) -> tuple:
        return (_unpack, (DupFd(self.fd), self.layout, self.rest))


def _unpack(dup: Any, layout: Layout, rest: dict[str, Any]) -> dict[str, Any]:
    fd = dup.detach()
    try:
        block = _mapping(fd)
    finally:
        os.close(fd)
    return _assemble(_leased_tensors(block, layout), rest)


IDLE_S = 30.0
_mapped: dict[tuple[int, int], list] = {}  # (device, inode) -> [mapping, last used]


def _mapping(fd: int) -> mmap.mmap:
    """The block behind `fd`, as this (the training) process maps it: once, and kept while it
    is in use (mapping a block anew each batch would fault its pages in again). A block unused
    for IDLE_S is forgotten, and unmapped once no batch views it, so that the kernel can free
    it when its worker is gone."""
    now = time.monotonic()
    for key, (old, used) in list(_mapped.items()):
        if now - used > IDLE_S:
            del _mapped[key]
            with contextlib.suppress(BufferError):  # still viewed: unmapped when dropped
                old.close()
    stat = os.fstat(fd)
    key = (stat.st_dev, stat.st_ino)  # unique while mapped: the mapping keeps the file alive
    if key not in _mapped:
        _mapped[key] = [mmap.mmap(fd, stat.st_size), now]
    _mapped[key][1] = now
    return _mapped[key][0]


def _assemble(tensors: Mapping[Name, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    batch = dict(rest)
    for name, tensor in tensors.items():
        if isinstance(name, tuple):  # a path into nested dicts: ("targets", "objects")
            batch.setdefault(name[0], {})[name[1]] = tensor
        else:
            batch[name] = tensor
    return batch
