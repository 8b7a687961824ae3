"""Shard format version 2: one WebDataset sample per segment (SPEC.md section 3).

Members of a sample with key `{video_id}-{segment:04d}`:
  flac        the segment's audio, mono 22050 Hz 16-bit FLAC (audio_codec "flac", the default)
  pcm16       or instead the same audio as raw little-endian int16 (audio_codec "pcm16"): 1.7
              times FLAC's bytes on real sound, no decoding (np.frombuffer), for readers short
              of cores
  {head}.npy  float16 [num_frames, num_classes], one probability row per teacher frame
  json        SampleMetadata

Version 2 records the frame interval the teachers were sampled at (`frame_interval_s`) and the
audio codec; version-1 samples still read (their interval is read off `frame_times_s`).

`encode_sample` and `decode_sample` are the only code that turns samples into tar members and
back; the pipeline, trainer and eval all go through them. Nothing is ever unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import miniaudio as _flac
import numpy as np
import soundfile as sf

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
SAMPLE_RATE = 22050
# a sample's audio member is named after its codec
AUDIO_CODECS = ("flac", "pcm16")
DEFAULT_AUDIO_CODEC = "flac"
PCM16 = np.dtype("<i2")
METADATA_MEMBER = "json"
PROBS_DTYPE = np.float16
# float16 rows sum to 1 only within rounding of up to ~1000 entries
ROW_SUM_TOLERANCE = 1e-2

_KEY_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")
_HEAD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class SampleError(ValueError):
    """A sample does not follow the shard format; the message names the sample and the problem."""


def make_video_id(uri: str, explicit_id: str | None = None) -> str:
    """A key-safe, stable id: the manifest's id, or the file stem plus a digest of the URI.

    The digest keeps ids unique when two directories hold files of the same name; ids only use
    [A-Za-z0-9_-] so that keys never contain dots or path separators.
    """
    if explicit_id:
        cleaned = _UNSAFE_ID_CHARS.sub("_", explicit_id).strip("_")
        if not cleaned:
            raise SampleError(f"id {explicit_id!r} has no usable characters")
        return cleaned
    stem = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = _UNSAFE_ID_CHARS.sub("_", stem).strip("_")[:64] or "video"
    digest = hashlib.sha1(uri.encode("utf-8")).hexdigest()[:8]
    return f"{stem}_{digest}"


def sample_key(video_id: str, segment: int) -> str:
    key = f"{video_id}-{segment:04d}"
    if not _KEY_CHARS.match(key):
        raise SampleError(f"sample key {key!r} may only use letters, digits, '_' and '-'")
    return key


def parse_key(key: str) -> tuple[str, int]:
    video_id, _, segment = key.rpartition("-")
    if not video_id or not segment.isdigit():
        raise SampleError(f"sample key {key!r} is not '{{video_id}}-{{segment:04d}}'")
    return video_id, int(segment)


def check_head_name(head: str) -> str:
    if not _HEAD_NAME.match(head):
        raise SampleError(f"head name {head!r} must match {_HEAD_NAME.pattern} (no dots)")
    return head


def probs_member(head: str) -> str:
    return f"{check_head_name(head)}.npy"


@dataclass(frozen=True)
class HeadInfo:
    """What produced one head's distributions."""

    teacher: str  # e.g. "efficientnet_lite0", "places365_resnet18"
    weights_sha256: str
    label_set: str  # e.g. "imagenet1k", "places365"
    num_classes: int


