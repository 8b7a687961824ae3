"""Segment and teacher-frame arithmetic (SPEC.md section 3), in whole audio samples.

A video's audio is cut into consecutive segments of `segment_seconds`; a trailing piece shorter
than `min_segment_seconds` is dropped. Teachers see one frame at the centre of each whole
`frame_interval` step of a segment; a segment shorter than one step keeps one frame at its middle.
A partial trailing step gets no frame of its own (the trainer uses whole steps only).
`segment_samples` turns a video's segments and teacher rows into its shard samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas import DEFAULT_AUDIO_CODEC, SAMPLE_RATE, HeadInfo, Sample, SampleMetadata, sample_key


@dataclass(frozen=True)
class SegmentPlan:
    segment_seconds: float = 20.0
    frame_interval: float = 5.0
    min_segment_seconds: float = 1.0
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        lengths = (self.segment_seconds, self.frame_interval, self.min_segment_seconds)
        if not all(math.isfinite(s) for s in lengths):
            raise ValueError(
                "segment_seconds, frame_interval and min_segment_seconds must be finite"
            )
        if self.samples(self.frame_interval) < 1:
            raise ValueError(f"frame_interval {self.frame_interval:g} s is under one audio sample")
        if not 0 < self.frame_interval <= self.segment_seconds:
            raise ValueError("need 0 < frame_interval <= segment_seconds")
        if not 0 < self.min_segment_seconds <= self.segment_seconds:
            raise ValueError("need 0 < min_segment_seconds <= segment_seconds")

    def samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)


@dataclass(frozen=True)
class Segment:
    index: int
    start_sample: int
    num_samples: int
    frame_times_s: tuple[float, ...]  # from the start of the video
    sample_rate: int = SAMPLE_RATE

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def stop_sample(self) -> int:
        return self.start_sample + self.num_samples


def plan_segments(total_samples: int, plan: SegmentPlan = SegmentPlan()) -> list[Segment]:
    """The segments of `total_samples` of audio, with their teacher frame times."""
    seg_len = plan.samples(plan.segment_seconds)
    step = plan.samples(plan.frame_interval)
    min_len = plan.samples(plan.min_segment_seconds)
    segments = []
    for index, start in enumerate(range(0, total_samples, seg_len)):
        length = min(seg_len, total_samples - start)
        if length < min_len:
            break  # only the last piece can be short
        steps = length // step
        if steps:
            centres = [start + k * step + step / 2 for k in range(steps)]
        else:
            centres = [start + length / 2]
        times = tuple(round(c / plan.sample_rate, 6) for c in centres)
        segments.append(Segment(index, start, length, times, plan.sample_rate))
    return segments


def frame_times(segments: list[Segment]) -> list[float]:
    """All teacher frame times of a video, in segment order (what the decoder samples)."""
    return [t for seg in segments for t in seg.frame_times_s]


def segment_samples(
    video_id: str,
    source: str,
    audio: np.ndarray,
    segments: list[Segment],
    rows: dict[str, np.ndarray],
    heads: dict[str, HeadInfo],
    frame_interval: float,
    audio_codec: str = DEFAULT_AUDIO_CODEC,
) -> list[Sample]:
    """One video's samples: each segment's audio with its teacher rows (`rows[head]` holds the
    rows of `segments`' frames, in order), to be stored as `audio_codec`."""
    samples, first = [], 0
    for seg in segments:
        n = len(seg.frame_times_s)
        meta = SampleMetadata(
            video_id=video_id,
            source=source,
            segment=seg.index,
            start_s=seg.start_s,
            duration_s=seg.duration_s,
            num_samples=seg.num_samples,
            frame_times_s=list(seg.frame_times_s),
            heads=heads,
            frame_interval_s=frame_interval,
            audio_codec=audio_codec,
        )
        probs = {h: r[first : first + n] for h, r in rows.items()}
        audio_of = audio[seg.start_sample : seg.stop_sample]
        samples.append(Sample(sample_key(video_id, seg.index), audio_of, probs, meta))
        first += n
    return samples
