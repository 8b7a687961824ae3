"""The media formats every decoder opens (the pipeline's, and eval's for datasets and
`eval.predict`): every demuxer FFmpeg has but those whose input names other files, devices or
network streams, and only through the `file` protocol. PyAV and the ffmpeg tools get the same
options (`input_options`), and the same reading of their logs: why a tool refused an input
(`refusal`), what else went wrong (`ffmpeg_reason`).

FFmpeg detects a format by its content, whatever the file's name, and a playlist or a stream
session then makes it open what it names, inside its own calls, where no timeout reaches: a
regular file `clip.mp4` holding "ffconcat version 1.0" and "file some.fifo" hung a run for
good, and an HLS playlist can make the decoder read any local file or URL into a shard. Such an
input fails at once instead, with a message naming its format (`refusal`). With only the `file`
protocol, nothing inside FFmpeg reaches the network, nor takes "concat:a|b.mp4" for a
protocol: inputs in object stores and on the web are copied to local files first.
"""

from __future__ import annotations

import functools
import re

import av

REFUSED_DEMUXERS = frozenset({
    "concat", "hls", "dash", "imf",  # playlists and manifests: they name other files or URLs
    "sdp", "rtsp", "rtp", "sap",  # stream sessions: they open network sockets
    "lavfi", "alsa", "fbdev", "kmsgrab", "oss", "video4linux2,v4l2", "x11grab",  # graphs, devices
})  # fmt: skip


@functools.cache
def input_options() -> dict[str, str]:
    """FFmpeg's format options for opening an input (PyAV's container_options; the ffmpeg tools'
    input options): the demuxers PyAV's FFmpeg has, less the refused ones. The ffmpeg tool may
    be another FFmpeg: a demuxer only it has is refused too."""
    demuxers = []
    for name in sorted(av.formats_available):  # muxers' names too
        try:
            av.format.ContainerFormat(name, "r")
        except ValueError:  # a muxer only
            continue
        if name not in REFUSED_DEMUXERS:
            demuxers.append(name)
    return {"format_whitelist": ",".join(demuxers), "protocol_whitelist": "file"}


def tool_args() -> list[str]:
    """`input_options` as an ffmpeg tool's arguments, to go before its `-i`."""
    return [arg for name, value in input_options().items() for arg in (f"-{name}", value)]


# what the tools log ("-v level+error") when the content is in a refused format
_REFUSED = re.compile(rb"^\[(\w+) @ 0x[0-9a-f]+\]\s*(?:\[\w+\]\s*)?Format not on whitelist", re.M)


def refusal(stderr: bytes) -> str | None:
    """Why an ffmpeg tool refused its input, when the reason is its format; else None."""
    found = _REFUSED.search(stderr)
    if found is None:
        return None
    return (
        f"its content is in the {found.group(1).decode()} format, which names other files, "
        "streams or devices for the decoder to open: not read (to use what it names, remux "
        "that into one file first)"
    )


_MAX_MESSAGE_CHARS = 300
_LOG_LINE = re.compile(r"^(?:\[[^\]]+ @ 0x[0-9a-f]+\]\s*)?\[(\w+)\]\s*(.*)$")
_LEVELS = ("fatal", "error", "warning")


def ffmpeg_reason(stderr: bytes, path: str) -> str:
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
