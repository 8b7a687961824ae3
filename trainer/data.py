"""Streaming training data: WebDataset shards -> batches of 20 s waveforms and teacher rows.

    source = resolve_shards("OUT")          # OUT, OUT/shards, a brace pattern, a dir, URLs
    info = inspect_shards(source.urls)      # heads and frame interval of the first samples
    loader = make_loader(source.urls, list(info.heads), batch_size=64, workers=4,
                         step_samples=model.step_samples)
    for batch in loader:                    # {"wave": int16 [B, N], "targets": {head: [B, 4, C]}, ...}
        wave, targets = batch_to(batch, device)  # wave: float32 in [-256, 256] on the device

The pipeline (pipeline/) writes one sample per segment of up to 20 s, with one teacher frame at
the centre of each whole `--frame-interval` step (SPEC.md section 3). A training example is a
crop of `steps` whole output steps of the model (SoundNet-8: 4 steps of 5 s, 20 s), and each
step is trained on the mean of the teacher rows of the frames inside it (one row at the default
5 s interval, two at 2.5 s); an interval that does not divide the step is refused
(schemas.frames). A longer segment gives a random step-aligned crop, a shorter one is tiled
(its steps repeated, their targets with them), and one shorter than a step is repeated to fill
the crop under the mean of its frames. Shards' audio may be FLAC or raw int16 (pcm16); both read alike.

Each sample is read, checked and its crop planned first (`make_example`); its audio is decoded
last, straight into its row of the batch (`crop_batches`), in memory the loader's processes
reuse, and the batch reaches the training process as views of that memory (trainer/handoff.py):
a decoded sample is not copied on its way (on a GPU, only into pinned memory). The waves stay
int16 (half the bytes of float32) and are scaled to the network's [-256, 256] on the device
(`batch_to`): int16 x 2^-7 is exact in float32, so the model sees the same numbers.

Shards are read as an endless stream: by default each rank and worker resamples shards at
random with its own seed (WebDataset's ResampledShards), so ranks never run dry at different
times; `resample=False` instead gives each rank and worker its own share of the shards, read
in a new order every epoch. A shard
or sample that cannot be read is skipped with a warning and counted: the counts travel inside
the batches (`batch["events"]`), since they happen in worker processes.
"""

from __future__ import annotations

import functools
import glob
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from models.layers import WAVE_SCALE
from models.registry import DEFAULT_ARCH
from models.soundnet import ARCHITECTURES
from schemas import (
    LABELS_DIR,
    SAMPLE_RATE,
    SHARDS_DIR,
    HeadInfo,
    SampleError,
    SampleMetadata,
    frames_per_step,
    generic_labels,
    labels_path,
    read_labels,
    shard_order,
)
from schemas.frames import step_rows
from schemas.labels import is_url
from schemas.sample import decode_audio, decode_audio_into, decode_targets
from trainer.handoff import BatchBuffers
from trainer.tarstream import tar_samples

log = logging.getLogger(__name__)

# The heads a loader reads: their names, or {name: classes} to refuse samples of other sizes.
Heads = Sequence[str] | Mapping[str, int]
# The default student's output step (SoundNet-8's conv8: 5 s); callers pass their model's.
DEFAULT_STEP_SAMPLES = ARCHITECTURES[DEFAULT_ARCH].step_samples
CROP_STEPS = 4  # the paper's 20 s training crop: 4 output steps
PCM_SCALE = WAVE_SCALE / 32768  # int16 -> the network's [-256, 256]: 2^-7, exact in float32


class ShardSpecError(ValueError):
    """--shards names nothing readable; the message says what was looked for."""


class UnreadableData(RuntimeError):
    """So many shards or samples in a row could not be used that the data, not one file, is
    bad: the loader stops instead of skipping forever."""

    @property
    def reason(self) -> str:
        """The message, also where the DataLoader re-raised it from a worker inside that
        worker's traceback (whose last line is this class's name and the message)."""
        last = str(self).strip().splitlines()[-1]
        return last.removeprefix(f"{__name__}.{type(self).__name__}: ")


# ---------------------------------------------------------------------------------------------
# Finding shards and their label names


@dataclass(frozen=True)
class ShardSource:
    urls: list[str]  # local paths or URLs WebDataset can open
    root: str | None = None  # the pipeline output directory (for labels/), when there is one


