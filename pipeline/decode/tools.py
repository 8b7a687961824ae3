"""The ffmpeg and ffprobe command-line tools: running them, and what their logs say went wrong.

They take over wherever PyAV cannot be trusted (pipeline/decode/libav.py), and their messages
word the failures rows: `run` turns any failure of an input into an `InputError` whose message
names the file and quotes the telling line of the tool's log.
"""

from __future__ import annotations

import os
import stat
import subprocess

from pipeline.errors import InputError
from schemas.media import ffmpeg_reason, refusal

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


def check_file(path: str, stage: str) -> None:
    """InputError unless `path` is a regular file, and not empty: a named pipe, a device or a
    socket could block its reader (and holds no file to read twice)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(stage, f"{path}: no such file") from None
    except OSError as err:
        raise InputError(stage, f"{path}: cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(stage, f"{path}: is a directory, not a media file")
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _SPECIAL_FILES if test(mode)), "special file")
        raise InputError(stage, f"{path}: is a {kind}, not a regular file: not read")
    if os.path.getsize(path) == 0:
        raise InputError(stage, f"{path}: file is empty (0 bytes)")


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def run(args: list[str], stage: str, path: str, what: str, timeout_s: float) -> tuple[bytes, bytes]:
    """Run one ffmpeg/ffprobe command; any failure of the input becomes an InputError."""
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:  # run() has killed the child already
        raise InputError(stage, f"{path}: {what} timed out after {timeout_s:g} s") from err
    except FileNotFoundError as err:  # the tool itself is missing: not this input's fault
        raise RuntimeError(f"{args[0]} is not installed or not on PATH") from err
    if proc.returncode != 0:
        why = (
            refusal(proc.stderr) or f"{what} could not read it: {ffmpeg_reason(proc.stderr, path)}"
        )
        raise InputError(stage, f"{path}: {why}")
    return proc.stdout, proc.stderr


def ffmpeg_version() -> str:
    """The ffmpeg tool's version ("5.1.6-0+deb12u1"), or why there is none."""
    try:
        out = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({type(err).__name__})"
    first = out.stdout.split("\n", 1)[0].split()
    return first[2] if len(first) > 2 else "unknown"


def stream_map(index: int, kind: str) -> str:
    """ffmpeg's -map for stream `index` of the input, or its first stream of `kind`."""
    return f"0:{index}" if index >= 0 else f"0:{kind}:0"
