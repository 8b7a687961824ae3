"""PyAV first, the ffmpeg tools where it cannot be trusted: the one rule every decoding step
follows (probe and audio here; frames stream, so pipeline/decode/frames.py applies it per frame)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import pipeline.decode.libav as libav
from pipeline.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")


def pyav_or_tools(
    path: str,
    stage: str,
    in_process: Callable[[], T],
    tools: Callable[[], T],
    refuse: Callable[[T], str | None] = lambda _: None,
) -> T:
    """`in_process()` (PyAV) when `path` is a regular file and PyAV neither finds it unfit nor
    gives a result `refuse` objects to (it returns why); otherwise `tools()` (the ffmpeg
    tools, whose errors word the failures rows). PyAV running out of time fails the input."""
    why = "not a regular file"
    if libav.usable(path):
        try:
            result = in_process()
        except libav.TimedOut as err:
            raise InputError(stage, f"{path}: {err}") from err
        except libav.Unfit as err:
            why = f"PyAV: {err}"
        else:
            why = refuse(result)
            if why is None:
                return result
    log.debug("%s: %s through the ffmpeg tools (%s)", path, stage, why)
    return tools()