def _root_of(shard: str) -> str | None:
    """OUT for OUT/shards/shard-N.tar (local or URL), else None."""
    if shard.startswith("pipe:"):
        return None
    if not is_url(shard):  # 'shards/x.tar' from inside OUT: OUT is the working directory
        shard = str(Path(shard).absolute())
    parent, _, _ = shard.rpartition("/")
    grandparent, _, name = parent.rpartition("/")
    if name != SHARDS_DIR or not grandparent:
        return None
    if is_url(shard) or (Path(grandparent) / LABELS_DIR).is_dir():
        return grandparent
    return None


def resolve_shards(spec: str) -> ShardSource:
    """Shard list from a brace pattern or glob, a pipeline output dir, a dir of .tar, or URLs.

    Several specs may be joined with '::' (WebDataset's separator), each of any form; label
    names come from the first one's pipeline output."""
    parts = [_resolve_one(part) for part in spec.split("::") if part]
    if not parts:
        raise ShardSpecError(f"{spec!r}: names no shards")
    return ShardSource([u for part in parts for u in part.urls], parts[0].root)


def _resolve_one(spec: str) -> ShardSource:
    if is_url(spec):
        urls = wds.shardlists.expand_urls(spec)
        return ShardSource(urls, _root_of(urls[0]) if urls else None)
    path = Path(spec)
    if path.is_dir():
        if (path / SHARDS_DIR).is_dir():
            path = path / SHARDS_DIR
        urls = sorted((str(p) for p in path.glob("*.tar")), key=shard_order)
        if not urls:
            raise ShardSpecError(f"{spec}: no .tar shards in this directory")
        return ShardSource(urls, _root_of(urls[0]))
    urls = []
    for pattern in wds.shardlists.expand_urls(spec):
        # a file that exists is itself, even when its path has brackets ('runs [v2]/...')
        literal = not glob.has_magic(pattern) or Path(pattern).is_file()
        urls += [pattern] if literal else sorted(glob.glob(pattern), key=shard_order)
    present = [u for u in urls if Path(u).is_file()]
    if not present:
        raise ShardSpecError(f"{spec}: no shard files match (looked for {urls[:3]}...)")
    if len(present) < len(urls):
        missing = [u for u in urls if u not in set(present)]
        log.warning("%d of %d shards do not exist, e.g. %s", len(missing), len(urls), missing[0])
    return ShardSource(present, _root_of(present[0]))


@dataclass(frozen=True)
class ShardInfo:
    """What the first samples of a shard list say (their metadata; audio is not decoded)."""

    heads: dict[str, HeadInfo]
    # the teachers' frame interval, from the first sample that has one (None: every sample read
    # was a segment shorter than a step, labelled as a whole)
    frame_interval_s: float | None
    where: str  # the shard it was read from, for messages


def inspect_shards(urls: Sequence[str], max_shards: int = 20, max_samples: int = 100) -> ShardInfo:
    """Heads and frame interval of the first readable shard's first samples."""
    problems = []
    for url in urls[:max_shards]:
        metas: list[SampleMetadata] = []
        samples = tar_samples([{"url": url}], handler=wds.reraise_exception)
        try:
            for raw in itertools.islice(samples, max_samples):
                try:  # a bad sample is skipped, as the loader skips it
                    meta = decode_targets(raw)[0]
                    if not metas:  # one sample's audio too: bad audio everywhere stops here
                        decode_audio(raw[meta.audio_codec], meta.audio_codec, where=meta.key)
                except SampleError as err:
                    problems.append(f"{url}: {err}")
                    continue
                metas.append(meta)
                if meta.frame_interval() is not None:
                    break
        except Exception as err:  # a corrupt shard: try the next one
            problems.append(f"{url}: {type(err).__name__}: {err}")
        if metas:
            return ShardInfo(dict(metas[0].heads), metas[-1].frame_interval(), url)
    raise ShardSpecError(
        f"no readable sample in the first {min(len(urls), max_shards)} shards: "
        + ("; ".join(problems[:3]) or "they are empty")
    )


def inspect_heads(urls: Sequence[str]) -> dict[str, HeadInfo]:
    """The teacher heads of the first readable sample."""
    return inspect_shards(urls, max_samples=1).heads


