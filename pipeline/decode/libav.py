"""In-process decoding through PyAV (FFmpeg's own libraries): probe, audio and sparse frames
of one file without starting a process.

This is the decoders' fast path: starting ffprobe and ffmpeg costs about 50 ms of CPU each, more
than decoding a short clip. Every function raises `Unfit` when a file is not plainly readable
(decoding errors, missing or disordered timestamps, no frames), and the caller then redoes the
step with the ffprobe/ffmpeg command-line tools, whose behaviour on broken files, timeouts and
error messages the pipeline is built around. Decoding that runs past its time limit raises
`TimedOut` (checked between packets and frames: a call that hangs inside libav is not caught).
Regular files only, in the formats schemas/media.py allows: opening a named pipe, or a
playlist that names one, could block here with no timeout.
"""

from __future__ import annotations

import bisect
import math
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import av
import numpy as np

from pipeline.decode.spool import AudioSpool
from schemas import SAMPLE_RATE
from schemas.media import input_options

_KEYFRAME = 1  # AVINDEX_KEYFRAME
_SKIP_NONREF_BEFORE_S = 1.0
_LATE_SEEK_BACKOFF_S = (1.0, 4.0, 16.0, 64.0)  # retry earlier when a seek lands past the target


class Unfit(Exception):
    """This file (or this step of it) is left to the command-line tools."""


class TimedOut(Exception):
    """Decoding went on past its time limit (checked between packets and frames)."""


def _deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


def _check(deadline: float, timeout_s: float) -> None:
    if time.monotonic() > deadline:
        raise TimedOut(f"PyAV timed out after {timeout_s:g} s")


class _DecodeClock:
    """Time spent decoding, paused while a generator waits on its caller: the teachers label
    a batch between two frames, and their time is no decoding time."""

    def __init__(self, timeout_s: float):
        self.timeout_s, self.spent = timeout_s, 0.0
        self.since: float | None = None  # running since then; None while paused

    @contextmanager
    def running(self) -> Iterator[None]:
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.spent += time.monotonic() - self.since
            self.since = None

    def check(self) -> None:
        now = self.spent + (time.monotonic() - self.since if self.since is not None else 0.0)
        if now > self.timeout_s:
            raise TimedOut(f"PyAV timed out after {self.timeout_s:g} s")


def usable(path: str) -> bool:
    """Only non-empty regular files: pipes, devices and directories go to the timed tools."""
    try:
        status = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size > 0


@contextmanager
def _open(path: str) -> Iterator[av.container.InputContainer]:
    try:
        container = av.open(path, metadata_errors="ignore", container_options=input_options())
    except Exception as err:  # noqa: BLE001 - any failure to open is for the tools to explain
        raise Unfit(f"cannot open: {err}") from err
    try:
        yield container
    except (Unfit, TimedOut):
        raise
    except Exception as err:  # noqa: BLE001 - av.FFmpegError, ValueError, ...
        raise Unfit(f"{type(err).__name__}: {err}") from err
    finally:
        container.close()


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _rate(rate: Fraction | None) -> str:
    return f"{rate.numerator}/{rate.denominator}" if rate else "0/0"


# ---------------------------------------------------------------------------------------------
# probe


def probe(path: str) -> dict:
    """What `ffprobe -show_format -show_streams -of json` says about the file, in its layout
    (the fields probe.py reads), so one piece of code turns either into a MediaInfo."""
    with _open(path) as container:
        streams = [_stream_fields(container, stream) for stream in container.streams]
        fmt = {
            "format_name": container.format.name,
            "start_time": _seconds(container.start_time, Fraction(1, av.time_base)),
            "duration": _seconds(container.duration, Fraction(1, av.time_base)),
        }
    return {"streams": streams, "format": fmt}


