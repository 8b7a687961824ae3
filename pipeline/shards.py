"""The shards of one task, written one after another as its samples arrive.

Each shard's tar grows under a temporary name as its videos finish and is renamed into place
when the shard is done; its index and failure rows and its marker follow (pipeline/progress.py).
A shard is done when the next sample arrives and the shard already holds its target amount of
audio, or when the task ends: shards of long videos stay near the target, and where a shard
ends depends only on the samples, so a rerun cuts the same shards.

    shards/shard-TTTTTT-PPPP.tar   task T's shard P (P from 0), samples in input order
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import webdataset as wds

from pipeline import files, progress
from pipeline.progress import Position, ShardDone
from schemas import SHARDS_DIR, Sample, encode_sample, index_row, shard_name

log = logging.getLogger("pipeline")


class _OpenShard:
    """One shard being written: its growing tar and the rows that go with it."""

    def __init__(self, output: str, task: int, part: int):
        self.output, self.task, self.part = output, task, part
        self.name = shard_name(task, part)
        self.path = files.join(output, SHARDS_DIR, self.name)
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.audio_s = 0.0
        self._files = ExitStack()
        self._tar: wds.TarWriter | None = None

    def add(self, sample: Sample) -> None:
        if self._tar is None:  # the tar only exists once it has a sample
            stream = self._files.enter_context(files.growing_file(self.path))
            # fixed mtime: a rerun writes identical bytes
            self._tar = self._files.enter_context(wds.TarWriter(stream, encoder=False, mtime=0))
        self._tar.write(encode_sample(sample))
        self.rows.append(index_row(sample.metadata, self.name))
        self.audio_s += sample.metadata.duration_s

    def finish(self, next_position: Position) -> ShardDone:
        self._files.close()  # tar closed, renamed into place
        done = ShardDone(
            self.task, self.part, len(self.rows), len(self.failures), self.audio_s, next_position
        )
        progress.record_shard(self.output, done, self.rows, self.failures)
        if self.rows:
            log.info("wrote %s: %d samples, %.1f min of audio", self.name, len(self.rows),
                     self.audio_s / 60)  # fmt: skip
        return done

    def abandon(self, failure: tuple) -> None:
        """The task failed with `failure` (sys.exc_info()): the temporary tar is deleted, not
        renamed into place (a rerun redoes this shard)."""
        self._files.__exit__(*failure)


class ShardSequence:
    """Samples and failure rows of one task, in input order -> its shards.

    `first_part` and the task's position are where a rerun goes on (after the last shard a
    killed run finished)."""

    def __init__(self, output: str, task: int, audio_target_s: float, first_part: int = 0):
        self.output, self.task, self.audio_target_s = output, task, audio_target_s
        self.current = _OpenShard(output, task, first_part)
        self.finished: list[ShardDone] = []

    def add_sample(self, sample: Sample, position: Position) -> None:
        """`position`: this sample's video (in the task) and segment: where the next shard
        starts if this sample opens one."""
        if self.current.rows and self.current.audio_s >= self.audio_target_s:
            self.finished.append(self.current.finish(position))
            self.current = _OpenShard(self.output, self.task, self.current.part + 1)
        self.current.add(sample)

    def add_failure(self, row: dict) -> None:
        self.current.failures.append(row)

    def close(self, end: Position) -> list[ShardDone]:
        """The task is done: its last shard (even one of failure rows only), then its marker."""
        self.finished.append(self.current.finish(end))
        progress.record_task(self.output, self.task)
        return self.finished

    def __enter__(self) -> ShardSequence:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.current.abandon((kind, value, traceback))
