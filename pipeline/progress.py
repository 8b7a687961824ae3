"""What a run has finished, on disk, shard by shard: what makes it resumable and gives the
final tables.

    OUT/_progress/index/shard-TTTTTT-PPPP.parquet      the shard's index rows (INDEX_SCHEMA)
    OUT/_progress/failures/shard-TTTTTT-PPPP.parquet   the failure rows recorded with it
    OUT/_progress/done/shard-TTTTTT-PPPP.json          written last: the shard is finished,
                                                       and where its task goes on from
    OUT/_progress/done/task-TTTTTT.json                the task is finished

`index/` and `failures/` are Parquet dataset directories (one file per shard); `merge` streams
them, one file at a time, into OUT/index.parquet and OUT/failures.parquet when a run ends.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import files
from schemas import (
    FAILURES_FILE,
    FAILURES_SCHEMA,
    INDEX_FILE,
    INDEX_SCHEMA,
    SHARDS_DIR,
    shard_name,
    shard_order,
    shard_task_and_part,
    table_from_rows,
)

PROGRESS_DIR = "_progress"
MERGED_ROWS_PER_GROUP = 100_000


def shard_stem(task: int, part: int) -> str:
    return shard_name(task, part).removesuffix(".tar")


def _in_shard_order(paths: list[str]) -> list[str]:
    return sorted(paths, key=shard_order)


def _has_samples(marker: str) -> bool:
    """Whether the finished shard has a tar: one of failure rows only has none."""
    try:
        return json.loads(files.read_bytes(marker))["samples"] > 0
    except (ValueError, KeyError, TypeError):  # unreadable: written again to be sure
        return True


def _folder(output: str, kind: str) -> str:
    return files.join(output, PROGRESS_DIR, kind)


def _path(output: str, kind: str, name: str) -> str:
    return files.join(_folder(output, kind), name)


@dataclass(frozen=True)
class Position:
    """Where a task's writing stands: the video (its position in the task) and segment next."""

    video: int = 0
    segment: int = 0


@dataclass(frozen=True)
class ShardDone:
    """The marker of one finished shard."""

    task: int
    part: int
    samples: int
    failures: int
    audio_s: float
    next: Position = field(default_factory=Position)  # where the task's next shard starts


def record_shard(output: str, done: ShardDone, rows: list[dict], failures: list[dict]) -> None:
    """The shard's rows, then its marker (its tar is already in place)."""
    stem = shard_stem(done.task, done.part)
    files.write_atomic(
        _path(output, "index", f"{stem}.parquet"),
        files.table_bytes(table_from_rows(rows, INDEX_SCHEMA)),
    )
    files.write_atomic(
        _path(output, "failures", f"{stem}.parquet"),
        files.table_bytes(table_from_rows(failures, FAILURES_SCHEMA)),
    )
    files.write_atomic(_path(output, "done", f"{stem}.json"), json.dumps(asdict(done)).encode())


def record_task(output: str, task: int) -> None:
    files.write_atomic(_path(output, "done", f"task-{task:06d}.json"), b"{}")


def last_shard(output: str, task: int) -> ShardDone | None:
    """The task's last finished shard (a rerun goes on after it), or None."""
    markers = files.listing(_folder(output, "done"), f"shard-{task:06d}-*.json")
    if not markers:
        return None
    raw = json.loads(files.read_bytes(_in_shard_order(markers)[-1]))
    return ShardDone(**{**raw, "next": Position(**raw["next"])})


def finished_tasks(output: str) -> set[int]:
    """One listing: the tasks whose every shard is finished."""
    markers = files.listing(_folder(output, "done"), "task-*.json")
    return {int(m.rsplit("task-", 1)[1].removesuffix(".json")) for m in markers}


def forget_lost_shards(output: str) -> list[str]:
    """Shards marked finished whose files are gone (deleted, lost by a disk): their markers
    and rows go, with those of their tasks' later shards and the tasks' own markers, so that
    the run writes them again from where each task's last shard left off. One listing of the
    shards and one of the markers; a marker is read only when its shard has no tar (a shard
    of failure rows only has none, and is not lost). Returns the lost shards' names."""
    present = {p.rsplit("/", 1)[-1] for p in files.listing(files.join(output, SHARDS_DIR), "*.tar")}
    done = files.listing(_folder(output, "done"), "shard-*.json")
    markers = {tp: m for m in done if (tp := shard_task_and_part(m))}  # a stray name is not ours
    parts = list(markers)
    # without a tar: lost, or never had one (only failure rows): only those markers are read
    missing = [(t, p) for t, p in parts if shard_name(t, p) not in present]
    lost = sorted(tp for tp in missing if _has_samples(markers[tp]))
    redo_from: dict[int, int] = {}
    for task, part in lost:
        redo_from.setdefault(task, part)
    redone = sorted(
        ((t, p) for t, p in parts if p >= redo_from.get(t, p + 1)), key=lambda tp: -tp[1]
    )
    # in an order a kill cannot spoil: the tasks' markers, then the shards' from the last part
    # down (the lost one's goes last: until then a rerun finds it lost again), then their rows
    stale = [_path(output, "done", f"task-{task:06d}.json") for task in redo_from]
    for kind, ext in (("done", "json"), ("index", "parquet"), ("failures", "parquet")):
        stale += [_path(output, kind, f"{shard_stem(t, p)}.{ext}") for t, p in redone]
    files.delete([path for path in stale if files.exists(path)])
    return [shard_name(task, part) for task, part in lost]


@dataclass
class Totals:
    """What the merged tables hold, counted while they are written."""

    samples: int = 0
    shards: int = 0
    videos_written: int = 0
    audio_s: float = 0.0
    failures_by_stage: Counter = field(default_factory=Counter)

    @property
    def videos_failed(self) -> int:
        return sum(self.failures_by_stage.values())


def merge(output: str) -> Totals:
    """index/ and failures/ -> OUT/index.parquet and OUT/failures.parquet, in shard order
    (within a shard, the tar's order), one file at a time: bounded memory at any size."""
    totals = Totals()
    last_video = None

    def count_index(table: pa.Table) -> None:
        nonlocal last_video
        totals.samples += table.num_rows
        totals.shards += table.num_rows > 0
        totals.audio_s += pc.sum(table.column("duration_s")).as_py() or 0.0
        for video in table.column("video_id").to_pylist():  # a video's rows are consecutive
            totals.videos_written += video != last_video
            last_video = video

    def count_failures(table: pa.Table) -> None:
        totals.failures_by_stage.update(table.column("stage").to_pylist())

    _concatenate(output, "index", INDEX_FILE, INDEX_SCHEMA, count_index)
    _concatenate(output, "failures", FAILURES_FILE, FAILURES_SCHEMA, count_failures)
    return totals


def _concatenate(output: str, kind: str, name: str, schema: pa.Schema, count) -> None:
    # written as it goes under a temporary name, then renamed: never seen partial
    with (
        files.growing_file(files.join(output, name)) as stream,
        pq.ParquetWriter(stream, schema) as writer,
    ):
        pending: list[pa.Table] = []
        rows = 0
        for path in _in_shard_order(files.listing(_folder(output, kind), "shard-*.parquet")):
            table = files.read_parquet(path, schema)
            count(table)
            pending.append(table)
            rows += table.num_rows
            if rows >= MERGED_ROWS_PER_GROUP:
                writer.write_table(pa.concat_tables(pending))
                pending, rows = [], 0
        writer.write_table(pa.concat_tables([schema.empty_table(), *pending]))


def task_finished(output: str, task: int) -> bool:
    return files.exists(_path(output, "done", f"task-{task:06d}.json"))