def _stream_fields(container: av.container.InputContainer, stream: av.stream.Stream) -> dict:
    context = stream.codec_context
    disposition = av.stream.Disposition
    fields: dict = {
        "index": stream.index,
        "codec_type": stream.type,
        "codec_name": context.codec.canonical_name if context is not None else "unknown",
        "disposition": {
            "default": int(bool(stream.disposition & disposition.default)),
            "attached_pic": int(bool(stream.disposition & disposition.attached_pic)),
        },
        "start_time": _seconds(stream.start_time, stream.time_base),
        "duration": _seconds(stream.duration, stream.time_base),
        "tags": dict(stream.metadata),
    }
    if stream.type == "audio":
        fields["sample_rate"] = context.sample_rate
        fields["channels"] = context.channels
    elif stream.type == "video":
        # ffprobe's rule (av_guess_sample_aspect_ratio): the container's value first
        sar = stream.sample_aspect_ratio or context.sample_aspect_ratio
        fields.update(
            width=context.width,
            height=context.height,
            avg_frame_rate=_rate(stream.average_rate),
            r_frame_rate=_rate(stream.base_rate),
            sample_aspect_ratio=f"{sar.numerator}:{sar.denominator}" if sar else "0:1",
        )
        if not fields["disposition"]["attached_pic"]:
            # The display matrix reaches PyAV only on decoded frames: decode the first one.
            fields["side_data_list"] = [{"rotation": _first_frame(container, stream).rotation}]
    return fields


def _first_frame(container: av.container.InputContainer, stream: av.stream.Stream) -> av.VideoFrame:
    stream.thread_count = 1
    for frame in container.decode(stream):
        return frame
    raise Unfit(f"no decodable frame in video stream {stream.index}")


# ---------------------------------------------------------------------------------------------
# audio


# A jump forward in the audio's timestamps longer than this is a gap, filled with silence
# (ffmpeg's aresample min_hard_comp default); shorter ones are timestamp jitter.
GAP_S = 0.1


def decode_audio(path: str, stream_index: int, timeout_s: float = math.inf) -> np.ndarray:
    """The audio stream as int16 mono 22050 Hz, all channels mixed down: what
    `ffmpeg -ac 1 -ar 22050 -f s16le` gives (the same swresample underneath), except that a gap
    in the stream's timestamps (dropped packets, a recording paused) is filled with silence, up
    to the container's end: collapsed, it would put all later audio early against its frames."""
    deadline = _deadline(timeout_s)
    with _open(path) as container:
        stream = container.streams[stream_index] if stream_index >= 0 else None
        stream = stream or container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        spool = AudioSpool()  # a long track goes to a temporary file, not the heap
        end = _seconds(container.duration, Fraction(1, av.time_base))  # None: not known
        start = _seconds(container.start_time, Fraction(1, av.time_base)) or 0.0
        last_end = math.inf if end is None else start + end
        heard_until: float | None = None  # where the last frame's audio ended
        for packet in container.demux(stream):  # only this stream's packets are read out
            _check(deadline, timeout_s)
            for frame in packet.decode():  # a corrupt packet raises: the tools take over
                if frame.time is not None:
                    if heard_until is not None and frame.time - heard_until > GAP_S:
                        _write_silence(spool, min(frame.time, last_end) - heard_until)
                    ends = frame.time + frame.samples / frame.sample_rate
                    heard_until = ends if heard_until is None else max(heard_until, ends)
                for out in resampler.resample(frame):
                    spool.write(out.to_ndarray())
        for out in resampler.resample(None):
            spool.write(out.to_ndarray())
    if not spool.size:
        raise Unfit("no audio samples decoded")
    return spool.array()


def _write_silence(spool: AudioSpool, seconds: float) -> None:
    left = max(0, round(seconds * SAMPLE_RATE))
    while left:  # in pieces: a gap may be hours long
        piece = min(left, len(_SILENCE))
        spool.write(_SILENCE[:piece])
        left -= piece


_SILENCE = np.zeros(10 * SAMPLE_RATE, np.int16)


# ---------------------------------------------------------------------------------------------
# frames