def read_label_names(source: ShardSource, heads: Mapping[str, int]) -> dict[str, list[str]]:
    """Class names per head from OUT/labels/{head}.txt, or generic names (with a warning)."""
    names = {}
    for head, num_classes in heads.items():
        found = None
        if source.root is not None:
            location = (
                f"{source.root}/{LABELS_DIR}/{head}.txt"
                if is_url(source.root)
                else str(labels_path(source.root, head))
            )
            try:
                found = read_labels(location)
            except Exception as err:  # missing or unreachable: generic names below
                log.warning("cannot read label names %s (%s)", location, err)
            if found is not None and len(found) != num_classes:
                raise ShardSpecError(
                    f"{location} has {len(found)} class names, the shards' {head!r} head has "
                    f"{num_classes} classes"
                )
        if found is None:
            found = generic_labels(head, num_classes)
            log.warning(
                "no label names for head %r (shards not under a pipeline output): using %s..%s",
                head,
                found[0],
                found[-1],
            )
        names[head] = found
    return names


# ---------------------------------------------------------------------------------------------
# One example: an aligned crop of whole output steps


@dataclass(frozen=True)
class Crop:
    """What a crop of a segment holds: the segment's samples start .. start + length, repeated
    cyclically to the crop's `samples` (once, when length is that), and one row a step."""

    start: int
    length: int
    samples: int  # the crop's: steps * step_samples
    rows: dict[str, np.ndarray]  # {head: float32 [steps, C]}


def plan_crop(
    num_samples: int,
    probs: Mapping[str, np.ndarray],
    steps: int = CROP_STEPS,
    rng: random.Random | None = None,
    where: str = "sample",
    *,
    step_samples: int = DEFAULT_STEP_SAMPLES,
    frames_per_step: int | None = 1,
) -> Crop:
    """The crop of `steps` whole output steps of a segment of `num_samples` samples, step i <->
    row i.

    Whole step j of a segment holds its frames j*k .. j*k+k-1 (k = `frames_per_step`) and is
    trained on the mean of their rows; a partial trailing step is dropped. A segment shorter
    than one step, or whose frames label it as a whole (`frames_per_step` None), has the mean
    of all its rows under every step. `rng` picks a random aligned window of a long segment
    (None: the central one, for validation); a segment of fewer whole steps is tiled (its steps
    repeated, their targets with them)."""
    if num_samples < 1:
        raise SampleError(f"{where}: no audio")
    whole, samples = num_samples // step_samples, steps * step_samples
    if whole == 0:  # shorter than one step: its frames label the whole crop
        rows = {h: np.repeat(_mean_row(p), steps, axis=0) for h, p in probs.items()}
        return Crop(0, num_samples, samples, rows)
    if frames_per_step is None:
        rows = {h: np.repeat(_mean_row(p), whole, axis=0) for h, p in probs.items()}
    else:
        for head, p in probs.items():
            if len(p) < whole * frames_per_step:
                per_step = f" ({frames_per_step} a step)" if frames_per_step > 1 else ""
                step_s = step_samples / SAMPLE_RATE
                raise SampleError(
                    f"{where}: {whole} whole {step_s:g} s steps but {len(p)} {head} "
                    f"frames{per_step}"
                )
        rows = {h: step_rows(p, frames_per_step, whole) for h, p in probs.items()}
    if whole >= steps:
        last = whole - steps
        first = rng.randint(0, last) if rng is not None else last // 2
        window = {h: r[first : first + steps] for h, r in rows.items()}
        return Crop(first * step_samples, samples, samples, window)
    index = np.arange(steps) % whole  # tile: steps 0..whole-1 repeated, their targets with them
    return Crop(0, whole * step_samples, samples, {h: r[index] for h, r in rows.items()})


