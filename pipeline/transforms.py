"""The pipeline's steps as composite PTransforms, one job each.

    VideoTask ─ DecodeVideos ─┬─ audio + segments ─────────────────┐
                              └─ frames ─ LabelFrames (RunInference)┴─ WriteVideoParts ─ WriteShards

Every step routes an input it cannot process to the FAILED output as one failures row
(keyed by shard), so a bad video never stops the run and every shard learns of its failures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline import media, writer
from pipeline.errors import InputError
from pipeline.inputs import VideoTask, local_media
from pipeline.segments import Segment, SegmentPlan, frame_times, plan_segments
from pipeline.teachers import TeacherModelHandler
from schemas import SAMPLE_RATE, HeadInfo, Sample, SampleMetadata, sample_key

log = logging.getLogger("pipeline")

FAILED = "failed"
FRAMES = "frames"


@dataclass
class DecodedVideo:
    """A video after decoding: its audio and segments (frames travel separately)."""

    task: VideoTask
    audio: np.ndarray  # int16 mono 22050 Hz
    segments: list[Segment]
    num_frames: int
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherSpec:
    head: str
    name: str
    weights: str | None
    labels: str | None
    info: HeadInfo
    label_names: tuple[str, ...] = ()


def failure(task: VideoTask, err: InputError) -> tuple[int, dict]:
    row = {
        "source": task.uri,
        "stage": err.stage,
        "error_type": err.error_type,
        "message": err.message,
    }
    return task.shard_id, row


def unexpected(task: VideoTask, stage: str, err: Exception) -> InputError:
    """A bug or an odd library error still becomes a row that says what happened."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return InputError(stage, f"{task.uri}: {type(err).__name__}: {detail}", type(err).__name__)


class _DecodeVideoFn(beam.DoFn):
    """probe -> decode the audio once -> plan segments -> sample the teacher frames."""

    def __init__(self, plan: SegmentPlan, timeout_s: float):
        self.plan = plan
        self.timeout_s = timeout_s
        self.decoded = Metrics.counter("soundnet", "videos_decoded")
        self.failed = Metrics.counter("soundnet", "videos_failed")
        self.audio_seconds = Metrics.counter("soundnet", "audio_seconds")

    def process(self, task: VideoTask):
        stage = ["read"]  # the stage in progress, for the failures row of an unexpected error
        try:
            with local_media(task.uri, self.timeout_s) as path:
                info, audio, segments, frames = self.decode(path, task.uri, stage)
        except InputError as err:
            self.failed.inc()
            log.info("failed [%s] %s", err.stage, err.message)
            yield pvalue.TaggedOutput(FAILED, failure(task, err))
            return
        except Exception as err:  # noqa: BLE001 - one bad input must never stop the run
            self.failed.inc()
            yield pvalue.TaggedOutput(FAILED, failure(task, unexpected(task, stage[0], err)))
            return
        self.decoded.inc()
        self.audio_seconds.inc(int(len(audio) / self.plan.sample_rate))
        for i, frame in enumerate(frames):
            yield pvalue.TaggedOutput(FRAMES, ((task.video_id, i), frame))
        codecs = {"video_codec": info.video_codec, "audio_codec": info.audio_codec}
        yield task.video_id, DecodedVideo(task, audio, segments, len(frames), info=codecs)

    def decode(self, path: str, uri: str, stage: list[str]):
        stage[0] = "probe"
        info = media.probe(path, timeout_s=self.timeout_s)
        stage[0] = "decode_audio"
        audio = media.decode_audio(path, info, timeout_s=self.timeout_s)
        stage[0] = "segment"
        segments = plan_segments(len(audio), self.plan)
        if not segments:
            seconds = len(audio) / self.plan.sample_rate
            raise InputError(
                "segment",
                (
                    f"{uri}: audio lasts {seconds:.2f} s, less than "
                    f"--min-segment-seconds={self.plan.min_segment_seconds:g}: nothing to write"
                ),
            )
        stage[0] = "decode_frames"
        # One decoder thread: Beam already runs one video per core.
        times = frame_times(segments)
        frames = media.sample_frames(path, info, times, timeout_s=self.timeout_s, threads=1)
        return info, audio, segments, frames


class DecodeVideos(beam.PTransform):
    """VideoTask -> (video_id, DecodedVideo); FRAMES: ((video_id, i), uint8 frame); FAILED."""

    def __init__(self, plan: SegmentPlan, timeout_s: float):
        super().__init__()
        self.plan, self.timeout_s = plan, timeout_s

    def expand(self, tasks):
        return tasks | beam.ParDo(_DecodeVideoFn(self.plan, self.timeout_s)).with_outputs(
            FRAMES, FAILED, main="videos"
        )