def frames_at(
    path: str,
    stream_index: int,
    targets: np.ndarray,
    out_size: tuple[int, int],
    threads: int,
    timeout_s: float = math.inf,
) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3], one by one: for each absolute time in `targets` (sorted) the frame
    displayed then (the last one starting at or before it; the first frame before the video
    starts, the last one after it ends), as displayed (rotation applied), bicubic-scaled to
    `out_size` (width, height). Only the frame being decoded is held, however long the video.

    It seeks to the keyframe before a time only when one lies between the current position and
    that time (the container's index says), and otherwise decodes on, so no frame is decoded
    twice and frames between wanted GOPs are never decoded. For containers where seeking is
    exact (not MPEG-PS/TS or raw streams: frames.py sends those to the ffmpeg tool).
    `timeout_s` bounds the time spent decoding, not the time the caller takes between frames.
    """
    with _open(path) as container:
        stream = container.streams[stream_index] if stream_index >= 0 else None
        stream = stream or container.streams.video[0]
        stream.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        clock = _DecodeClock(timeout_s)
        cursor = _Cursor(container, stream, clock)
        for target in targets.tolist():
            with clock.running():  # not while the caller holds the frame (it labels batches)
                if cursor.should_seek(target):
                    cursor.seek(target)
                picture = _picture(cursor.shown_at(target), out_size)
            yield picture


class _Cursor:
    """A position in the decoded video: `shown` (the last frame at or before it) and `ahead`
    (the next frame decoded, not yet reached)."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.stream.Stream,
        clock: _DecodeClock,
    ):
        self.container, self.stream, self.clock = container, stream, clock
        self.keyframes: list[float] = []  # read after the first seek (Matroska loads cues then)
        self.frames: Iterator[av.VideoFrame] | None = None
        self.shown: av.VideoFrame | None = None
        self.ahead: av.VideoFrame | None = None  # None also at the end of the stream

    def should_seek(self, target: float) -> bool:
        if self.frames is None:
            return True
        if self.ahead is not None and target < self.ahead.time:
            return False  # the frame shown at `target` is already here
        current = self.ahead or self.shown
        position = current.time if current is not None else -math.inf
        if len(self.keyframes) < 2:
            return target - position > 2.0  # no index: seek over any long stretch
        # Seek only when a keyframe lies past the position: decoding from it is shorter.
        keyframe = self.keyframes[max(0, bisect.bisect_right(self.keyframes, target) - 1)]
        return keyframe > position + 1e-6

    def seek(self, target: float) -> None:
        """To the keyframe at or before `target`: further back when the seek lands past it."""
        for back in (0.0, *_LATE_SEEK_BACKOFF_S, math.inf):
            self._restart(None if math.isinf(back) else target - back)
            if self.ahead is None or self.ahead.time <= target:
                return

    def _restart(self, at: float | None) -> None:
        if at is None or at <= 0:
            self.container.seek(0)  # the start of the file, in the container's own terms
        else:
            offset = int(at / self.stream.time_base)
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        if self.frames is None:
            self.keyframes = sorted(
                _seconds(entry.timestamp, self.stream.time_base)
                for entry in self.stream.index_entries
                if entry.flags & _KEYFRAME
            )
        self.frames = self.container.decode(self.stream)
        self.shown, self.ahead = None, None
        self._next()

    def _next(self) -> None:
        """Decode one more frame into `ahead` (None at the end), checking its time."""
        self.clock.check()
        previous = self.ahead or self.shown
        self.ahead = next(self.frames, None)
        if self.ahead is None:
            return
        time = self.ahead.time
        if time is None or not math.isfinite(time):
            raise Unfit("a frame has no timestamp")
        if previous is not None and time <= previous.time:
            raise Unfit(f"frame times go backwards ({previous.time:.3f} s then {time:.3f} s)")

    def shown_at(self, target: float) -> av.VideoFrame:
        context = self.stream.codec_context
        while self.ahead is not None and self.ahead.time <= target + 1e-6:
            self.shown = self.ahead
            # Far before the target, frames no other frame refers to are not decoded at all
            # (about 40% of H.264/HEVC decoding). The margin exceeds any decoder's reorder
            # delay, so the frame shown at the target is always decoded.
            far = self.ahead.time < target - _SKIP_NONREF_BEFORE_S
            context.skip_frame = "NONREF" if far else "DEFAULT"
            self._next()
        frame = self.shown or self.ahead  # before the first frame: the first frame
        if frame is None:
            raise Unfit("no decodable video frame")
        return frame


def _picture(frame: av.VideoFrame, out_size: tuple[int, int]) -> np.ndarray:
    """RGB as displayed: scaled in the coded orientation, then turned (the same pixels as
    turning first, for quarter turns)."""
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90
    width, height = out_size if quarter_turns % 2 == 0 else out_size[::-1]
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC")
    return np.rot90(rgb.to_ndarray(), k=quarter_turns)