def crop_steps(
    audio: np.ndarray, probs: Mapping[str, np.ndarray], *args: Any, **kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(audio [steps * step_samples], {head: rows [steps, C]}) of a decoded segment, cropped as
    `plan_crop(len(audio), probs, *args, **kwargs)` says: a view of `audio` when the segment
    holds the whole crop, else a tiled copy."""
    crop = plan_crop(len(audio), probs, *args, **kwargs)
    used = audio[crop.start : crop.start + crop.length]
    if crop.length == crop.samples:
        return used, crop.rows
    wave = np.empty(crop.samples, dtype=audio.dtype)
    wave[: crop.length] = used
    repeat_in_place(wave, crop.length)
    return wave, crop.rows


def repeat_in_place(out: np.ndarray, filled: int) -> None:
    """out[:filled] repeated cyclically over the whole of `out` (np.resize's result, by doubling
    copies: np.resize concatenates one copy per repeat, 0.3 ms for a short clip)."""
    while filled < len(out):  # out[:filled] holds whole repeats: copy them on
        more = min(filled, len(out) - filled)
        out[filled : filled + more] = out[:more]
        filled += more


def _mean_row(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).mean(axis=0, keepdims=True)


def sample_frames_per_step(meta: SampleMetadata, step_samples: int) -> int | None:
    """Teacher frames in each of the model's output steps for this sample (None: its one frame
    labels the whole segment); a frame interval that does not divide the step is an error."""
    interval = meta.frame_interval()
    return None if interval is None else frames_per_step(interval, step_samples, where=meta.key)


@dataclass(frozen=True)
class Example:
    """A sample ready for its batch: metadata and teacher rows read and checked, the crop
    planned, the audio still encoded (decoded later, straight into the batch: `fill_wave`)."""

    key: str
    url: str  # its shard, for messages: the shuffle buffer mixes shards
    audio: bytes  # the audio member
    codec: str
    num_samples: int
    crop: Crop


def make_example(
    raw: dict[str, Any],
    heads: Heads,
    steps: int,
    rng: random.Random | None,
    step_samples: int = DEFAULT_STEP_SAMPLES,
) -> Example:
    """A raw WebDataset sample (FLAC or pcm16 audio) -> its Example; the audio is not decoded.
    `heads`: the heads to read, or {head: classes} to also refuse a head of another size."""
    meta, rows = decode_targets(raw)  # validates the metadata, shapes and distributions
    key = raw["__key__"]  # the metadata's, once checked
    missing = [h for h in heads if h not in rows]
    if missing:
        raise SampleError(f"{key}: no {missing} head(s); it has {sorted(rows)}")
    if isinstance(heads, Mapping):
        for head, classes in heads.items():
            if rows[head].shape[-1] != classes:
                raise SampleError(
                    f"{key}: head {head!r} has {rows[head].shape[-1]} classes, the run trains "
                    f"{classes}"
                )
    probs = {h: rows[h] for h in heads}
    # without heads (the autoencoder) no teacher row is read, so none needs aligning
    per_step = sample_frames_per_step(meta, step_samples) if probs else 1
    crop = plan_crop(
        meta.num_samples, probs, steps, rng, where=key, step_samples=step_samples,
        frames_per_step=per_step,
    )  # fmt: skip
    return Example(
        key, raw.get("__url__", "?"), raw[meta.audio_codec], meta.audio_codec, meta.num_samples,
        crop,
    )  # fmt: skip


def fill_wave(example: Example, out: np.ndarray) -> None:
    """The example's crop, decoded straight into `out` (int16 [crop samples]) and tiled there."""
    crop = example.crop
    decode_audio_into(
        example.audio, example.codec, out[: crop.length], crop.start, example.num_samples,
        where=example.key,
    )  # fmt: skip
    repeat_in_place(out, crop.length)


# ---------------------------------------------------------------------------------------------
# What a loader process saw: skipped shards and samples, shards opened


