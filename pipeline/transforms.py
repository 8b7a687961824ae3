"""The Beam pipeline: shard tasks in, shards out, heavy data never crossing a shuffle.

    pending tasks (Parquet, Beam IO) ─ Reshuffle ─ WriteShardTasks ─ TaskSummary per task

Only the small task specs are shuffled (to spread them over the workers); each worker call
decodes, labels and writes one whole task (pipeline/task.py), with one set of teacher models
per worker process shared by its threads (Beam's `Shared`), and returns a summary.
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from pipeline import files
from pipeline.plan import ShardTask
from pipeline.task import RunSettings, TaskSummary, TaskWriter
from pipeline.teachers.handler import TeacherModelHandler
from runtime import keep_freed_memory

log = logging.getLogger("pipeline")


class TeacherSet:
    """A worker process's teacher models, one per head, shared by its threads."""

    def __init__(self, settings: RunSettings):
        keep_freed_memory()  # this process's batches reuse their memory (runtime/allocator.py)
        self.handlers = {
            info.head: TeacherModelHandler(info, settings.device) for info in settings.teachers
        }
        self.models = {head: handler.load_model() for head, handler in self.handlers.items()}

    def __call__(self, frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        rows = {}
        for head, handler in self.handlers.items():
            try:
                rows[head] = handler.probabilities(frames, self.models[head])
            except Exception as err:  # say which teacher: the labeller isolates the video
                raise RuntimeError(f"{head} teacher: {type(err).__name__}: {err}") from err
        return rows


class _WriteTaskFn(beam.DoFn):
    def __init__(self, settings: RunSettings):
        self.settings = settings
        self.shared = Shared()
        self.counters = {
            name: Metrics.counter("soundnet", name)
            for name in ("tasks", "shards", "samples", "videos_written", "videos_failed")
        }

    def setup(self) -> None:
        # the same tag in every DoFn instance of this process: one set of models for all
        teachers = [
            (t.head, t.name, t.weights_path, t.weights_sha256) for t in self.settings.teachers
        ]
        tag = json.dumps([teachers, self.settings.device])
        self.writer = TaskWriter(
            self.settings, self.shared.acquire(lambda: TeacherSet(self.settings), tag=tag)
        )

    def process(self, task: ShardTask):
        summary = self.writer.write(task)
        if not summary.skipped:
            self.counters["tasks"].inc()
            for name in ("shards", "samples", "videos_written", "videos_failed"):
                self.counters[name].inc(getattr(summary, name))
        yield summary


class WriteShardTasks(beam.PTransform):
    """The tasks listed in a TASKS_SCHEMA Parquet file -> their shards; a TaskSummary each."""

    def __init__(self, tasks_file: str, settings: RunSettings):
        super().__init__()
        self.tasks_file, self.settings = tasks_file, settings

    def expand(self, pipeline):
        return (
            pipeline
            | "ReadTasks" >> ReadFromParquet(files.as_pattern(self.tasks_file))
            | "AsTasks" >> beam.Map(lambda row: ShardTask(**row)).with_output_types(ShardTask)
            | "Spread" >> beam.Reshuffle()
            | "WriteTasks" >> beam.ParDo(_WriteTaskFn(self.settings)).with_output_types(TaskSummary)
        )
