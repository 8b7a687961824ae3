"""Decoding, one input at a time: probe, audio and teacher frames, in-process through PyAV
(pipeline/libav.py), with the ffprobe/ffmpeg tools taking over wherever PyAV cannot.

Every problem with an input raises `InputError(stage, message)`, the message naming the file and
saying what is wrong in words a person understands; raw ffmpeg/PyAV errors never escape.

Time base: frame times are seconds from the container's start time (`MediaInfo.start_time_s`),
and the decoded audio is aligned to the same origin (a stream that starts late is padded with
silence), so audio sample `i` and frame time `i / 22050` describe the same moment.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import ffmpeg
import numpy as np
from PIL import Image

from pipeline import libav
from pipeline.errors import InputError
from schemas import SAMPLE_RATE

log = logging.getLogger(__name__)

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
# The ffmpeg path selects the frames of at most this many times per ffmpeg call, so the select
# expression stays short and each call only reads the stretch of the file it needs.
_TIMES_PER_FFMPEG_CALL = 32
_MAX_MESSAGE_CHARS = 300


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


# ---------------------------------------------------------------------------------------------
# subprocesses


_LOG_LINE = re.compile(r"^(?:\[[^\]]+ @ 0x[0-9a-f]+\]\s*)?\[(\w+)\]\s*(.*)$")
_LEVELS = ("fatal", "error", "warning")


def _ffmpeg_reason(stderr: bytes, path: str) -> str:
    """The telling line of an ffmpeg/ffprobe log written with `-v level+...`: the last fatal
    message, else the last error, else the last warning; without the path and log prefixes."""
    found: dict[str | None, str] = {}
    for line in stderr.decode("utf-8", "replace").splitlines():
        match = _LOG_LINE.match(line.strip())
        level, text = (match.group(1), match.group(2)) if match else (None, line.strip())
        if text and text != "Conversion failed!" and not text.startswith("Svt["):
            found[level] = text
    reason = next((found[lv] for lv in (*_LEVELS, None) if lv in found), "no error message")
    if reason.startswith(path + ":"):
        reason = reason[len(path) + 1 :].strip()
    return reason[:_MAX_MESSAGE_CHARS]


def _run(
    args: list[str], stage: str, path: str, what: str, timeout_s: float
) -> tuple[bytes, bytes]:
    """Run one ffmpeg/ffprobe command; any failure of the input becomes an InputError."""
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:  # run() has killed the child already
        raise InputError(stage, f"{path}: {what} timed out after {timeout_s:g} s") from err
    except FileNotFoundError as err:  # the tool itself is missing: not this input's fault
        raise RuntimeError(f"{args[0]} is not installed or not on PATH") from err
    if proc.returncode != 0:
        reason = _ffmpeg_reason(proc.stderr, path)
        raise InputError(stage, f"{path}: {what} could not read it: {reason}")
    return proc.stdout, proc.stderr


def ffmpeg_version() -> str:
    """The ffmpeg tool's version ("5.1.6-0+deb12u1"), or why there is none."""
    try:
        out = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({type(err).__name__})"
    first = out.stdout.split("\n", 1)[0].split()
    return first[2] if len(first) > 2 else "unknown"


# ---------------------------------------------------------------------------------------------
# probe


def _check_file(path: str, stage: str) -> None:
    if not os.path.exists(path):
        raise InputError(stage, f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(stage, f"{path}: is a directory, not a media file")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(stage, f"{path}: file is empty (0 bytes)")


def _number(value: object) -> float | None:
    """A finite float from ffprobe's strings ('N/A', '' and garbage give None)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ratio(value: object) -> float | None:
    """'30000/1001' -> 29.97; '0/0' and garbage -> None."""
    if not isinstance(value, str) or "/" not in value:
        return _number(value)
    num, _, den = value.partition("/")
    num_f, den_f = _number(num), _number(den)
    if num_f is None or not den_f:
        return None
    return num_f / den_f


def _stream_duration(stream: dict) -> float | None:
    """The stream's duration; Matroska keeps it only in a 'DURATION' tag (HH:MM:SS.fffffffff)."""
    duration = _number(stream.get("duration"))
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
        rotation = _number(side_data.get("rotation"))
        if rotation is not None:
            degrees = -rotation
            break
    if degrees is None:
        degrees = _number((stream.get("tags") or {}).get("rotate")) or 0.0
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
    _check_file(path, "probe")
    data = None
    if libav.usable(path):
        try:
            data = libav.probe(path)
        except libav.Unfit as err:
            log.debug("%s: probing with ffprobe (PyAV: %s)", path, err)
    return _media_info(path, data if data is not None else _ffprobe(path, timeout_s))


def _ffprobe(path: str, timeout_s: float) -> dict:
    # The arguments of ffmpeg.probe; run here because ffmpeg-python 0.2.0's probe has no timeout.
    args = [FFPROBE, "-v", "level+error", "-show_format", "-show_streams", "-of", "json"]
    args += ["-i", path]  # -i: a file named "-x.mp4" is not an option
    out, _ = _run(args, "probe", path, "ffprobe", timeout_s)
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
    sample_rate = int(_number(audio.get("sample_rate")) or 0)
    channels = int(_number(audio.get("channels")) or 0)
    if sample_rate <= 0:
        raise InputError("probe", f"{path}: the audio stream has no sample rate")

    start = _number(fmt.get("start_time")) or 0.0
    audio_duration, video_duration = _stream_duration(audio), _stream_duration(video)
    duration = _number(fmt.get("duration"))
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
        video_start_time_s=_number(video.get("start_time")),
        audio_start_time_s=_number(audio.get("start_time")),
        sample_aspect_ratio=_sample_aspect_ratio(video),
        num_video_streams=len(videos),
        format_name=str(fmt.get("format_name", "")),
    )


