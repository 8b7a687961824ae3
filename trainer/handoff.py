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
decoded sample cost a fifth of a FLAC decode more). A batch travels as a small message (which
block, where its arrays lie, and with a block's first batch its file descriptor); the training
process, while unpickling it, maps a new block (once, for its worker's life) and makes the
batch's tensors views of it: nothing is copied. When the last of those tensors is gone (the
training loop has moved on, or the DataLoader's pin-memory thread has copied the batch into
pinned memory) the block is marked free, and only then may its worker fill it again: nothing
the training process holds can change under it. A batch kept (a reference held) keeps its
block; the worker makes another.

In the training process itself (no workers) batches live in its own reused blocks, freed the
same way; where there is no memfd (not Linux) they are plain tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import secrets
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
    """This process's blocks: (fd, mapping) pairs, reused once their batch is released. A
    block's descriptor travels to the training process once, with its first batch."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.token = (self.pid, secrets.token_hex(8))  # a pid may be reused, the token not
        self.blocks: list[tuple[int, mmap.mmap]] = []
        self.sent: set[int] = set()  # blocks whose descriptor the training process has

    def take(self, nbytes: int) -> int:
        """The index of a free block of at least `nbytes`, marked busy."""
        for index, (_, block) in enumerate(self.blocks):
            if block[0] == FREE and len(block) >= nbytes:
                block[0] = BUSY
                return index
        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create("soundnet-batch", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        block = mmap.mmap(fd, size)
        block[0] = BUSY
        self.blocks.append((fd, block))
        return len(self.blocks) - 1


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


def _views(block: Any, layout: Layout) -> dict[Name, np.ndarray]:
    """The layout's arrays, views of `block` (a mapping, or an array over one)."""
    return {
        name: np.frombuffer(block, dtype, math.prod(shape), offset).reshape(shape)
        for name, shape, dtype, offset in layout
    }


def _leased_tensors(block: mmap.mmap, layout: Layout) -> dict[Name, torch.Tensor]:
    """The batch's tensors, views of `block`; the block is marked free once none is left."""
    lease = np.frombuffer(block, np.uint8)  # every tensor's storage keeps this alive
    weakref.finalize(lease, _release, block)
    return {name: torch.from_numpy(view) for name, view in _views(lease, layout).items()}


def _release(block: mmap.mmap) -> None:
    with contextlib.suppress(ValueError):  # a mapping closed at interpreter exit
        block[0] = FREE


class BatchBuffers:
    """A batch's arrays to fill in place, in one of this process's reused blocks."""

    def __init__(self, specs: Specs):
        self.in_worker = torch.utils.data.get_worker_info() is not None
        self.layout, size = _layout(specs)
        self.index: int | None = None
        if hasattr(os, "memfd_create"):
            self.blocks = _process_blocks()
            self.index = self.blocks.take(size)
            self.arrays = _views(self.blocks.blocks[self.index][1], self.layout)
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
        if self.index is None:
            return _assemble(
                {n: torch.from_numpy(arrays[n][: s[0]]) for n, s, _, _ in layout}, rest
            )
        del arrays
        index, self.index = self.index, None
        if self.in_worker:
            return _Shipped(self.blocks, index, layout, rest)
        return _assemble(_leased_tensors(self.blocks.blocks[index][1], layout), rest)

    def release(self) -> None:
        """Give the block back unused (a batch abandoned part-filled)."""
        self.arrays = {}
        if self.index is not None:
            _release(self.blocks.blocks[self.index][1])
            self.index = None


class _Shipped:
    """A batch in a worker's block, as it travels: pickled as the block's name and layout (and,
    the first time, its descriptor: passing one costs both processes 0.2-0.4 ms); unpickled (in
    the training process) into the batch, views of the block."""

    def __init__(self, blocks: _Blocks, index: int, layout: Layout, rest: dict[str, Any]):
        self.blocks, self.index, self.layout, self.rest = blocks, index, layout, rest

    def __reduce__(self) -> tuple:
        dup = None
        if self.index not in self.blocks.sent:
            dup = DupFd(self.blocks.blocks[self.index][0])
            self.blocks.sent.add(self.index)
        return (_unpack, (self.blocks.token, self.index, dup, self.layout, self.rest))


# the training process's mappings of its workers' blocks: (worker token, index) -> mapping
_mapped: dict[tuple[tuple[int, str], int], mmap.mmap] = {}


def _unpack(
    token: tuple[int, str], index: int, dup: Any, layout: Layout, rest: dict[str, Any]
) -> dict[str, Any]:
    if dup is not None:  # a block new to this process: map it, once, for its worker's life
        fd = dup.detach()
        try:
            _mapped[token, index] = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        _forget_gone_workers()
    return _assemble(_leased_tensors(_mapped[token, index], layout), rest)


def _forget_gone_workers() -> None:
    """Unmap the blocks of workers that have exited (once no batch views them), so that the
    kernel can free them: a loader's workers end with each pass over a validation set."""
    for token, index in list(_mapped):
        try:
            os.kill(token[0], 0)
        except (ProcessLookupError, PermissionError):  # gone (its pid unused, or reused)
            block = _mapped.pop((token, index))
            with contextlib.suppress(BufferError):  # still viewed: unmapped when dropped
                block.close()


def _assemble(tensors: Mapping[Name, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    batch = dict(rest)
    for name, tensor in tensors.items():
        if isinstance(name, tuple):  # a path into nested dicts: ("targets", "objects")
            batch.setdefault(name[0], {})[name[1]] = tensor
        else:
            batch[name] = tensor
    return batch
