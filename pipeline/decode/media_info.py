"""Probing one input: what its streams are, reduced to what decoding needs (`MediaInfo`).

PyAV reads the container in-process (libav.probe fills ffprobe's JSON fields), ffprobe takes
over where PyAV cannot; one parser turns either into a MediaInfo, so validation and error
messages are the same whichever read the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pipeline.decode.libav as libav
from pipeline.decode.dispatch import pyav_or_tools
from pipeline.decode.tools import FFPROBE, check_file, run
from pipeline.errors import InputError
from schemas.media import tool_args


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file, reduced to what decoding needs."""

    path: str
    duration_s: float  # best estimate of the media duration (0.0 when nothing says)
    start_time_s: float  # container start time: the origin of frame times and audio
    audio_codec: str
    audio_sample_rate: int
    audio_channels: int
    audio_duration_s: float | None
    video_codec: str
    width: int  # coded frame size, before rotation
    height: int
    fps: float | None
    rotation: int  # degrees clockwise to apply so frames come out as displayed (0/90/180/270)
    video_duration_s: float | None
    audio_stream_index: int = -1  # -1: the first audio stream
    video_stream_index: int = -1  # -1: ffmpeg's default video stream
    video_start_time_s: float | None = None  # None: same as start_time_s
    audio_start_time_s: float | None = None  # None: same as start_time_s
    sample_aspect_ratio: float = 1.0  # pixel width / height (non-square pixels: anamorphic video)
    num_video_streams: int = 1  # not counting cover art
    format_name: str = ""  # ffprobe's container name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of a frame as displayed: pixel aspect and rotation applied."""
        width = max(1, round(self.width * self.sample_aspect_ratio))
        return (self.height, width) if self.rotation in (90, 270) else (width, self.height)


def number(value: object) -> float | None:
    """A finite float from ffprobe's strings ('N/A', '' and garbage give None)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ratio(value: object) -> float | None:
    """'30000/1001' -> 29.97; '0/0' and garbage -> None."""
    if not isinstance(value, str) or "/" not in value:
        return number(value)
    num, _, den = value.partition("/")
    num_f, den_f = number(num), number(den)
    if num_f is None or not den_f:
        return None
    return num_f / den_f


def _stream_duration(stream: dict) -> float | None:
    """The stream's duration; Matroska keeps it only in a 'DURATION' tag (HH:MM:SS.fffffffff)."""
    duration = number(stream.get("duration"))
    if duration is not None and duration > 0:
        return duration
    for key, value in (stream.get("tags") or {}).items():
        if key.upper() == "DURATION" and isinstance(value, str):
            match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", value.strip())
            if match:
                hours, minutes, seconds = match.groups()
                return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


def _rotation(stream: dict) -> int:
    """Degrees clockwise to apply to the coded frame to display it (what ffmpeg's autorotate does).

    The display matrix's `rotation` is counter-clockwise (-90 means turn 90 degrees clockwise);
    the older `rotate` tag is already clockwise.
    """
    degrees = None
    for side_data in stream.get("side_data_list") or []:
        rotation = number(side_data.get("rotation"))
        if rotation is not None:
            degrees = -rotation
            break
    if degrees is None:
        degrees = number((stream.get("tags") or {}).get("rotate")) or 0.0
    return int(round(degrees / 90.0)) * 90 % 360


def _sample_aspect_ratio(stream: dict) -> float:
    sar = stream.get("sample_aspect_ratio")
    ratio = _ratio(sar.replace(":", "/")) if isinstance(sar, str) else None
    return ratio if ratio and 0.1 < ratio < 10 else 1.0


def _fps(stream: dict) -> float | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        rate = _ratio(stream.get(key))
        if rate and 0 < rate < 1000:
            return rate
    return None


def _describe_streams(streams: list[dict]) -> str:
    """'h264 video, aac audio' for error messages."""
    parts = []
    for stream in streams:
        kind = stream.get("codec_type", "unknown")
        if kind == "video" and _is_cover_art(stream):
            kind = "cover art"
        parts.append(f"{stream.get('codec_name', 'unknown codec')} {kind}")
    return ", ".join(parts) or "none"