@dataclass(frozen=True)
class SampleMetadata:
    video_id: str
    source: str
    segment: int
    start_s: float
    duration_s: float
    num_samples: int
    frame_times_s: list[float]  # relative to the video's start, one per teacher frame
    heads: dict[str, HeadInfo]
    # the pipeline's --frame-interval: one frame at the centre of each whole step of this many
    # seconds (None only in version-1 samples, which did not record it)
    frame_interval_s: float | None
    audio_codec: str = DEFAULT_AUDIO_CODEC  # one of AUDIO_CODECS: the audio member's name
    sample_rate: int = SAMPLE_RATE
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return sample_key(self.video_id, self.segment)

    def frame_interval(self) -> float | None:
        """The interval the teacher frames were sampled at: recorded (version 2), else read off
        `frame_times_s` (version 1: the spacing of the frames, or twice the first frame's offset
        into the segment). None when the one frame sits at the segment's middle: a segment
        shorter than one step, labelled as a whole."""
        if self.frame_interval_s is not None:
            return self.frame_interval_s
        times = self.frame_times_s
        if len(times) >= 2:
            return round(times[1] - times[0], 6)
        offset = times[0] - self.start_s if times else 0.0
        if times and abs(offset - self.duration_s / 2) > 1e-3:
            return round(2 * offset, 6)
        return None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | memoryview | str, where: str = "sample") -> SampleMetadata:
        try:
            raw = json.loads(bytes(data) if isinstance(data, memoryview) else data)
            if raw.get("schema_version") not in READABLE_VERSIONS:
                raise SampleError(
                    f"{where}: schema_version {raw.get('schema_version')!r}, "
                    f"this code reads versions {', '.join(map(str, READABLE_VERSIONS))}"
                )
            if raw["schema_version"] == 1:  # what version 1 left unsaid
                raw.setdefault("frame_interval_s", None)
                raw.setdefault("audio_codec", DEFAULT_AUDIO_CODEC)
            heads = {name: HeadInfo(**info) for name, info in raw.pop("heads").items()}
            meta = cls(heads=heads, **raw)
        except SampleError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise SampleError(f"{where}: metadata JSON does not match the schema: {err}") from err
        if wrong := meta._wrongly_typed():
            raise SampleError(f"{where}: metadata JSON does not match the schema: {wrong}")
        return meta

    def _wrongly_typed(self) -> str | None:
        """The first field whose JSON value has the wrong type ('441000' or 441000.0 for a
        count would fail far from here, in whatever slices or compares it), or None."""
        for name in ("segment", "num_samples", "sample_rate", "schema_version"):
            if not _is_int(getattr(self, name)):
                return f"{name} {getattr(self, name)!r} is not an integer"
        for name in ("start_s", "duration_s"):
            if not _is_number(getattr(self, name)):
                return f"{name} {getattr(self, name)!r} is not a number"
        if self.frame_interval_s is not None and not (
            _is_number(self.frame_interval_s) and self.frame_interval_s > 0
        ):
            return f"frame_interval_s {self.frame_interval_s!r} is not a positive number"
        if not isinstance(self.frame_times_s, list) or not all(
            _is_number(t) for t in self.frame_times_s
        ):
            return f"frame_times_s {self.frame_times_s!r} is not a list of numbers"
        for name in ("video_id", "source", "audio_codec"):
            if not isinstance(getattr(self, name), str):
                return f"{name} {getattr(self, name)!r} is not a string"
        for head, info in self.heads.items():
            if not (_is_int(info.num_classes) and info.num_classes > 0):
                return f"heads[{head!r}].num_classes {info.num_classes!r} is not a positive integer"
        if not isinstance(self.extra, dict):
            return f"extra {self.extra!r} is not an object"
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Sample:
    """A decoded sample. `audio` is int16 [num_samples]; `probs[head]` float [num_frames, C]."""

    key: str
    audio: np.ndarray
    probs: dict[str, np.ndarray]
    metadata: SampleMetadata


def validate_sample(sample: Sample) -> Sample:
    meta, where = sample.metadata, sample.key
    _check_metadata(meta, where, sample.probs)
    if sample.audio.ndim != 1 or len(sample.audio) != meta.num_samples:
        raise SampleError(
            f"{where}: audio has shape {sample.audio.shape}, metadata says {meta.num_samples}"
        )
    checked_rows(meta, sample.probs, where)
    return sample