class LabelFrames(beam.PTransform):
    """((video_id, i), frame) -> (video_id, (i, probs)) for one teacher, through RunInference.

    RunInference batches frames across videos; a batch that fails yields (video_id, message)
    on the `errors` output instead, for each of its frames.
    """

    def __init__(self, spec: TeacherSpec, device: str, batch_size: int):
        super().__init__()
        self.spec, self.device, self.batch_size = spec, device, batch_size

    def expand(self, frames):
        handler = KeyedModelHandler(
            TeacherModelHandler(
                head=self.spec.head,
                name=self.spec.name,
                weights=self.spec.weights,
                labels=self.spec.labels,
                device=self.device,
                min_batch_size=1,
                max_batch_size=self.batch_size,
            )
        )
        labelled, dead_letters = frames | RunInference(handler).with_exception_handling()
        probs = labelled | "ByVideo" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        head = self.spec.head
        errors = dead_letters.failed_inferences | "Errors" >> beam.FlatMap(
            lambda failed: [
                (key[0], f"{head} teacher: {type(failed[1]).__name__}: {failed[1]}")
                for key, _ in failed[0]
            ]
        )
        return probs, errors


class _WriteVideoPartFn(beam.DoFn):
    """All of a video's pieces -> its samples, written as one part file of its shard."""

    def __init__(self, output: str, heads: dict[str, HeadInfo], frame_interval: float):
        self.output, self.heads, self.frame_interval = output, heads, frame_interval
        self.written = Metrics.counter("soundnet", "videos_written")
        self.samples = Metrics.counter("soundnet", "samples_written")

    def process(self, element):
        video_id, grouped = element
        (video,) = grouped["video"]
        task = video.task
        try:
            if grouped["errors"]:
                raise InputError("teacher", f"{task.uri}: {sorted(grouped['errors'])[0]}")
            samples = self.samples_of(video, grouped)
            path = writer.write_part(self.output, task.shard_id, video_id, samples)
        except InputError as err:
            yield failure(task, err)
            return
        except Exception as err:  # noqa: BLE001
            yield failure(task, unexpected(task, "write", err))
            return
        self.written.inc()
        self.samples.inc(len(samples))
        log.info(
            "wrote %s: %d segments, %.1f s of audio",
            task.uri,
            len(samples),
            len(video.audio) / SAMPLE_RATE,
        )
        yield task.shard_id, ("part", task.order, path)

    def samples_of(self, video: DecodedVideo, grouped) -> list[Sample]:
        task = video.task
        rows = {}
        for head in self.heads:
            by_frame = dict(grouped[head])
            if len(by_frame) != video.num_frames:
                raise InputError(
                    "teacher",
                    f"{task.uri}: {head} teacher labelled "
                    f"{len(by_frame)} of {video.num_frames} frames",
                )
            rows[head] = np.stack([by_frame[i] for i in range(video.num_frames)])
        samples, first = [], 0
        for seg in video.segments:
            n = len(seg.frame_times_s)
            meta = SampleMetadata(
                video_id=task.video_id,
                source=task.uri,
                segment=seg.index,
                start_s=seg.start_s,
                duration_s=seg.duration_s,
                num_samples=seg.num_samples,
                frame_times_s=list(seg.frame_times_s),
                heads=self.heads,
                frame_interval_s=self.frame_interval,
            )
            samples.append(
                Sample(
                    key=sample_key(task.video_id, seg.index),
                    audio=video.audio[seg.start_sample : seg.stop_sample],
                    probs={h: r[first : first + n] for h, r in rows.items()},
                    metadata=meta,
                )
            )
            first += n
        return samples


class WriteVideoParts(beam.PTransform):
    """Join each video with its teachers' rows and write its samples: (shard_id, part|failure)."""

    def __init__(self, output: str, heads: dict[str, HeadInfo], frame_interval: float):
        super().__init__()
        self.output, self.heads, self.frame_interval = output, heads, frame_interval

    def expand(self, inputs):
        videos, labelled, errors = inputs
        joined = {"video": videos, "errors": errors, **labelled} | beam.CoGroupByKey()
        return joined | beam.ParDo(_WriteVideoPartFn(self.output, self.heads, self.frame_interval))


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str):
        self.output = output
        self.shards = Metrics.counter("soundnet", "shards_written")

    def process(self, element):
        shard_id, items = element
        items = list(items)
        parts = sorted(
            (order, path) for _, order, path in (i for i in items if isinstance(i, tuple))
        )
        failures = sorted((i for i in items if isinstance(i, dict)), key=lambda r: r["source"])
        summary = writer.assemble_shard(self.output, shard_id, [p for _, p in parts], failures)
        self.shards.inc()
        yield summary


class WriteShards(beam.PTransform):
    """(shard_id, part | failure row) -> one finished shard per id (tar + progress rows)."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, items):
        return items | beam.GroupByKey() | beam.ParDo(_WriteShardFn(self.output))
