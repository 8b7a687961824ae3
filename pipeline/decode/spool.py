"""A decoded audio track gathered chunk by chunk into one int16 array, held in memory while it
is short and in a temporary file once it is long.

    spool = AudioSpool()
    for chunk in decoded:          # int16 arrays
        spool.write(chunk)
    audio = spool.array()          # one int16 array: in memory, or the file mapped read-only

A video's whole audio is kept until its frames are labelled and its samples written (0.15 GiB an
hour of int16 at 22050 Hz, and twice that while the chunks were joined): in a worker's heap, a
few long recordings at once could run a machine out of memory. Past `SPILL_AFTER_S` of audio the
spool writes to an unnamed temporary file (deleted as it is made, so a killed worker leaves
nothing) and the array is that file mapped: its pages are the kernel's page cache, dropped and
read back again under memory pressure, never swapped or counted against the heap. Short tracks,
nearly every clip, are joined in memory as before.
"""

from __future__ import annotations

import mmap
import tempfile
from typing import BinaryIO

import numpy as np

from schemas import SAMPLE_RATE

SPILL_AFTER_S = 600.0  # 10 minutes: 26 MB in memory at most


class AudioSpool:
    def __init__(self) -> None:
        self.limit = round(SPILL_AFTER_S * SAMPLE_RATE)
        self.chunks: list[np.ndarray] = []
        self.size = 0
        self.file: BinaryIO | None = None  # once spilled

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.int16).reshape(-1)
        self.size += chunk.size
        try:
            if self.file is None and self.size > self.limit:
                self.file = tempfile.TemporaryFile(prefix="soundnet-audio-")  # noqa: SIM115 - array() closes it
                for held in self.chunks:
                    self.file.write(held.data)
                self.chunks = []
            if self.file is not None:
                self.file.write(chunk.data)
            else:
                self.chunks.append(chunk)
        except OSError as err:  # a full disk: say which folder (TMPDIR), not just the errno
            raise OSError(
                err.errno,
                f"cannot hold {self.size / SAMPLE_RATE / 60:.0f} minutes of decoded audio in a "
                f"temporary file in {tempfile.gettempdir()} (TMPDIR): {err.strerror}",
            ) from err

    def array(self) -> np.ndarray:
        """All the audio written, as one int16 array (read-only once spilled); once only."""
        if self.file is None:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        self.file.flush()
        # the mapping keeps the file alive after it is closed, until the array is dropped
        mapped = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        self.file.close()
        return np.frombuffer(mapped, np.int16)