def _check_metadata(meta: SampleMetadata, where: str, heads: Mapping[str, Any]) -> None:
    """The metadata agrees with the sample's key and format, and names the heads it has."""
    if meta.key != where:
        raise SampleError(f"{where}: key does not match metadata ({meta.key!r})")
    if meta.sample_rate != SAMPLE_RATE:
        raise SampleError(f"{where}: sample_rate {meta.sample_rate}, expected {SAMPLE_RATE}")
    if meta.audio_codec not in AUDIO_CODECS:
        raise SampleError(f"{where}: audio_codec {meta.audio_codec!r} is not one of {AUDIO_CODECS}")
    if heads.keys() != meta.heads.keys():
        raise SampleError(f"{where}: heads {sorted(heads)} != metadata {sorted(meta.heads)}")
    if not meta.heads:
        raise SampleError(f"{where}: no teacher heads (a sample is audio with its teachers' rows)")
    if meta.schema_version >= 2 and meta.frame_interval_s is None:
        raise SampleError(f"{where}: schema_version {meta.schema_version} without frame_interval_s")
    if not meta.frame_times_s:
        raise SampleError(f"{where}: no teacher frames")
    if meta.num_samples < 1 or meta.start_s < 0 or meta.duration_s <= 0:  # decoding refuses them
        raise SampleError(
            f"{where}: {meta.num_samples} samples from {meta.start_s} s for {meta.duration_s} s: "
            "a segment needs audio, at a time within its video"
        )


def checked_rows(
    meta: SampleMetadata, probs: Mapping[str, np.ndarray], where: str
) -> dict[str, np.ndarray]:
    """Each head's rows as float32, once checked: one row per teacher frame of its head's
    classes, each a distribution (non-negative, finite, summing to 1)."""
    num_frames, rows = len(meta.frame_times_s), {}
    for head, stored in probs.items():
        expected = (num_frames, meta.heads[head].num_classes)
        if stored.shape != expected:
            raise SampleError(f"{where}: {head} has shape {stored.shape}, expected {expected}")
        p = rows[head] = stored.astype(np.float32)
        # one test for every row (a NaN fails both comparisons, an infinity the sums'); which
        # problem it is is only worked out for a sample that fails it
        sums = p.sum(axis=1).tolist()
        if p.min() >= 0 and all(abs(s - 1) <= ROW_SUM_TOLERANCE for s in sums):
            continue
        if not np.isfinite(p).all() or p.min() < 0:
            raise SampleError(f"{where}: {head} has negative or non-finite probabilities")
        raise SampleError(f"{where}: {head} rows do not sum to 1")
    return rows


def encode_sample(sample: Sample) -> dict[str, Any]:
    """Sample -> WebDataset dict ({'__key__': key, member: bytes}) after validation; the audio
    goes in the member its metadata's `audio_codec` names."""
    validate_sample(sample)
    audio = np.asarray(sample.audio)
    if audio.dtype != np.int16:
        raise SampleError(f"{sample.key}: audio must be int16, got {audio.dtype}")
    codec = sample.metadata.audio_codec
    members: dict[str, Any] = {
        "__key__": sample.key,
        codec: encode_audio(audio, codec),
        METADATA_MEMBER: sample.metadata.to_json(),
    }
    for head, probs in sorted(sample.probs.items()):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(probs, dtype=PROBS_DTYPE), allow_pickle=False)
        members[probs_member(head)] = buf.getvalue()
    return members


