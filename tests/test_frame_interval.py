"""The frame-interval contract across the stages (SPEC.md section 3): the real pipeline makes
shards with `--frame-interval 2.5`, 5 and 3 from real clips; the trainer trains each of the
model's 5 s output steps on the mean of the teacher rows of the frames inside it (2.5 s: two
frames a step; 5 s: one, as before) and refuses 3 s before any step, naming the interval.

Clips: a 24.4 s video (a 20 s segment, then a 4.4 s one, shorter than a step), a 7.2 s one (one
whole step and a partial one: tiled) and a 3.1 s one (shorter than a step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from models.soundnet import soundnet8
from schemas import FrameIntervalError, SampleMetadata, decode_sample, frames_per_step
from schemas.frames import step_rows
from tests.conftest import run_module
from trainer import data
from trainer import main as trainer_main

CLIPS = ("mdn-de_chroma-keying-video.mp4", "videollama_dog_barking.mp4",
         "mdn-ie_stream-of-water.webm")  # fmt: skip
STEP = soundnet8({"objects": 2}).step_samples  # SoundNet-8's output step, from its layers
STEP_S = STEP / 22050
TRAIN = ["--steps=2", "--batch-size=2", "--workers=0", "--no-progress", "--no-tensorboard",
         "--log-every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def shards_at(shared_videos: Path, tmp_path_factory):
    """`python -m pipeline.run ... --frame-interval S` over the clips, once per interval."""
    root = tmp_path_factory.mktemp("frame-interval")
    listing = root / "clips.txt"
    listing.write_text("".join(f"{shared_videos / name}\n" for name in CLIPS))
    made: dict[float, Path] = {}

    def make(interval: float) -> Path:
        if interval not in made:
            out = root / f"out-{interval:g}"
            done = run_module("pipeline.run", "--runner=DirectRunner", f"--input={listing}",
                              f"--output={out}", f"--frame-interval={interval:g}")  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            made[interval] = out
        return made[interval]

    return make


def samples_of(out: Path) -> list[dict]:
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))


def frames_in_steps(meta: SampleMetadata) -> list[list[int]]:
    """Per whole output step of the segment, the frames whose times fall inside it (from the
    frame times alone, independently of the trainer's arithmetic)."""
    whole = meta.num_samples // STEP
    offsets = [t - meta.start_s for t in meta.frame_times_s]
    return [[i for i, t in enumerate(offsets) if j * STEP_S <= t < (j + 1) * STEP_S]
            for j in range(whole)]  # fmt: skip


def central_crop(whole: int, steps: int = 4) -> list[int]:
    """Which of a segment's whole steps make a validation crop (crop_steps' own rule)."""
    if whole >= steps:
        first = (whole - steps) // 2
        return list(range(first, first + steps))
    return [i % whole for i in range(steps)]


def validation_targets(out: Path) -> dict[str, np.ndarray]:
    """What the trainer's validation loader gives each sample: its objects targets [4, C]."""
    urls = data.resolve_shards(str(out)).urls
    loader = data.make_loader(urls, ["objects"], 8, train=False, step_samples=STEP, workers=0)
    return {
        key: targets.numpy()
        for batch in loader
        for key, targets in zip(batch["keys"], batch["targets"]["objects"], strict=True)
    }


def test_shards_at_2_5_s_train_each_step_on_the_mean_of_its_two_frames(shards_at, tmp_path):
    out = shards_at(2.5)
    got = validation_targets(out)
    seen = {}
    for raw in samples_of(out):
        sample = decode_sample(raw, audio=False)
        meta, rows = sample.metadata, sample.probs["objects"].astype(np.float32)
        assert meta.frame_interval() == 2.5
        groups = frames_in_steps(meta)
        seen[round(meta.duration_s)] = groups
        if groups:  # each step: the mean of the rows of the frames inside it
            expected = [rows[groups[j]].mean(axis=0) for j in central_crop(len(groups))]
        else:  # shorter than a step: its frames label the whole crop
            expected = [rows.mean(axis=0)] * 4
        np.testing.assert_allclose(got[sample.key], np.stack(expected), atol=1e-6)
    # which rows each step got: the 20 s segment's 8 frames (1.25, 3.75, ... 18.75 s) two by
    # two; the 7 s one's two frames in its one whole step (then tiled); 4 s and 3 s: one frame
    assert seen[20] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert seen[7] == [[0, 1]] and seen[4] == [] and seen[3] == []

    run = tmp_path / "RUN"  # and the trainer trains on them, validation included
    trainer_main.main([f"--shards={out}", f"--val-shards={out}", f"--out={run}", *TRAIN])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    assert [r["step"] for r in lines if r["kind"] == "val"] == [2]


def test_shards_at_5_s_keep_one_frame_per_step(shards_at):
    out = shards_at(5.0)
    got = validation_targets(out)
    for raw in samples_of(out):
        sample = decode_sample(raw, audio=False)
        rows = sample.probs["objects"].astype(np.float32)
        groups = frames_in_steps(sample.metadata)
        assert all(len(g) == 1 for g in groups)  # step i <-> row i, as always
        index = central_crop(len(groups)) if groups else [0] * 4
        np.testing.assert_array_equal(got[sample.key], rows[index])


def test_shards_at_3_s_are_refused_before_any_step(shards_at, tmp_path):
    out = shards_at(3.0)
    run = tmp_path / "RUN"
    with pytest.raises(SystemExit, match=r"frame interval 3 s does not divide .* step of 5 s"):
        trainer_main.main([f"--shards={out}", f"--out={run}", *TRAIN])
    assert not (run / "metrics.jsonl").exists() and not list(run.glob("*.pt"))
    # in a mix, each of their samples is a bad sample: skipped and counted, the others used
    mixed = [
        str(p) for name in (out, shards_at(5.0)) for p in sorted((name / "shards").glob("*.tar"))
    ]
    [batch] = data.make_loader(mixed, ["objects"], 8, train=False, workers=0)
    errors = batch["events"]["sample_errors"]
    assert len(batch["keys"]) == len(errors) == 4
    assert all("frame interval 3 s does not divide" in message for _, message in errors)


def test_frames_per_step_and_step_rows():
    assert frames_per_step(5.0, STEP) == 1
    assert frames_per_step(2.5, STEP) == 2
    assert frames_per_step(1.0, STEP) == 5
    assert frames_per_step(1 / 3, STEP) == 15
    for interval in (3.0, 2.0, 10.0, 0.7):
        with pytest.raises(FrameIntervalError, match=f"frame interval {interval:g} s"):
            frames_per_step(interval, STEP)
    rows = np.eye(8, dtype=np.float16)
    means = step_rows(rows, 2, 3)  # the 7th and 8th frames are past the 3 steps
    assert means.shape == (3, 8) and means.dtype == np.float32
    assert means[1].tolist() == [0, 0, 0.5, 0.5, 0, 0, 0, 0]


def test_crops_of_version_1_samples_read_the_interval_off_their_frame_times():
    """A version-1 sample records no interval: its frame times say 2.5 s, or (one frame at
    the middle of a short segment) that the frame labels the whole segment."""
    audio = (np.arange(10 * 22050) // (STEP // 2)).astype(np.int16)  # the 2.5 s step index
    rows = np.eye(16, dtype=np.float16)[:4]
    meta = SampleMetadata("v", "v.mp4", 0, 0.0, 10.0, len(audio), [1.25, 3.75, 6.25, 8.75], {},
                          frame_interval_s=None, schema_version=1)  # fmt: skip
    k = data.sample_frames_per_step(meta, STEP)
    wave, targets = data.crop_steps(audio, {"h": rows}, 2, None, step_samples=STEP,
                                    frames_per_step=k)  # fmt: skip
    assert k == 2 and targets["h"][0].tolist()[:4] == [0.5, 0.5, 0, 0]
    assert wave[: STEP // 2].max() == 0 and wave[STEP // 2 : STEP].min() == 1
    middle = SampleMetadata("v", "v.mp4", 0, 0.0, 3.0, 3 * 22050, [1.5], {},
                            frame_interval_s=None, schema_version=1)  # fmt: skip
    assert data.sample_frames_per_step(middle, STEP) is None
    _, targets = data.crop_steps(audio[: 7 * 22050], {"h": rows[:1]}, 2, None,
                                 step_samples=STEP, frames_per_step=None)  # fmt: skip
    assert targets["h"].argmax(1).tolist() == [0, 0]  # its one frame under every step
