"""Read any audio or video file as mono float32 at 22050 Hz, and tile short clips.

soundfile reads WAV/FLAC/OGG/MP3 quickly in-process; everything else (video containers, AAC,
Opus in WebM, ...) is decoded by ffmpeg in a subprocess, which also mixes down and resamples.
Like the pipeline's decoders, both read only regular files, and ffmpeg only the formats
schemas/media.py allows: a playlist that names a named pipe would block ffmpeg for good. An
ffmpeg that still does not finish (a stalled network file system) is stopped after
`FFMPEG_TIMEOUT_S`, and the file fails with that reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ffmpeg
import numpy as np
import soundfile as sf

from schemas import SAMPLE_RATE
from schemas.media import ffmpeg_reason, input_options, refusal

FFMPEG_TIMEOUT_S = 600.0  # the pipeline's --decode-timeout default


class AudioError(ValueError):
    """A file cannot be read as audio; the message names the file and the problem."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate`, all channels mixed down."""
    path = Path(path)
    if not path.is_file():
        what = (
            "not a regular file (a named pipe, device or folder)"
            if path.exists()
            else "no such file"
        )
        raise AudioError(f"{path}: {what}")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        wave = data.mean(axis=1)
        if rate != sample_rate:
            import librosa  # imported here: only resampled files pay for it

            with librosa_errors(path):
                wave = librosa.resample(
                    wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq"
                )
    except (sf.LibsndfileError, RuntimeError, TypeError):
        wave = _ffmpeg_decode(path, sample_rate)  # not a format libsndfile knows: ask ffmpeg
    if wave.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.isfinite(wave).all():  # a float file can hold them; every feature would be NaN
        raise AudioError(f"{path}: non-finite (NaN or inf) samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


@contextmanager
def librosa_errors(path: Path) -> Iterator[None]:
    """librosa's errors (not ValueErrors) as an AudioError that names the file, so that the
    programs report them in one line."""
    from librosa.util.exceptions import LibrosaError  # the caller is about to use librosa

    try:
        yield
    except LibrosaError as err:
        raise AudioError(f"{path}: {err}") from err


def _ffmpeg_decode(path: Path, sample_rate: int) -> np.ndarray:
    stream = ffmpeg.input(str(path), **input_options()).output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0"
    )
    command = stream.compile(cmd=["ffmpeg", "-nostdin", "-hide_banner", "-v", "level+error"])
    try:  # killed at the timeout
        done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise AudioError(f"{path}: ffmpeg did not finish in {FFMPEG_TIMEOUT_S:g} s") from err
    if done.returncode != 0:
        reason = refusal(done.stderr) or ffmpeg_reason(done.stderr, str(path))
        if "matches no streams" in reason:
            reason = "no audio stream"
        raise AudioError(f"{path}: cannot decode audio ({reason})")
    return np.frombuffer(done.stdout, dtype=np.float32)


def tile(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat a clip circularly up to at least `num_samples` (longer clips are kept whole)."""
    if wave.shape[-1] >= num_samples:
        return wave
    return np.resize(wave, num_samples)  # np.resize repeats the data cyclically