def encode_audio(audio: np.ndarray, codec: str = DEFAULT_AUDIO_CODEC) -> bytes:
    """int16 mono samples at SAMPLE_RATE -> the bytes of a `codec` audio member."""
    if codec == "pcm16":
        return audio.astype(PCM16, copy=False).tobytes()
    flac = io.BytesIO()
    sf.write(flac, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return flac.getvalue()


def decode_audio(
    data: bytes, codec: str = DEFAULT_AUDIO_CODEC, where: str = "sample"
) -> np.ndarray:
    """The bytes of a `codec` audio member -> int16 mono samples at SAMPLE_RATE. pcm16 is a
    read-only view of `data` (nothing to decode, nothing copied)."""
    if codec == "pcm16":
        if len(data) % PCM16.itemsize:
            raise SampleError(
                f"{where}: pcm16 member of {len(data)} bytes, not whole int16 samples"
            )
        return np.frombuffer(data, dtype=PCM16).astype(np.int16, copy=False)
    with FlacReader(data, where) as flac:
        return flac.read_all()


def decode_audio_into(
    data: bytes,
    codec: str,
    out: np.ndarray,
    start: int,
    num_samples: int,
    where: str = "sample",
) -> None:
    """Samples start .. start + len(out) of a `codec` audio member of `num_samples` samples,
    written into `out` (int16, contiguous) in place: a loader decodes straight into its batch,
    whose memory is reused and warm, instead of into a fresh array (that costs a fifth of a
    FLAC decode)."""
    end = start + len(out)
    if not 0 <= start <= end <= num_samples:
        raise SampleError(f"{where}: samples {start}..{end} are not within its {num_samples}")
    if codec == "pcm16":
        if len(data) != num_samples * PCM16.itemsize:
            raise SampleError(
                f"{where}: pcm16 member of {len(data)} bytes, metadata says {num_samples} samples"
            )
        out[:] = np.frombuffer(data, PCM16, len(out), start * PCM16.itemsize)
        return
    with FlacReader(data, where) as flac:
        if flac.num_samples not in (None, num_samples):
            raise SampleError(
                f"{where}: FLAC of {flac.num_samples} samples, metadata says {num_samples}"
            )
        flac.read_into(out, start)


class FlacReader:
    """A FLAC member decoded by dr_flac (through miniaudio's bindings), read in place from its
    bytes and written in place into int16 arrays. It gives the samples libsndfile gives, at 2.3
    times its speed on the shards' audio (libsndfile spends half its time converting samples
    one at a time); libsndfile still writes the shards."""

    def __init__(self, data: bytes, where: str = "sample"):
        self.data, self.where = data, where  # dr_flac reads `data` in place: keep it alive
        self.handle = _flac.lib.ma_dr_flac_open_memory(
            _flac.ffi.from_buffer(data), len(data), _flac.ffi.NULL
        )
        if self.handle == _flac.ffi.NULL:
            raise SampleError(f"{where}: unreadable FLAC: not a FLAC stream")
        rate, channels = self.handle.sampleRate, self.handle.channels
        if rate != SAMPLE_RATE or channels != 1:
            self.close()
            raise SampleError(
                f"{where}: audio is {rate} Hz with {channels} channels, expected mono"
            )
        # 0: the stream does not say (a FLAC written to a pipe cannot go back to record it)
        self.num_samples: int | None = self.handle.totalPCMFrameCount or None

    def read_all(self) -> np.ndarray:
        """Every sample of the stream."""
        if self.num_samples is not None:
            audio = np.empty(self.num_samples, dtype=np.int16)
            self.read_into(audio, 0)
            return audio
        parts, chunk = [], np.empty(1 << 20, dtype=np.int16)
        while got := self._read(chunk):
            parts.append(chunk[:got].copy())
        return np.concatenate(parts) if parts else chunk[:0].copy()

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Samples start .. start + len(out) into `out`; a stream that ends early is an error."""
        if start and self.num_samples is None:  # dr_flac seeks wrongly without the length
            skipped, scratch = 0, np.empty(min(start, 1 << 20), dtype=np.int16)
            while skipped < start and (got := self._read(scratch[: start - skipped])):
                skipped += got
        elif start and not _flac.lib.ma_dr_flac_seek_to_pcm_frame(self.handle, start):
            raise SampleError(f"{self.where}: unreadable FLAC: cannot seek to sample {start}")
        got = self._read(out)
        if got != len(out):
            raise SampleError(
                f"{self.where}: FLAC ends after {start + got} samples, {start + len(out)} wanted"
            )

    def _read(self, out: np.ndarray) -> int:
        """The next len(out) samples into `out` (int16, contiguous); how many there were."""
        if out.dtype != np.int16 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable, contiguous int16 array")
        target = _flac.ffi.cast("ma_int16 *", _flac.ffi.from_buffer(out))
        return _flac.lib.ma_dr_flac_read_pcm_frames_s16(self.handle, len(out), target)

    def close(self) -> None:
        if self.handle is not None:
            _flac.lib.ma_dr_flac_close(self.handle)
            self.handle = None

    def __enter__(self) -> FlacReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def audio_member(members: dict[str, Any], meta: SampleMetadata, key: str) -> str:
    """The name of the sample's audio member: the one its metadata's codec names, present, and
    no member of another codec beside it."""
    codec = meta.audio_codec
    if codec not in AUDIO_CODECS:
        raise SampleError(f"{key}: audio_codec {codec!r} is not one of {AUDIO_CODECS}")
    others = [c for c in AUDIO_CODECS if c != codec and c in members]
    if codec not in members:
        found = f"a '{others[0]}' member instead" if others else "no audio member"
        raise SampleError(f"{key}: metadata says audio_codec {codec!r} but the sample has {found}")
    if others:
        raise SampleError(
            f"{key}: a '{codec}' and a '{others[0]}' member; one audio member a sample"
        )
    return codec


def decode_npy(data: bytes, where: str = "sample") -> np.ndarray:
    """An .npy member -> its array, never unpickled. The common case (version 1.0, C order, no
    objects, whole) is read in place (read-only) after numpy parses its header, once per
    distinct header: np.load parses every header anew (30 us, a third of a pcm16 sample's
    decoding). Anything else goes through np.load's own checks."""
    if data[:8] == _NPY_V1 and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        try:
            shape, fortran, dtype = _npy_header(bytes(data[:end]))
        except ValueError as err:
            raise SampleError(f"{where}: unreadable .npy member: {err}") from err
        count = math.prod(shape)
        if not (fortran or dtype.hasobject) and len(data) - end == count * dtype.itemsize:
            return np.frombuffer(data, dtype, count, end).reshape(shape)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    # ValueError includes "Object arrays cannot be loaded when allow_pickle=False"; an empty
    # member is an EOFError, a cut-short one an OSError
    except (ValueError, EOFError, OSError) as err:
        raise SampleError(f"{where}: refused or unreadable .npy member: {err}") from err


_NPY_V1 = b"\x93NUMPY\x01\x00"


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a version-1.0 .npy header, by numpy's own parser."""
    stream = io.BytesIO(header)
    np.lib.format.read_magic(stream)
    return np.lib.format.read_array_header_1_0(stream)


def decode_sample(members: dict[str, Any], audio: bool = True) -> Sample:
    """WebDataset dict of raw bytes -> validated Sample, whatever its audio codec. `audio=False`
    skips decoding the audio (its member is still checked against the recorded codec)."""
    key, meta, codec, probs = _read_members(members)
    if audio:
        wave = decode_audio(members[codec], codec, where=key)
    else:
        wave = np.broadcast_to(np.int16(0), (meta.num_samples,))  # silence of its length, free
    return validate_sample(Sample(key=key, audio=wave, probs=probs, metadata=meta))


def decode_targets(members: dict[str, Any]) -> tuple[SampleMetadata, dict[str, np.ndarray]]:
    """A sample's metadata and teacher rows (float32), checked as `decode_sample` checks them,
    with its audio member checked against the recorded codec but not decoded: what a loader
    needs to plan a crop whose audio it decodes later, straight into its batch."""
    key, meta, _, probs = _read_members(members)
    _check_metadata(meta, key, probs)
    return meta, checked_rows(meta, probs, key)


def _read_members(
    members: dict[str, Any],
) -> tuple[str, SampleMetadata, str, dict[str, np.ndarray]]:
    """(key, metadata, audio member name, {head: stored rows}) of a WebDataset dict."""
    key = members.get("__key__", "?")
    if METADATA_MEMBER not in members:
        raise SampleError(f"{key}: no '{METADATA_MEMBER}' member")
    meta = SampleMetadata.from_json(members[METADATA_MEMBER], where=key)
    codec = audio_member(members, meta, key)
    probs = {}
    for head in meta.heads:
        name = probs_member(head)
        if name not in members:
            raise SampleError(f"{key}: no '{name}' member")
        probs[head] = decode_npy(members[name], where=f"{key}.{name}")
    return key, meta, codec, probs
