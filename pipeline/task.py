"""One shard task, start to end, inside one worker call: its videos decoded, labelled and
written video by video (video2dataset's shape: a worker owns whole shards).

    probe -> audio once -> segments -> frames (streamed) -> teachers (batches span videos)
          -> samples -> the task's shards (pipeline/shards.py)

Each step records a failure per input instead of raising: a video that cannot be read, decoded,
cut or labelled is one failures row, and everything else is still written. A rerun goes on
after the task's last finished shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline import decode, progress
from pipeline.errors import InputError, unexpected
from pipeline.inputs import frames_naming_input, local_media
from pipeline.labeller import FrameLabeller, Labelled, Teachers
from pipeline.plan import PlannedVideo, ShardTask, read_task_videos
from pipeline.progress import Position
from pipeline.segments import Segment, SegmentPlan, frame_times, plan_segments, segment_samples
from pipeline.shards import ShardSequence
from pipeline.teachers import TeacherInfo
from schemas import DEFAULT_AUDIO_CODEC, SAMPLE_RATE

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker needs to write tasks, resolved once on the driver."""

    output: str
    segments: SegmentPlan
    teachers: tuple[TeacherInfo, ...]
    device: str = "cpu"
    teacher_batch_size: int = 32
    decode_timeout_s: float = 600.0
    shard_audio_s: float = 7200.0
    audio_codec: str = DEFAULT_AUDIO_CODEC  # --audio-codec: the samples' audio member


@dataclass
class DecodedVideo:
    """A video's audio and the segments still to write (a resumed video skips its first)."""

    video: PlannedVideo
    info: decode.MediaInfo
    audio: np.ndarray  # int16 mono 22050 Hz
    segments: list[Segment]


@dataclass
class TaskSummary:
    task: int
    skipped: bool = False  # finished by an earlier run
    shards: int = 0
    samples: int = 0
    videos_written: int = 0
    videos_failed: int = 0


def decode_video(path: str, video: PlannedVideo, plan: SegmentPlan, timeout_s: float,
                 first_segment: int, stage: list[str]) -> DecodedVideo:  # fmt: skip
    """probe -> decode the audio once -> plan its segments. `stage[0]` follows the step in
    progress, for the failures row of an unexpected error."""
    stage[0] = "probe"
    info = decode.probe(path, timeout_s=timeout_s)
    stage[0] = "decode_audio"
    audio = decode.decode_audio(path, info, timeout_s=timeout_s)
    stage[0] = "segment"
    segments = plan_segments(len(audio), plan)
    if not segments:
        raise InputError(
            "segment",
            f"{video.uri}: audio lasts {len(audio) / SAMPLE_RATE:.2f} s, less than "
            f"--min-segment-seconds={plan.min_segment_seconds:g}: nothing to write",
        )
    return DecodedVideo(video, info, audio, segments[first_segment:])


class TaskWriter:
    """Writes shard tasks with one set of teachers (a worker's, shared by its threads)."""

    def __init__(self, settings: RunSettings, teachers: Teachers):
        self.settings, self.teachers = settings, teachers
        self.heads = {t.head: t.head_info() for t in settings.teachers}

    def write(self, task: ShardTask) -> TaskSummary:
        s = self.settings
        summary = TaskSummary(task.task)
        if progress.task_finished(s.output, task.task):
            summary.skipped = True
            return summary
        last = progress.last_shard(s.output, task.task)  # a killed run's last finished shard
        start = last.next if last else Position()
        labeller: FrameLabeller[DecodedVideo | PlannedVideo] = FrameLabeller(
            self.teachers, s.teacher_batch_size
        )
        first_part = last.part + 1 if last else 0
        with ShardSequence(s.output, task.task, s.shard_audio_s, first_part) as shards:
            for video in read_task_videos(s.output, task)[start.video :]:
                skip = start.segment if video.position == start.video else 0
                for done in self._labelled(labeller, video, skip):
                    self._write(done, shards, summary)
            for done in labeller.finish():
                self._write(done, shards, summary)
            finished = shards.close(Position(task.videos, 0))
        summary.shards = sum(1 for d in finished if d.samples)
        return summary

    def _labelled(
        self, labeller: FrameLabeller, video: PlannedVideo, skip: int
    ) -> Iterator[Labelled]:
        """The videos the labeller hands back once `video` is in it (decoded, or failed)."""
        s = self.settings
        stage = ["read"]
        try:
            with local_media(video.uri, s.decode_timeout_s) as path:
                decoded = decode_video(path, video, s.segments, s.decode_timeout_s, skip, stage)
                stage[0] = "decode_frames"
                # one decoder thread: the runner already works on one task per core
                frames = decode.FrameStream(
                    path, decoded.info, frame_times(decoded.segments), timeout_s=s.decode_timeout_s,
                    threads=1,
                )  # fmt: skip
                # frames read in here, their failures caught there: named after the input
                frames = frames_naming_input(frames, path, video.uri)
                yield from labeller.push(decoded, video.uri, frames)
        except InputError as err:
            yield from labeller.fail(video, video.uri, err)
        except Exception as err:  # noqa: BLE001 - one bad input must never stop the run
            yield from labeller.fail(video, video.uri, unexpected(video.uri, stage[0], err))

    def _write(self, done: Labelled, shards: ShardSequence, summary: TaskSummary) -> None:
        if done.error is not None:
            log.info("failed [%s] %s", done.error.stage, done.error.message)
            shards.add_failure(done.error.row(done.uri))
            summary.videos_failed += 1
            return
        decoded: DecodedVideo = done.video
        video = decoded.video
        samples = segment_samples(
            video.video_id, video.uri, decoded.audio, decoded.segments, done.rows, self.heads,
            self.settings.segments.frame_interval, self.settings.audio_codec,
        )  # fmt: skip
        for sample, segment in zip(samples, decoded.segments, strict=True):
            shards.add_sample(sample, Position(video.position, segment.index))
        summary.videos_written += 1
        summary.samples += len(samples)