def _is_cover_art(stream: dict) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _pick_video_stream(videos: list[dict]) -> dict:
    """ffmpeg's own default: the default-flagged stream first, then the largest frame."""

    def score(stream: dict) -> tuple[int, int, int]:
        default = int(bool((stream.get("disposition") or {}).get("default")))
        area = int(stream.get("width") or 0) * int(stream.get("height") or 0)
        return (default, area, -int(stream.get("index", 0)))

    return max(videos, key=score)


def probe(path: str, timeout_s: float = 60) -> MediaInfo:
    """Probe `path` (PyAV in-process, ffprobe where PyAV cannot); raise InputError("probe", ...)
    unless it has an audio and a video stream."""
    check_file(path, "probe")
    data = pyav_or_tools(
        path, "probe", lambda: libav.probe(path), lambda: _ffprobe(path, timeout_s)
    )
    return _media_info(path, data)


def _ffprobe(path: str, timeout_s: float) -> dict:
    # The arguments of ffmpeg.probe; run here because ffmpeg-python 0.2.0's probe has no timeout.
    args = [FFPROBE, "-v", "level+error", "-show_format", "-show_streams", "-of", "json"]
    args += [*tool_args(), "-i", path]  # -i: a file named "-x.mp4" is not an option
    out, _ = run(args, "probe", path, "ffprobe", timeout_s)
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except json.JSONDecodeError as err:
        raise InputError("probe", f"{path}: ffprobe gave unreadable output ({err})") from err


def _media_info(path: str, data: dict) -> MediaInfo:
    """MediaInfo from ffprobe's JSON (or libav.probe's copy of it); InputError("probe", ...)
    unless the file has an audio and a video stream."""
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    if not streams:
        raise InputError("probe", f"{path}: no audio or video streams (not a media file?)")

    audios = [s for s in streams if s.get("codec_type") == "audio"]
    videos = [s for s in streams if s.get("codec_type") == "video" and not _is_cover_art(s)]
    if not audios:
        raise InputError(
            "probe", f"{path}: no audio stream (streams: {_describe_streams(streams)})"
        )
    if not videos:
        raise InputError(
            "probe", f"{path}: no video stream (streams: {_describe_streams(streams)})"
        )
    audio, video = audios[0], _pick_video_stream(videos)

    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise InputError("probe", f"{path}: the video stream has no frame size ({width}x{height})")
    sample_rate = int(number(audio.get("sample_rate")) or 0)
    channels = int(number(audio.get("channels")) or 0)
    if sample_rate <= 0:
        raise InputError("probe", f"{path}: the audio stream has no sample rate")

    start = number(fmt.get("start_time")) or 0.0
    audio_duration, video_duration = _stream_duration(audio), _stream_duration(video)
    duration = number(fmt.get("duration"))
    if duration is None or duration <= 0:
        known = [d for d in (audio_duration, video_duration) if d]
        duration = max(known) if known else 0.0
    return MediaInfo(
        path=path,
        duration_s=duration,
        start_time_s=start,
        audio_codec=str(audio.get("codec_name", "unknown")),
        audio_sample_rate=sample_rate,
        audio_channels=channels,
        audio_duration_s=audio_duration,
        video_codec=str(video.get("codec_name", "unknown")),
        width=width,
        height=height,
        fps=_fps(video),
        rotation=_rotation(video),
        video_duration_s=video_duration,
        audio_stream_index=int(audio.get("index", -1)),
        video_stream_index=int(video.get("index", -1)),
        video_start_time_s=number(video.get("start_time")),
        audio_start_time_s=number(audio.get("start_time")),
        sample_aspect_ratio=_sample_aspect_ratio(video),
        num_video_streams=len(videos),
        format_name=str(fmt.get("format_name", "")),
    )
