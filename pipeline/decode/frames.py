"""Teacher frames of one input at given times, as the teachers see them: the frame displayed at
each time, as displayed (rotation and pixel aspect applied), its shorter side scaled to 256
(bicubic, antialiased) and centre-cropped to 224.

PyAV decodes them in-process, seeking and decoding only what is needed; the ffmpeg tool takes
over where PyAV cannot be trusted (no regular file, inexact seeking, missing or disordered
timestamps), also part-way through a video. Frames come out one at a time: a long video's
frames are never all held at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

import pipeline.decode.libav as libav
from pipeline.decode.ffmpeg_frames import ffmpeg_frames, seeks_exactly
from pipeline.decode.media_info import MediaInfo
from pipeline.decode.tools import check_file
from pipeline.errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "ffmpeg")


def resized_size(display_size: tuple[int, int], resize_short: int) -> tuple[int, int]:
    """(width, height) with the shorter side `resize_short` and the aspect ratio kept."""
    width, height = display_size
    if width <= height:
        return resize_short, max(resize_short, round(height * resize_short / width))
    return max(resize_short, round(width * resize_short / height)), resize_short


def center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre crop an [H, W, 3] frame to [size, size, 3]."""
    height, width = frame.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(frame[top : top + size, left : left + size])


class FrameStream:
    """uint8 [size, size, 3] RGB frames, one per time in `times_s` (seconds from the container
    start), as an iterator; times past the last frame get the last frame. Times in increasing
    order stream (one frame held at a time); others are decoded in order and handed back.

    backend: "auto" (PyAV, the ffmpeg tool where PyAV cannot), or "pyav" / "ffmpeg" to force one
    (tests, benches); after iterating, `used` says which decoded them. threads: decoder threads
    (0: the decoder's choice; with one pipeline worker per core, 1 spends less CPU).
    """

    def __init__(
        self,
        path: str,
        info: MediaInfo,
        times_s: Sequence[float],
        size: int = 224,
        resize_short: int = 256,
        timeout_s: float = 300,
        threads: int = 0,
        backend: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if not 0 < size <= resize_short:
            raise ValueError(f"need 0 < size <= resize_short, got {size} and {resize_short}")
        times = np.asarray(times_s, np.float64).reshape(-1)
        if not np.all(np.isfinite(times)):
            raise ValueError(f"frame times must be finite, got {list(times_s)}")
        self.path, self.info, self.size, self.timeout_s = path, info, size, timeout_s
        self.targets = info.start_time_s + np.maximum(times, 0.0)  # absolute times
        self.out_size = resized_size(info.display_size, resize_short)
        self.threads, self.backend = threads, backend
        self.used: list[str] = []  # the decoders that made the frames, in order

    def __iter__(self) -> Iterator[np.ndarray]:
        if not len(self.targets):
            return
        check_file(self.path, "decode_frames")
        if np.any(np.diff(self.targets) < 0):  # out of order: decode in order, hand back all
            order = np.argsort(self.targets, kind="stable")
            frames = list(self._in_order(self.targets[order]))
            yield from (frames[i] for i in np.argsort(order, kind="stable"))
            return
        yield from self._in_order(self.targets)

    def _in_order(self, targets: np.ndarray) -> Iterator[np.ndarray]:
        done = 0
        why = "asked for" if self.backend == "ffmpeg" else self._pyav_unfit()
        if why is None:
            try:
                for frame in self._pyav(targets):
                    if not done:
                        self.used.append("pyav")
                    yield frame
                    done += 1
                return
            except libav.TimedOut as err:
                raise InputError("decode_frames", f"{self.path}: {err}") from err
            except libav.Unfit as err:
                why = f"PyAV: {err}"
        if self.backend == "pyav":
            raise InputError("decode_frames", f"{self.path}: PyAV cannot decode it ({why})")
        log.debug("%s: frames %d on through the ffmpeg tool (%s)", self.path, done, why)
        self.used.append("ffmpeg")
        yield from self._tool(targets[done:])

    def _pyav_unfit(self) -> str | None:
        if not libav.usable(self.path):
            return "not a regular file"
        if not seeks_exactly(self.info):
            # Measured on MPEG-PS: PyAV's first pictures differ from the ffmpeg tool's.
            return f"seeking in {self.info.format_name} files is inexact"
        return None

    def _pyav(self, targets: np.ndarray) -> Iterator[np.ndarray]:
        return self._cropped(targets, lambda unique: libav.frames_at(
            self.path, self.info.video_stream_index, unique, self.out_size, self.threads,
            self.timeout_s,
        ))  # fmt: skip

    def _tool(self, targets: np.ndarray) -> Iterator[np.ndarray]:
        return self._cropped(targets, lambda unique: ffmpeg_frames(
            self.path, self.info, unique, self.out_size, self.threads, self.timeout_s
        ))  # fmt: skip

    def _cropped(self, targets: np.ndarray, decode) -> Iterator[np.ndarray]:
        """Each distinct time decoded once, cropped, and repeated as often as it is asked for."""
        unique, repeats = np.unique(targets, return_counts=True)
        for picture, count in zip(decode(unique), repeats, strict=True):
            frame = center_crop(picture, self.size)
            yield from [frame] * int(count)
