"""Teacher frames through the ffmpeg tool, where PyAV cannot be trusted: ffmpeg decodes
sequentially and keeps only the frames displayed at the wanted times (its `select` filter),
logging each kept frame's time (`showinfo`), which is how we know which frame is which.

Times go in groups, one ffmpeg call each, seeking to each group's stretch of the file, and each
group's frames are handed on before the next is decoded, so a long video's frames are never
all held at once. Where seeking is inexact (MPEG-PS/TS, raw streams) a group seeks to well
before its first time, so that decoding has passed a keyframe when the wanted frames come.
A frame that started before a time's look-back window (under 2 fps, or after a gap in the
frames) is found by the packets' start times and fetched by a call of its own.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import ffmpeg
import numpy as np

from pipeline.decode.media_info import MediaInfo, number
from pipeline.decode.tools import FFMPEG, FFPROBE, run, stream_map
from pipeline.errors import InputError
from schemas.media import ffmpeg_reason, input_options, tool_args

# At most this many times per ffmpeg call, so the select expression stays short and each call
# reads only the stretch of the file it needs.
TIMES_PER_CALL = 32
# Containers without a keyframe index, where seeking lands on the wrong frames (measured:
# decord off by up to 12 frames and PyAV's first pictures unlike ffmpeg's in MPEG-PS; ffmpeg's
# -ss in MPEG-TS lands between keyframes and decodes broken pictures until the next keyframe).
INEXACT_SEEK_FORMATS = frozenset({"mpeg", "mpegts", "mpegvideo", "m2ts", "h264", "hevc"})
# How far before a group's first time an inexact seek lands (longer than any usual GOP).
INEXACT_SEEK_MARGIN_S = 10.0
# A frame whose start time is known is kept within this of it (t and pts_time round apart).
_EXACT_WINDOW_S = 1e-3


def seeks_exactly(info: MediaInfo) -> bool:
    return not set(info.format_name.split(",")) & INEXACT_SEEK_FORMATS


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
        shown = self.in_window(target, window)
        if shown is not None:
            return shown
        later = np.flatnonzero(self.times > target)
        if later.size:  # nothing starts in the window: before the first frame, or a long gap
            return self.frames[later[np.argmin(self.times[later])]]
        # Past the end: the last frame overall, if the tail was kept and reached.
        times = self.times
        if self.tail_from is not None and times.size and np.nanmax(times) >= self.tail_from:
            return self.frames[int(np.nanargmax(times))]
        return None

    def in_window(self, target: float, window: float) -> np.ndarray | None:
        """The last frame starting in [target - window, target], if one does."""
        times = self.times
        shown = np.flatnonzero((times <= target + 1e-6) & (times >= target - window - 1e-6))
        return self.frames[shown[np.argmax(times[shown])]] if shown.size else None

    def only_later(self, target: float, window: float) -> bool:
        """Whether `pick` takes a frame after `target`: none starts in its window before it."""
        return self.in_window(target, window) is None and bool(np.any(self.times > target))


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
    if not seeks_exactly(info):
        seek -= INEXACT_SEEK_MARGIN_S
    input_args: dict[str, object] = {"threads": threads, **input_options()}
    if seek > 0:
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
            map=stream_map(info.video_stream_index, "v"),
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
    out, err = run(args, "decode_frames", path, "ffmpeg", timeout_s)
    frame_bytes = width * height * 3
    frames = np.frombuffer(out, np.uint8)[: len(out) // frame_bytes * frame_bytes]
    frames = frames.reshape(-1, height, width, 3)
    times = np.array([number(m.decode()) for m in _SHOWINFO.findall(err)], np.float64)
    if len(times) != len(frames):
        raise InputError(
            "decode_frames", f"{path}: ffmpeg returned {len(frames)} frames but logged {len(times)}"
        )
    return _Selection(frames, times, tail_from, err)


def _packet_times(path: str, info: MediaInfo, timeout_s: float) -> np.ndarray:
    """The video stream's presentation times, sorted, from its packets (demuxing, no
    decoding): where each frame starts, however sparse or irregular the frames."""
    stream = str(info.video_stream_index) if info.video_stream_index >= 0 else "v:0"
    args = [FFPROBE, "-v", "level+error", "-select_streams", stream]
    args += ["-show_entries", "packet=pts_time", "-of", "csv=p=0", *tool_args(), "-i", path]
    out, _ = run(args, "decode_frames", path, "ffprobe", timeout_s)
    times = [number(line.strip(" ,")) for line in out.decode("utf-8", "replace").splitlines()]
    return np.sort(np.array([t for t in times if t is not None], np.float64))


def ffmpeg_frames(
    path: str,
    info: MediaInfo,
    targets: np.ndarray,
    out_size: tuple[int, int],
    threads: int,
    timeout_s: float,
) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] scaled to `out_size`, one per absolute time in `targets` (sorted): the
    frame displayed then; times past the last frame get the last frame."""
    frame_period = 1.0 / info.fps if info.fps else 0.1
    # capped: a frame rate misreported low must not keep every frame of a long stretch; a
    # frame that starts before its target's window is reached back to (`reach_back`)
    window = min(max(1.5 * frame_period, 0.02), 0.5)
    video_start = info.start_time_s if info.video_start_time_s is None else info.video_start_time_s
    length = info.video_duration_s or (info.duration_s + info.start_time_s - video_start)
    end = video_start + length if length > 0 else None  # estimated end of the last frame

    @functools.cache  # listed once a video, and only if ever needed
    def frame_starts() -> np.ndarray:
        return _packet_times(path, info, timeout_s)

    def select(
        group: np.ndarray, tail_from: float | None, to_end: bool, within: float = window
    ) -> _Selection:
        return _ffmpeg_select(
            path, info, group, within, tail_from, to_end, out_size, threads, timeout_s
        )

    def reach_back(group: np.ndarray, selection: _Selection) -> dict[float, np.ndarray]:
        """The frames displayed at the times of `group` whose frame starts before their
        window (under 2 fps, or after a gap in the frames), found by the frames' start times."""
        unsure = [t for t in group.tolist() if selection.only_later(t, window)]
        if not unsure:
            return {}
        starts = frame_starts()
        index = np.searchsorted(starts, np.array(unsure) + 1e-6, side="right") - 1
        shown_at = {
            t: float(starts[i]) for t, i in zip(unsure, index.tolist(), strict=True) if i >= 0
        }
        if not shown_at:  # all before the first frame: the first frame is right
            return {}
        exact = select(np.unique(list(shown_at.values())), None, False, _EXACT_WINDOW_S)
        found = {t: exact.in_window(start, _EXACT_WINDOW_S) for t, start in shown_at.items()}
        return {t: frame for t, frame in found.items() if frame is not None}

    # Frames go out in time order; once one is missing (past the end of a video whose
    # duration was misreported), the rest wait for the real end to be found.
    waiting: list[tuple[float, np.ndarray | None]] = []
    groups = [targets[i : i + TIMES_PER_CALL] for i in range(0, len(targets), TIMES_PER_CALL)]
    for number_, group in enumerate(groups):
        # Near the estimated end, also keep the last second: times past it clamp to its end.
        near_end = end is not None and group[-1] > end - 1.0
        last = number_ == len(groups) - 1
        selection = select(group, end - 1.0 if near_end else None, to_end=last or near_end)
        earlier = reach_back(group, selection)
        for target in group.tolist():
            frame = earlier.get(target)
            frame = selection.pick(target, window) if frame is None else frame
            if frame is not None and not waiting:
                yield frame
            else:
                waiting.append((target, frame))
    missing = np.array([t for t, frame in waiting if frame is None])
    if not missing.size:
        yield from (frame for _, frame in waiting)
        return
    starts, selection = frame_starts(), None
    if starts.size:  # keep from just before the last: t and pts_time round differently
        selection = select(missing, float(starts[-1]) - 1e-3, to_end=True)
    for target, frame in waiting:
        if frame is None:
            frame = selection.pick(target, window) if selection else None
        if frame is None:
            why = ffmpeg_reason(selection.log, path) if selection else "no frames at all"
            raise InputError(
                "decode_frames",
                f"{path}: ffmpeg decoded no video frame near "
                f"{target - info.start_time_s:.2f} s ({info.video_codec}: {why})",
            )
        yield frame