@dataclass
class LoaderEvents:
    """Per loader process; drained into each batch so that the training loop can count it."""

    max_consecutive_failures: int = 100
    # a sample's own problem is skipped; this many in a row is bad data, not a bad sample (a
    # stream of them otherwise loops for ever: ~3,000 a second, never a batch)
    max_consecutive_bad_samples: int = 10_000
    bad_samples_logged: int = 20  # in a row, each with its own warning line
    shards: list[str] = field(default_factory=list)
    shard_errors: list[tuple[str, str]] = field(default_factory=list)
    sample_errors: list[tuple[str, str]] = field(default_factory=list)
    current: str = ""
    current_failed: bool = False
    consecutive_failures: int = 0
    consecutive_bad_samples: int = 0

    def opened(self, src: Iterator[dict]) -> Iterator[dict]:
        """Pipeline stage: note each shard as it is opened."""
        for item in src:
            self.current, self.current_failed = item["url"], False
            self.shards.append(self.current)
            yield item

    def shard_failed(self, err: Exception) -> bool:
        """WebDataset handler for tar-level errors: warn, count, go on with the next shard."""
        if self.current_failed:  # a torn tar is reported twice (member, then stream)
            return True
        self.current_failed = True
        if isinstance(err, OSError) and err.strerror:
            detail = err.strerror
        else:  # WebDataset appends the stream and URL to args; keep the message itself
            detail = str(err.args[0]).split(" @ <", 1)[0] if err.args else ""
        message = f"{type(err).__name__}: {detail}"
        self.shard_errors.append((self.current, message))
        log.warning("skipping unreadable shard %s (%s)", self.current, message)
        self.consecutive_failures += 1
        if self.consecutive_failures > self.max_consecutive_failures:
            raise UnreadableData(
                f"{self.consecutive_failures} shard reads in a row failed, the last {self.current}"
                f" ({message}): the shards are unreadable"
            ) from err
        return True

    def sample_failed(self, err: Exception) -> bool:
        """WebDataset handler for the per-sample map: skip bad samples, re-raise real bugs."""
        if not isinstance(err, SampleError):
            raise err
        url = getattr(err, "url", self.current)
        self.sample_errors.append((url, str(err)))
        self.consecutive_bad_samples += 1
        n = self.consecutive_bad_samples
        if n <= self.bad_samples_logged or n % 1000 == 0:  # not a line for each of thousands
            log.warning("skipping bad sample in %s: %s", url, err)
        if n == self.bad_samples_logged:
            log.warning("%d bad samples in a row: only every 1000th more is logged", n)
        if self.consecutive_bad_samples > self.max_consecutive_bad_samples:
            raise UnreadableData(
                f"{self.consecutive_bad_samples} samples in a row could not be used, the last "
                f"in {url} ({err}): the shards' samples are unreadable"
            ) from err
        return True

    def decoded(self) -> None:
        self.consecutive_failures = self.consecutive_bad_samples = 0

    def drain(self) -> dict[str, Any]:
        worker = torch.utils.data.get_worker_info()
        out = {
            "shards": self.shards,
            "shard_errors": self.shard_errors,
            "sample_errors": self.sample_errors,
            # which process made the batch and its CPU seconds so far: what a batch costs
            # (bench/trainer.py's loader_per_core)
            "worker": worker.id if worker is not None else -1,
            "cpu_s": time.process_time(),
        }
        self.shards, self.shard_errors, self.sample_errors = [], [], []
        return out