# ---------------------------------------------------------------------------------------------
# audio


def _stream_map(index: int, kind: str) -> str:
    return f"0:{index}" if index >= 0 else f"0:{kind}:0"


def decode_audio(path: str, info: MediaInfo, timeout_s: float = 300) -> np.ndarray:
    """The first audio stream as int16 mono (all channels mixed down) at 22050 Hz: through PyAV,
    or the ffmpeg tool where PyAV fails or falls short (whose errors say what is wrong).

    Sample 0 is the container's start time: a stream that starts later is padded with silence,
    so audio and frame times share one origin. (Not with `aresample=first_pts=0`: that trusts
    the packet timestamps, and drops most of the audio of files whose timestamps are broken.)
    """
    _check_file(path, "decode_audio")
    if libav.usable(path):
        try:
            audio = libav.decode_audio(path, info.audio_stream_index, timeout_s)
        except libav.TimedOut as err:
            raise InputError("decode_audio", f"{path}: {err}") from err
        except libav.Unfit as err:
            log.debug("%s: audio through ffmpeg (PyAV: %s)", path, err)
        else:
            if not _falls_short(info, len(audio) / SAMPLE_RATE):
                return _pad_start(audio, info)
            log.debug("%s: audio through ffmpeg (PyAV decoded too little)", path)
    return _pad_start(_ffmpeg_audio(path, info, timeout_s), info)


