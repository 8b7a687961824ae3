"""Decoding, one input at a time: probe, the audio once, and the teacher frames at given times.

    info = probe(path)                          # MediaInfo, or InputError("probe", ...)
    audio = decode_audio(path, info)            # int16 mono 22050 Hz, aligned to frame times
    for frame in FrameStream(path, info, times):  # uint8 [224, 224, 3], one at a time
        ...

In-process through PyAV (libav.py), with the ffprobe/ffmpeg tools (tools.py, ffmpeg_frames.py)
taking over wherever PyAV cannot be trusted (dispatch.py); both open only regular files, in the
formats schemas/media.py allows (no playlist or stream description that names other files or
URLs).
Every problem with an input raises
`InputError(stage, message)`, the message naming the file and saying what is wrong in words a
person understands; raw ffmpeg/PyAV errors never escape.

Time base: frame times are seconds from the container's start time (`MediaInfo.start_time_s`),
and the decoded audio is aligned to the same origin.
"""

from pipeline.decode.audio import decode_audio
from pipeline.decode.frames import FrameStream, center_crop, resized_size
from pipeline.decode.media_info import MediaInfo, probe
from pipeline.decode.tools import ffmpeg_version

__all__ = [
    "FrameStream",
    "MediaInfo",
    "center_crop",
    "decode_audio",
    "ffmpeg_version",
    "probe",
    "resized_size",
]