def crop_batches(
    examples: Iterator[Example],
    batch_size: int,
    events: LoaderEvents,
    partial: bool = False,
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: Examples -> {"keys", "wave": int16 [B, crop samples], "targets": {head:
    float32 [B, steps, C]}, "events"}. Each crop's audio is decoded straight into its row of the
    memory the batch travels in (trainer/handoff.py); a sample whose audio cannot be decoded is
    skipped and counted like any bad sample, and the next one takes its row. `partial` yields
    the last, short batch too (validation)."""
    buffers: BatchBuffers | None = None
    keys: list[str] = []
    examples = iter(examples)
    try:
        # the rows still to fill are read and planned together, then decoded together: Python's
        # work run between two decodes ran with cold caches, at three times its cost
        while todo := list(itertools.islice(examples, batch_size - len(keys))):
            if buffers is None:
                buffers = BatchBuffers({
                    "wave": ((batch_size, todo[0].crop.samples), np.int16),
                    **{("targets", h): ((batch_size, *r.shape), np.float32)
                       for h, r in todo[0].crop.rows.items()},
                })  # fmt: skip
            for example in todo:
                row = len(keys)
                try:
                    fill_wave(example, buffers.arrays["wave"][row])
                except SampleError as err:
                    err.url = example.url
                    events.sample_failed(err)
                    continue
                for head, r in example.crop.rows.items():
                    buffers.arrays["targets", head][row] = r
                keys.append(example.key)
                events.decoded()
            if len(keys) == batch_size:
                batch, buffers = buffers, None
                yield batch.finish({"keys": keys, "targets": {}, "events": events.drain()})
                keys = []
        if keys and partial:
            batch, buffers = buffers, None
            yield batch.finish({"keys": keys, "targets": {}, "events": events.drain()}, len(keys))
    finally:
        if buffers is not None:  # a batch begun and not handed out: its block is free again
            buffers.release()


def batch_to(
    batch: Mapping[str, Any], device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch's network input and targets on `device`: the int16 waves are copied there (half
    the bytes of float32) and scaled there to [-256, 256], exactly as on the CPU."""
    wave = batch["wave"].to(device, non_blocking=True).float().mul_(PCM_SCALE)
    targets = {h: t.to(device, non_blocking=True) for h, t in batch["targets"].items()}
    return wave, targets


# ---------------------------------------------------------------------------------------------
# Shard streams and the loader


def _worker_seed(seed: int) -> int:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return wds.utils.make_seed(seed, rank, worker)


def epoch_shards(urls: Sequence[str], seed: int) -> Iterator[dict[str, str]]:
    """Each rank, and each of its workers, its own fixed share of the shards, reshuffled every
    epoch, endlessly (needs at least one shard per rank x worker)."""
    items = (dict(url=u) for u in urls)
    mine = [item["url"] for item in wds.split_by_worker(wds.split_by_node(items))]
    rng = random.Random(_worker_seed(seed))
    while True:
        rng.shuffle(mine)
        yield from (dict(url=u) for u in mine)


def shuffled(src: Iterator[Any], bufsize: int, seed: int) -> Iterator[Any]:
    """A sample shuffle buffer seeded per rank and worker (WebDataset's own seeds all alike)."""
    rng = random.Random(_worker_seed(seed))
    yield from wds.filters._shuffle(src, bufsize, min(bufsize, 64), rng)


class ExamplePlanner:
    """The per-sample map: read, check and plan the crop (the audio is decoded later, into the
    batch), with an RNG seeded per rank and worker on first use (the loader is copied into each
    worker process before any sample is seen)."""

    def __init__(self, heads: Heads, steps: int, step_samples: int, train: bool, seed: int):
        self.heads, self.steps, self.step_samples = heads, steps, step_samples
        self.train, self.seed = train, seed
        self.rng: random.Random | None = None

    def __call__(self, raw: dict[str, Any]) -> Example:
        if self.train and self.rng is None:
            self.rng = random.Random(_worker_seed(self.seed + 1))
        try:
            return make_example(raw, self.heads, self.steps, self.rng, self.step_samples)
        except SampleError as err:
            err.url = raw.get("__url__", "?")  # which shard: the shuffle buffer mixes them
            raise


def make_loader(
    urls: Sequence[str],
    heads: Heads,
    batch_size: int,
    *,
    steps: int = CROP_STEPS,
    step_samples: int = DEFAULT_STEP_SAMPLES,
    train: bool = True,
    resample: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 256,
    workers: int = 0,
    pin_memory: bool = False,
) -> wds.WebLoader:
    """Batches of crops of `steps` output steps of `step_samples`, aligned. Training streams
    forever; validation (`train=False`) reads each shard once, split between ranks and workers,
    with central crops and no shuffling."""
    events = LoaderEvents(max_consecutive_failures=max(100, 4 * len(urls)))
    if not train:
        shards: Any = [wds.SimpleShardList(list(urls)), wds.split_by_node, wds.split_by_worker]
    elif resample:
        shards = [wds.ResampledShards(list(urls), seed=seed, deterministic=True)]
    else:
        shards = [functools.partial(epoch_shards, list(urls), seed)]
    stages: list[Callable] = [
        *shards,
        events.opened,
        functools.partial(tar_samples, handler=events.shard_failed),
    ]
    if train and shuffle_buffer > 1:
        stages.append(functools.partial(shuffled, bufsize=shuffle_buffer, seed=seed))
    stages += [
        wds.map(
            ExamplePlanner(heads, steps, step_samples, train, seed), handler=events.sample_failed
        ),
        functools.partial(crop_batches, batch_size=batch_size, events=events, partial=not train),
    ]
    pipeline = wds.DataPipeline(*stages)
    return wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