def _ffmpeg_audio(path: str, info: MediaInfo, timeout_s: float) -> np.ndarray:
    args = (
        ffmpeg.input(path)
        .output(
            "pipe:",
            map=_stream_map(info.audio_stream_index, "a"),
            vn=None,  # never decode video here
            sn=None,
            dn=None,
            ac=1,  # swresample's downmix matrix: a proper mix of every channel, not the first
            ar=SAMPLE_RATE,
            acodec="pcm_s16le",
            f="s16le",
        )
        .compile(cmd=[FFMPEG, "-nostdin", "-hide_banner", "-v", "level+error"])
    )
    out, err = _run(args, "decode_audio", path, "ffmpeg", timeout_s)
    audio = np.frombuffer(out[: len(out) // 2 * 2], dtype="<i2").astype(np.int16)
    if audio.size == 0:
        raise InputError(
            "decode_audio",
            f"{path}: ffmpeg decoded no audio samples "
            f"({info.audio_codec}, {_ffmpeg_reason(err, path)})",
        )
    _check_complete(path, info, audio.size / SAMPLE_RATE, err)
    return audio


def _pad_start(audio: np.ndarray, info: MediaInfo) -> np.ndarray:
    """Prepend silence for an audio stream that starts after the container does."""
    if info.audio_start_time_s is None:
        return audio
    late = round((info.audio_start_time_s - info.start_time_s) * SAMPLE_RATE)
    if late <= 0 or late > info.duration_s * SAMPLE_RATE:  # on time, or a nonsense start time
        return audio
    return np.concatenate([np.zeros(late, np.int16), audio])


def _expected_audio_s(info: MediaInfo) -> float:
    return info.audio_duration_s or info.duration_s


def _falls_short(info: MediaInfo, decoded_s: float) -> bool:
    """Less than 90 % of the audio the file declares."""
    expected = _expected_audio_s(info)
    return bool(expected) and decoded_s < 0.9 * expected


def _check_complete(path: str, info: MediaInfo, decoded_s: float, stderr: bytes) -> None:
    """A truncated or corrupt file decodes partly with errors: fail it rather than keep a stub."""
    if stderr.decode("utf-8", "replace").strip() and _falls_short(info, decoded_s):
        raise InputError(
            "decode_audio",
            (
                f"{path}: truncated or corrupt: decoded {decoded_s:.2f} s of audio out of "
                f"{_expected_audio_s(info):.2f} s ({_ffmpeg_reason(stderr, path)})"
            ),
        )


# ---------------------------------------------------------------------------------------------
# frames


def resized_size(display_size: tuple[int, int], resize_short: int) -> tuple[int, int]:
    """(width, height) with the shorter side `resize_short` and the aspect ratio kept."""
    width, height = display_size
    if width <= height:
        return resize_short, max(resize_short, round(height * resize_short / width))
    return max(resize_short, round(width * resize_short / height)), resize_short


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre crop [N, H, W, 3] frames to [N, size, size, 3]."""
    height, width = frames.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def rotate_frames(frames: np.ndarray, degrees_cw: int) -> np.ndarray:
    """Turn [N, H, W, C] frames clockwise by a multiple of 90 degrees."""
    return np.ascontiguousarray(np.rot90(frames, k=-(degrees_cw // 90) % 4, axes=(1, 2)))


def resize_and_crop(frame: np.ndarray, size: int = 224, resize_short: int = 256) -> np.ndarray:
    """One full-size RGB frame -> shorter side `resize_short` (bicubic, antialiased) -> centre
    `size` crop: what `sample_frames` does, for frames decoded some other way."""
    width, height = resized_size((frame.shape[1], frame.shape[0]), resize_short)
    resized = Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC)
    return center_crop(np.asarray(resized)[None], size)[0]


# Containers without a keyframe index, where seeking lands on the wrong frames (measured:
# decord off by up to 12 frames and PyAV's first pictures unlike ffmpeg's in MPEG-PS; ffmpeg's -ss in MPEG-TS lands between keyframes and
# decodes broken pictures): these are decoded from the start, in one pass.
_INEXACT_SEEK_FORMATS = frozenset({"mpeg", "mpegts", "mpegvideo", "m2ts", "h264", "hevc"})


def _seeks_exactly(info: MediaInfo) -> bool:
    return not set(info.format_name.split(",")) & _INEXACT_SEEK_FORMATS


def _libav_unfit_reason(path: str, info: MediaInfo) -> str | None:
    """Why PyAV should not be tried for this file's frames, or None when it should."""
    if not libav.usable(path):
        return "not a regular file"
    if not _seeks_exactly(info):
        # Measured on MPEG-PS: PyAV's first pictures differ from the ffmpeg tool's.
        return f"seeking in {info.format_name} files is inexact"
    return None


def _select_expression(targets: np.ndarray, window: float, tail_from: float | None) -> str:
    """ffmpeg `select` keeping, per target time A: the frames in [A - window, A] (the one shown
    at A is the last of them) and the first frame at or after A (the one shown at A when none
    starts in the window, e.g. before the first frame). `tail_from` also keeps the frames from
    then on, so a time past the end can clamp to the very last frame."""
    terms = []
    for target in targets:
        terms.append(f"between(t,{target - window:.6f},{target:.6f})")
        terms.append(f"gte(t,{target:.6f})*not(gte(prev_t,{target:.6f}))")  # prev_t NaN: 1st
    if tail_from is not None:
        terms.append(f"gte(t,{tail_from:.6f})")
    return "+".join(terms)


_SHOWINFO = re.compile(rb"Parsed_showinfo.*?\bn:\s*\d+\s+pts:\s*\S+\s+pts_time:(\S+)")


@dataclass(frozen=True)
class _Selection:
    """What one ffmpeg call kept: frames [N, H, W, 3] and their absolute times."""

    frames: np.ndarray
    times: np.ndarray
    tail_from: float | None
    log: bytes  # ffmpeg's stderr, to say why when a frame is missing

    def pick(self, target: float, window: float) -> np.ndarray | None:
        """The frame displayed at `target`; None when this selection cannot tell."""
        times = self.times
        shown = np.flatnonzero((times <= target + 1e-6) & (times >= target - window - 1e-6))
        if shown.size:
            return self.frames[shown[np.argmax(times[shown])]]
        later = np.flatnonzero(times > target)
        if later.size:  # nothing starts in the window: before the first frame, or a long gap
            return self.frames[later[np.argmin(times[later])]]
        # Past the end: the last frame overall, if the tail was kept and reached.
        if self.tail_from is not None and times.size and np.nanmax(times) >= self.tail_from:
            return self.frames[int(np.nanargmax(times))]
        return None


def _ffmpeg_select(
    path: str,
    info: MediaInfo,
    targets: np.ndarray,
    window: float,
    tail_from: float | None,
    to_end: bool,
    out_size: tuple[int, int],
    threads: int,
    timeout_s: float,
) -> _Selection:
    """One ffmpeg call: the frames `_select_expression` keeps, scaled, with their times.

    -copyts keeps the file's own timestamps, so `t` in the filter compares with `targets`
    (absolute times); -ss seeks to a second before the first frame wanted, and -t stops a
    second after the last one unless `to_end`.
    """
    width, height = out_size
    first = min(float(targets[0]), tail_from if tail_from is not None else math.inf)
    seek = first - window - 1.0 - info.start_time_s  # input -ss counts from the start time
    input_args: dict[str, object] = {"threads": threads}
    if seek > 0 and _seeks_exactly(info):
        input_args["ss"] = f"{seek:.6f}"
    else:
        seek = 0.0
    if not to_end:
        input_args["t"] = f"{float(targets[-1]) - info.start_time_s - seek + 1.0:.6f}"
    chain = ",".join(
        [
            f"select='{_select_expression(targets, window, tail_from)}'",
            f"scale={width}:{height}:flags=bicubic",  # ffmpeg inserts autorotate before this
            "showinfo",  # logs each kept frame's time: how we know which frame is which
        ]
    )
    args = (
        ffmpeg.input(path, **input_args)
        .output(
            "pipe:",
            map=_stream_map(info.video_stream_index, "v"),
            an=None,
            sn=None,
            dn=None,
            vf=chain,
            fps_mode="passthrough",
            f="rawvideo",
            pix_fmt="rgb24",
        )
        .compile(
            cmd=[FFMPEG, "-nostdin", "-hide_banner", "-nostats", "-v", "level+info", "-copyts"]
        )
    )
    out, err = _run(args, "decode_frames", path, "ffmpeg", timeout_s)
    frame_bytes = width * height * 3
    frames = np.frombuffer(out, np.uint8)[: len(out) // frame_bytes * frame_bytes]
    frames = frames.reshape(-1, height, width, 3)
    times = np.array([_number(m.decode()) for m in _SHOWINFO.findall(err)], np.float64)
    if len(times) != len(frames):
        raise InputError(
            "decode_frames", f"{path}: ffmpeg returned {len(frames)} frames but logged {len(times)}"
        )
    return _Selection(frames, times, tail_from, err)


def _last_frame_time(path: str, info: MediaInfo, timeout_s: float) -> float | None:
    """The video stream's last presentation time, from its packets (demuxing, no decoding)."""
    stream = str(info.video_stream_index) if info.video_stream_index >= 0 else "v:0"
    args = [FFPROBE, "-v", "level+error", "-select_streams", stream]
    args += ["-show_entries", "packet=pts_time", "-of", "csv=p=0", "-i", path]
    out, _ = _run(args, "decode_frames", path, "ffprobe", timeout_s)
    times = [_number(line.strip(" ,")) for line in out.decode("utf-8", "replace").splitlines()]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _ffmpeg_frames(
    path: str,
    info: MediaInfo,
    times_s: np.ndarray,
    out_size: tuple[int, int],
    threads: int,
    timeout_s: float,
) -> np.ndarray:
    """ffmpeg decodes sequentially and keeps only the frames displayed at the wanted times.

    Times go in groups, one ffmpeg call each, seeking to each group's stretch of the file
    (one group from the start where seeking is inexact).
    """
    frame_period = 1.0 / info.fps if info.fps else 0.1
    window = min(max(1.5 * frame_period, 0.02), 0.5)
    targets = np.unique(info.start_time_s + times_s)  # absolute times, sorted
    video_start = info.start_time_s if info.video_start_time_s is None else info.video_start_time_s
    length = info.video_duration_s or (info.duration_s + info.start_time_s - video_start)
    end = video_start + length if length > 0 else None  # estimated end of the last frame

    def select(group: np.ndarray, tail_from: float | None, to_end: bool) -> _Selection:
        return _ffmpeg_select(
            path, info, group, window, tail_from, to_end, out_size, threads, timeout_s
        )

    picked: dict[float, np.ndarray] = {}
    missing: list[float] = []
    per_call = _TIMES_PER_FFMPEG_CALL if _seeks_exactly(info) else len(targets)
    groups = [targets[i : i + per_call] for i in range(0, len(targets), per_call)]
    for number, group in enumerate(groups):
        # Near the estimated end, also keep the last second: times past it clamp to its end.
        near_end = end is not None and group[-1] > end - 1.0
        last = number == len(groups) - 1
        selection = select(group, end - 1.0 if near_end else None, to_end=last or near_end)
        for target in group.tolist():
            frame = selection.pick(target, window)
            if frame is None:
                missing.append(target)
            else:
                picked[target] = frame
    if missing:  # past the end of a video whose duration was misreported: find the real end
        last_time = _last_frame_time(path, info, timeout_s)
        selection = None
        if last_time is not None:  # keep from just before it: t and pts_time round differently
            selection = select(np.array(missing), last_time - 1e-3, to_end=True)
        for target in missing:
            frame = selection.pick(target, window) if selection else None
            if frame is None:
                why = _ffmpeg_reason(selection.log, path) if selection else "no frames at all"
                raise InputError(
                    "decode_frames",
                    f"{path}: ffmpeg decoded no video frame near "
                    f"{target - info.start_time_s:.2f} s ({info.video_codec}: {why})",
                )
            picked[target] = frame
    return np.stack([picked[t] for t in (info.start_time_s + times_s).tolist()])


def sample_frames_with_backend(
    path: str,
    info: MediaInfo,
    times_s: Sequence[float],
    size: int = 224,
    resize_short: int = 256,
    timeout_s: float = 300,
    backend: str = "auto",
    threads: int = 0,
) -> tuple[np.ndarray, str]:
    """`sample_frames`, also saying which decoder made the frames ("pyav" or "ffmpeg").

    backend: "auto" (PyAV, else the ffmpeg tool), or "pyav" / "ffmpeg" to force one (tests,
    benches). threads: decoder threads; 0 lets the decoder choose (all cores). With one pipeline
    worker per core, 1 spends less CPU on the same frames.
    """
    if backend not in ("auto", "pyav", "ffmpeg"):
        raise ValueError(f"backend must be auto, pyav or ffmpeg, not {backend!r}")
    if not 0 < size <= resize_short:
        raise ValueError(f"need 0 < size <= resize_short, got {size} and {resize_short}")
    times = np.asarray(times_s, np.float64).reshape(-1)
    if not np.all(np.isfinite(times)):
        raise ValueError(f"frame times must be finite, got {list(times_s)}")
    times = np.maximum(times, 0.0)
    if times.size == 0:
        return np.zeros((0, size, size, 3), np.uint8), backend
    _check_file(path, "decode_frames")
    out_size = resized_size(info.display_size, resize_short)

    reason = "asked for" if backend == "ffmpeg" else _libav_unfit_reason(path, info)
    if reason is None:
        targets = np.unique(info.start_time_s + times)  # absolute times, sorted
        try:
            frames = libav.frames_at(
                path, info.video_stream_index, targets, out_size, threads, timeout_s
            )
        except libav.TimedOut as err:
            raise InputError("decode_frames", f"{path}: {err}") from err
        except libav.Unfit as err:
            reason = f"PyAV: {err}"
        else:
            picked = frames[np.searchsorted(targets, info.start_time_s + times)]
            return center_crop(picked, size), "pyav"
    if backend == "pyav":
        raise InputError("decode_frames", f"{path}: PyAV cannot decode it ({reason})")
    log.debug("%s: frames through ffmpeg (%s)", path, reason)
    frames = _ffmpeg_frames(path, info, times, out_size, threads, timeout_s)
    return center_crop(frames, size), "ffmpeg"


def sample_frames(
    path: str,
    info: MediaInfo,
    times_s: Sequence[float],
    size: int = 224,
    resize_short: int = 256,
    timeout_s: float = 300,
    threads: int = 0,
) -> np.ndarray:
    """uint8 [len(times_s), size, size, 3] RGB: for each time (seconds from the container start)
    the frame displayed then, as displayed (rotation and pixel aspect applied), its shorter side
    scaled to `resize_short` (bicubic, antialiased) and centre-cropped to `size`. Times past the
    last frame get the last frame. PyAV seeks and decodes only what is needed; the ffmpeg tool
    takes over where PyAV cannot be trusted (missing or disordered timestamps). `timeout_s`
    bounds each ffmpeg call."""
    return sample_frames_with_backend(
        path, info, times_s, size, resize_short, timeout_s, threads=threads
    )[0]
