"""The audio of one input, decoded once: int16 mono at 22050 Hz, aligned to the container's
start time (a stream that starts late is padded with silence), so audio sample `i` and frame
time `i / 22050` describe the same moment. A long track is held in a temporary file, mapped
(pipeline/decode/spool.py)."""

from __future__ import annotations

import ffmpeg
import numpy as np

import pipeline.decode.libav as libav
from pipeline.decode.dispatch import pyav_or_tools
from pipeline.decode.media_info import MediaInfo
from pipeline.decode.spool import AudioSpool
from pipeline.decode.tools import FFMPEG, check_file, run, stream_map
from pipeline.errors import InputError
from schemas import SAMPLE_RATE
from schemas.media import ffmpeg_reason, input_options


def decode_audio(path: str, info: MediaInfo, timeout_s: float = 300) -> np.ndarray:
    """The first audio stream as int16 mono (all channels mixed down) at 22050 Hz: through PyAV,
    or the ffmpeg tool where PyAV fails or falls short (whose errors say what is wrong).

    (Not with `aresample=first_pts=0` for the alignment: that trusts the packet timestamps,
    and drops most of the audio of files whose timestamps are broken.)
    """
    check_file(path, "decode_audio")
    audio = pyav_or_tools(
        path,
        "decode_audio",
        lambda: libav.decode_audio(path, info.audio_stream_index, timeout_s),
        lambda: _ffmpeg_audio(path, info, timeout_s),
        refuse=lambda audio: "decoded too little" if _falls_short(info, audio) else None,
    )
    return _pad_start(audio, info)


def _ffmpeg_audio(path: str, info: MediaInfo, timeout_s: float) -> np.ndarray:
    args = (
        ffmpeg.input(path, **input_options())
        .output(
            "pipe:",
            map=stream_map(info.audio_stream_index, "a"),
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
    out, err = run(args, "decode_audio", path, "ffmpeg", timeout_s)
    spool = AudioSpool()  # a long track goes to a temporary file, not the heap
    spool.write(np.frombuffer(memoryview(out)[: len(out) // 2 * 2], dtype="<i2"))
    del out  # a long track's bytes are in the spool's file now: not held twice
    audio = spool.array()
    if audio.size == 0:
        raise InputError(
            "decode_audio",
            f"{path}: ffmpeg decoded no audio samples "
            f"({info.audio_codec}, {ffmpeg_reason(err, path)})",
        )
    if err.decode("utf-8", "replace").strip() and _falls_short(info, audio):
        # a truncated or corrupt file decodes partly with errors: fail it rather than keep a stub
        raise InputError(
            "decode_audio",
            f"{path}: truncated or corrupt: decoded {audio.size / SAMPLE_RATE:.2f} s of audio "
            f"out of {_expected_audio_s(info):.2f} s ({ffmpeg_reason(err, path)})",
        )
    return audio


def _pad_start(audio: np.ndarray, info: MediaInfo) -> np.ndarray:
    """Prepend silence for an audio stream that starts after the container does."""
    if info.audio_start_time_s is None:
        return audio
    late = round((info.audio_start_time_s - info.start_time_s) * SAMPLE_RATE)
    if late <= 0 or late > info.duration_s * SAMPLE_RATE:  # on time, or a nonsense start time
        return audio
    spool = AudioSpool()
    spool.write(np.zeros(late, np.int16))
    spool.write(audio)
    return spool.array()


def _expected_audio_s(info: MediaInfo) -> float:
    return info.audio_duration_s or info.duration_s


def _falls_short(info: MediaInfo, audio: np.ndarray) -> bool:
    """Less than 90 % of the audio the file declares."""
    expected = _expected_audio_s(info)
    return bool(expected) and audio.size / SAMPLE_RATE < 0.9 * expected
