"""The run's plan: every input video and the shard task it belongs to, written under the
output before any work starts, so that the job graph stays the same size whatever the corpus
(the pipeline reads the plan with Beam's Parquet IO instead of embedding it).

    OUT/_plan/videos-NNNNN.parquet   PLAN_SCHEMA rows, one row group per task
    OUT/_plan/tasks.parquet          TASKS_SCHEMA rows: task, its plan file and row group
    OUT/_plan/config.json            what decides the output's content (written last)

A task is up to `--videos-per-shard` consecutive inputs: one worker call writes its shards, one
after another (a long video's task rolls over to a new shard when one holds its target audio).
The plan is deterministic, so a rerun over the same output gets the same tasks; a rerun with
other inputs or options is refused.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import files
from pipeline.errors import os_reason
from pipeline.inputs import InputListError
from schemas import PLAN_SCHEMA, TASKS_SCHEMA, make_video_id

PLAN_DIR = "_plan"
CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.parquet"
PENDING_PREFIX = "pending-"
# --videos-per-shard 0 (the default): enough tasks for this many worker threads, 4 to 1000
# videos a task (1000 short clips fill a shard near its audio target)
AUTO_TASKS, AUTO_MIN_VIDEOS, AUTO_MAX_VIDEOS = 64, 4, 1000
TASKS_PER_PLAN_FILE = 1000  # 100,000 videos a file at the default task size


class ShardTask(NamedTuple):
    """What crosses the pipeline's one shuffle: where a task's videos are listed."""

    task: int
    plan_file: str  # name of a PLAN_SCHEMA file in the output's _plan/ (earlier runs: its path)
    row_group: int
    videos: int


class PlannedVideo(NamedTuple):
    position: int  # within its task
    uri: str
    video_id: str


@dataclass(frozen=True)
class Plan:
    tasks: int
    videos: int
    tasks_file: str


def plan_path(output: str, name: str) -> str:
    return files.join(output, PLAN_DIR, name)


def assign_ids(entries: list[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
    """(uris, video ids) in input order. Duplicate URIs are kept once; duplicate ids are an
    error naming both inputs."""
    uris: list[str] = []
    owners: dict[str, str] = {}
    seen: set[str] = set()
    for uri, explicit_id in entries:
        if uri in seen:
            continue
        seen.add(uri)
        video_id = make_video_id(uri, explicit_id)
        if video_id in owners:
            raise InputListError(f"id {video_id!r} is given to both {owners[video_id]} and {uri}")
        owners[video_id] = uri
        uris.append(uri)
    return uris, list(owners)


def task_size(videos_per_shard: int, num_videos: int) -> int:
    """Videos a task: `--videos-per-shard`, or for 0 a size that depends on the corpus alone
    (never on the machine, so that any runner plans the same shards)."""
    if videos_per_shard < 0:
        raise ValueError("--videos-per-shard must be 0 (automatic) or more")
    if videos_per_shard:
        return videos_per_shard
    return min(AUTO_MAX_VIDEOS, max(AUTO_MIN_VIDEOS, -(-num_videos // AUTO_TASKS)))


def make_plan(
    output: str, entries: list[tuple[str, str | None]], videos_per_shard: int, options: dict
) -> Plan:
    """Plan the run under `output`, or check that the plan there is this run's.

    `options` are the settings that decide the output's content besides the inputs; a plan
    made with other ones (or other inputs) is refused with the differences named."""
    try:
        return _make_plan(output, entries, videos_per_shard, options)
    except OSError as err:  # --output=/proc/x, a read-only disk, ...
        where = f" ({err.filename})" if err.filename else ""
        raise InputListError(
            f"--output {output}: cannot hold the run: {os_reason(err)}{where}"
        ) from err


def _make_plan(
    output: str, entries: list[tuple[str, str | None]], videos_per_shard: int, options: dict
) -> Plan:
    uris, ids = assign_ids(entries)
    videos_per_shard = task_size(videos_per_shard, len(uris))
    digest = hashlib.sha256()
    for uri, video_id in zip(uris, ids, strict=True):
        digest.update(f"{uri}\t{video_id}\n".encode())
    config = {**options, "videos_per_shard": videos_per_shard, "inputs_sha256": digest.hexdigest()}
    num_tasks = -(-len(uris) // videos_per_shard)
    plan = Plan(num_tasks, len(uris), plan_path(output, TASKS_FILE))
    config_path = plan_path(output, CONFIG_FILE)
    if files.exists(config_path):
        previous = json.loads(files.read_bytes(config_path))
        if previous != config:
            changed = sorted(
                k for k in config.keys() | previous.keys() if previous.get(k) != config.get(k)
            )
            raise InputListError(
                f"{output} holds a run with different {', '.join(changed)}; "
                "rerun with the same inputs and options, or use a new --output"
            )
        return plan  # planned before: the same plan
    tasks = []
    per_file = TASKS_PER_PLAN_FILE * videos_per_shard
    for number, first in enumerate(range(0, len(uris), per_file)):
        name = f"videos-{number:05d}.parquet"  # a name: the output may be moved or relative
        count = min(per_file, len(uris) - first)
        positions = [i % videos_per_shard for i in range(count)]
        task_of = [(first + i) // videos_per_shard for i in range(count)]
        table = pa.table(
            [task_of, positions, uris[first : first + count], ids[first : first + count]],
            schema=PLAN_SCHEMA,
        )
        # one row group per task: a worker reads its own videos only
        files.write_atomic(
            plan_path(output, name), files.table_bytes(table, row_group_size=videos_per_shard)
        )
        for group, task in enumerate(range(task_of[0], task_of[-1] + 1)):
            videos = min(videos_per_shard, len(uris) - task * videos_per_shard)
            tasks.append({"task": task, "plan_file": name, "row_group": group, "videos": videos})
    files.write_atomic(
        plan.tasks_file, files.table_bytes(pa.Table.from_pylist(tasks, TASKS_SCHEMA))
    )
    files.write_atomic(config_path, json.dumps(config, indent=1, sort_keys=True).encode())
    return plan


def write_pending(output: str, plan: Plan, finished: set[int]) -> str:
    """This run's unfinished tasks, as a Parquet file for the pipeline to read (a new name each
    run, removed when the run ends)."""
    tasks = files.read_parquet(plan.tasks_file, TASKS_SCHEMA)
    if finished:
        done = pc.is_in(tasks.column("task"), pa.array(sorted(finished), pa.int32()))
        tasks = tasks.filter(pc.invert(done))
    path = plan_path(output, f"{PENDING_PREFIX}{uuid.uuid4().hex[:8]}.parquet")
    files.write_atomic(path, files.table_bytes(tasks))
    return path


def remove_pending(output: str) -> None:
    """The task lists of earlier (killed) runs and of this one."""
    files.delete(files.listing(files.join(output, PLAN_DIR), f"{PENDING_PREFIX}*.parquet"))


def read_task_videos(output: str, task: ShardTask) -> list[PlannedVideo]:
    """The videos of one task, in input order (its row group of the plan: nothing else)."""
    path = plan_path(output, task.plan_file.rsplit("/", 1)[-1])
    with files.open_file(path) as f:
        table = pq.ParquetFile(f).read_row_group(task.row_group)
    rows = zip(
        *(table.column(c).to_pylist() for c in ("task", "position", "uri", "video_id")), strict=True
    )
    videos = [PlannedVideo(pos, uri, vid) for t, pos, uri, vid in rows if t == task.task]
    if len(videos) != task.videos:
        raise RuntimeError(
            f"{path}: task {task.task} lists {len(videos)} videos, not {task.videos}"
        )
    return videos
