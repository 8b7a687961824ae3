"""Teacher rows for the frames of consecutive videos, in batches that span videos.

Videos go in one after another with their frames (an iterator: a long video's frames are
decoded as the batches need them, never all held); each comes back out, in input order, once
every one of its frames is labelled by every teacher, or as soon as it has failed. So at most
one batch of frames and the videos they belong to are in memory at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from pipeline.errors import InputError, unexpected

V = TypeVar("V")
# frames [N, 224, 224, 3] uint8 -> {head: float32 [N, C]}
Teachers = Callable[[list[np.ndarray]], dict[str, np.ndarray]]


@dataclass(eq=False)  # compared and hashed by identity: one entry per video pushed
class Labelled(Generic[V]):
    """A video and its teacher rows ({head: [num_frames, C]}), or why it failed."""

    video: V
    uri: str
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    error: InputError | None = None
    _parts: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    _frames: int = 0
    _labelled: int = 0
    _all_in: bool = False

    @property
    def ready(self) -> bool:
        return self.error is not None or (self._all_in and self._labelled == self._frames)


class FrameLabeller(Generic[V]):
    def __init__(self, teachers: Teachers, batch_size: int):
        if batch_size < 1:
            raise ValueError("the teacher batch size must be at least 1")
        self.teachers, self.batch_size = teachers, batch_size
        self.videos: deque[Labelled[V]] = deque()
        self.batch: list[tuple[Labelled[V], np.ndarray]] = []

    def push(self, video: V, uri: str, frames: Iterable[np.ndarray]) -> Iterator[Labelled[V]]:
        """Queue a video's frames; yields the videos (earlier ones included) now done."""
        entry: Labelled[V] = Labelled(video, uri)
        self.videos.append(entry)
        decoding = iter(frames)
        try:
            for frame in decoding:
                entry._frames += 1
                self.batch.append((entry, frame))
                if len(self.batch) >= self.batch_size:
                    self._label()
                    yield from self._ready()
                    if entry.error is not None:  # a teacher failed it: the rest goes undecoded
                        break
        except InputError as err:
            self._fail(entry, err)
        except Exception as err:  # noqa: BLE001 - one bad input must never stop the run
            self._fail(entry, unexpected(uri, "decode_frames", err))
        finally:
            if hasattr(decoding, "close"):  # a generator: its decoder's files closed now
                decoding.close()
        entry._all_in = True
        yield from self._ready()

    def fail(self, video: V, uri: str, err: InputError) -> Iterator[Labelled[V]]:
        """A video that failed before it had frames: it comes out in its turn."""
        self.videos.append(Labelled(video, uri, error=err))
        yield from self._ready()

    def finish(self) -> Iterator[Labelled[V]]:
        """Label what is left (a last, partial batch) and yield every remaining video."""
        if self.batch:
            self._label()
        yield from self._ready()
        assert not self.videos, "every video is labelled or failed by now"

    def _ready(self) -> Iterator[Labelled[V]]:
        while self.videos and self.videos[0].ready:
            entry = self.videos.popleft()
            if entry.error is None:
                entry.rows = {
                    h: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
                    for h, parts in entry._parts.items()
                }
            yield entry

    def _fail(self, entry: Labelled[V], err: InputError) -> None:
        entry.error = err
        entry._parts.clear()
        self.batch = [(e, f) for e, f in self.batch if e is not entry]

    def _label(self) -> None:
        """One teacher pass over the batch; when it fails, each video's frames alone, so that
        only the videos whose frames fail are lost."""
        batch, self.batch = self.batch, []
        try:
            self._assign(batch, self.teachers([frame for _, frame in batch]))
        except Exception:  # noqa: BLE001 - find out whose frames it was
            for entry in dict.fromkeys(e for e, _ in batch):
                own = [(e, f) for e, f in batch if e is entry]
                try:
                    self._assign(own, self.teachers([f for _, f in own]))
                except Exception as err:  # noqa: BLE001 - its message names the teacher
                    detail = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                    self._fail(entry, InputError("teacher", f"{entry.uri}: {detail}"))

    @staticmethod
    def _assign(batch: list, rows: dict[str, np.ndarray]) -> None:
        start = 0
        while start < len(batch):
            entry = batch[start][0]
            stop = start
            while stop < len(batch) and batch[stop][0] is entry:
                stop += 1
            if entry.error is None:
                for head, head_rows in rows.items():
                    entry._parts.setdefault(head, []).append(head_rows[start:stop])
                entry._labelled += stop - start
            start = stop
