"""Real shards for the trainer's tests, in exactly the pipeline's output layout (SPEC.md section 3).

"Videos" are real ESC-10 recordings (../shared/data/esc10) strung together, or synthetic tones
when the shared data is missing. Each 5 s teacher frame gets a distribution that depends on the
class of the clip under it (a fixed, peaked distribution per class, plus Dirichlet noise), so a
student can really learn something: a falling loss is a real signal, not just the prior.

    out = make_pipeline_output(tmp / "OUT", clips(20), num_shards=4)
    # out/shards/shard-000000-0000.tar ..., out/labels/{head}.txt, out/index.parquet, ...

Everything goes through schemas (encode_sample, SampleMetadata, layout names, table schemas)
and webdataset.TarWriter, as the pipeline does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from pipeline.segments import SegmentPlan
from pipeline.segments import plan_segments as pipeline_segments
from schemas import (
    FAILURES_FILE,
    FAILURES_SCHEMA,
    INDEX_FILE,
    INDEX_SCHEMA,
    RUN_FILE,
    SAMPLE_RATE,
    SHARDS_DIR,
    HeadInfo,
    Sample,
    SampleMetadata,
    encode_sample,
    format_labels,
    index_row,
    labels_path,
    shard_name,
    table_from_rows,
    write_table,
)

ESC10 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "esc10"
STEP = 5 * SAMPLE_RATE
HEADS = {"objects": 16, "scenes": 6}  # small heads keep conv8 cheap in tests


def clips(count: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(int16 audio of 5 s, class) pairs: ESC-10 recordings when present, else synthetic tones."""
    rng = np.random.default_rng(seed)
    if (ESC10 / "meta" / "esc10.csv").is_file():
        with open(ESC10 / "meta" / "esc10.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        classes = sorted({row["category"] for row in rows})
        picks = rng.choice(len(rows), size=count, replace=False)
        out = []
        for i in picks:
            row = rows[int(i)]
            audio, rate = sf.read(ESC10 / "audio" / row["filename"].replace(".wav", ".flac"))
            assert rate == SAMPLE_RATE, row["filename"]
            audio = audio.mean(axis=1) if audio.ndim == 2 else audio
            audio = np.resize(audio, STEP)  # ESC clips are 5 s; make sure
            out.append((np.round(audio * 32767).astype(np.int16), classes.index(row["category"])))
        return out
    t = np.arange(STEP) / SAMPLE_RATE
    out = []
    for _ in range(count):
        label = int(rng.integers(10))
        tone = np.sin(2 * np.pi * 110 * (label + 1) * t) * rng.uniform(0.1, 0.5)
        noise = rng.normal(0, 0.02, STEP)
        out.append((np.round((tone + noise) * 32767).astype(np.int16), label))
    return out


def class_distributions(heads: dict[str, int], num_labels: int = 10, seed: int = 0):
    """Per head, one peaked distribution [C] per audio class."""
    rng = np.random.default_rng(seed + 1)
    table = {}
    for head, size in heads.items():
        rows = rng.dirichlet(np.full(size, 0.3), size=num_labels) * 0.3
        rows[np.arange(num_labels), np.arange(num_labels) % size] += 0.7
        table[head] = rows
    return table


def plan_segments(total: int, segment_seconds: float = 20.0) -> list[tuple[int, int, list[float]]]:
    """(start, length, frame centres in s from the video start): the pipeline's own rule."""
    plan = SegmentPlan(segment_seconds=segment_seconds)
    return [(seg.start_sample, seg.num_samples, list(seg.frame_times_s))
            for seg in pipeline_segments(total, plan)]  # fmt: skip


def make_samples(
    pieces: list[tuple[np.ndarray, int]],
    video_seconds: list[float],
    heads: dict[str, int] = HEADS,
    segment_seconds: float = 20.0,
    seed: int = 0,
) -> list[Sample]:
    """Cut the clips into videos of the given lengths, and those into segments with teacher rows."""
    rng = np.random.default_rng(seed + 2)
    table = class_distributions(heads, seed=seed)
    infos = {
        h: HeadInfo(f"test_teacher_{h}", "0" * 64, f"test_{h}", size) for h, size in heads.items()
    }
    samples, cursor = [], 0
    for v, seconds in enumerate(video_seconds):
        need = int(np.ceil(seconds * SAMPLE_RATE / STEP))
        chosen = [pieces[(cursor + i) % len(pieces)] for i in range(need)]
        cursor += need
        audio = np.concatenate([a for a, _ in chosen])[: round(seconds * SAMPLE_RATE)]
        labels = [label for _, label in chosen]
        video_id, source = f"video{v:03d}", f"file:///videos/video{v:03d}.mp4"
        for index, (start, length, times) in enumerate(plan_segments(len(audio), segment_seconds)):
            probs = {}
            for head, size in heads.items():
                rows = [table[head][labels[int(t * SAMPLE_RATE) // STEP]] for t in times]
                noisy = 0.9 * np.array(rows) + 0.1 * rng.dirichlet(np.ones(size), size=len(rows))
                probs[head] = (noisy / noisy.sum(axis=1, keepdims=True)).astype(np.float16)
            meta = SampleMetadata(
                video_id=video_id,
                source=source,
                segment=index,
                start_s=start / SAMPLE_RATE,
                duration_s=length / SAMPLE_RATE,
                num_samples=length,
                frame_times_s=times,
                heads=infos,
                frame_interval_s=5.0,
            )
            samples.append(Sample(meta.key, audio[start : start + length], probs, meta))
    return samples


def write_shards(out: Path, samples: list[Sample], num_shards: int) -> list[Path]:
    """The pipeline's layout: shards/, labels/, index.parquet, failures.parquet, run.json."""
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    paths, index = [], []
    for shard_id in range(num_shards):
        path = out / SHARDS_DIR / shard_name(shard_id)
        with wds.TarWriter(str(path)) as sink:
            for sample in samples[shard_id::num_shards]:
                sink.write(encode_sample(sample))
                index.append(index_row(sample.metadata, path.name))
        paths.append(path)
    for head, info in samples[0].metadata.heads.items():
        names = [f"{head}_class_{i}" for i in range(info.num_classes)]
        labels_path(out, head).parent.mkdir(parents=True, exist_ok=True)
        labels_path(out, head).write_text(format_labels(names), encoding="utf-8")
    write_table(table_from_rows(index, INDEX_SCHEMA), out / INDEX_FILE, INDEX_SCHEMA)
    write_table(table_from_rows([], FAILURES_SCHEMA), out / FAILURES_FILE, FAILURES_SCHEMA)
    (out / RUN_FILE).write_text(json.dumps({"samples": len(samples), "shards": num_shards}))
    return paths


# A mix of lengths: whole 20 s segments, a trailing 3 s one, 12 s (two whole steps and a partial
# one), 7 s, and one shorter than a step.
VIDEO_SECONDS = [23.0, 20.0, 12.0, 7.0, 40.0, 4.0, 20.0, 17.5]


def make_pipeline_output(
    out: Path,
    num_shards: int = 4,
    video_seconds: list[float] = VIDEO_SECONDS,
    heads: dict[str, int] = HEADS,
    seed: int = 0,
) -> Path:
    need = sum(int(np.ceil(s / 5)) for s in video_seconds)
    samples = make_samples(clips(need, seed), video_seconds, heads, seed=seed)
    write_shards(out, samples, num_shards)
    return out


@pytest.fixture(scope="session")
def factory_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pipeline-layout output dir (4 shards, 10 samples, heads objects 16 / scenes 6)."""
    return make_pipeline_output(tmp_path_factory.mktemp("factory") / "OUT")
