"""FLAC and pcm16 shards of the same unseen clips: the same samples, trained and validated alike.

The clips are made here by ffmpeg from its test sources (no licence questions, never seen by
the other tests): a 26 s H.264 clip (a 20 s segment and a 6 s one) and an 8 s MPEG-4 one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import webdataset as wds

from models.checkpoint import load_checkpoint
from tests.conftest import assert_same_sample, run_pipeline
from tests.test_pipeline import read_samples
from trainer import main as trainer_main

CLIPS = [
    ("tone.mp4", 26, "testsrc2=size=160x120:rate=10", "sine=frequency=440",
     ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
    ("noise.mkv", 8, "mandelbrot=size=160x120:rate=10", "anoisesrc=color=pink:seed=3",
     ["-c:v", "mpeg4", "-c:a", "libmp3lame", "-ar", "44100"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def unseen_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unseen")
    for name, seconds, video, audio, codecs in CLIPS:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", video, "-f", "lavfi",
             "-i", audio, "-t", str(seconds), "-pix_fmt", "yuv420p", *codecs, str(folder / name)],
            check=True, timeout=120,
        )  # fmt: skip
    return folder


def train(out: Path, run: Path) -> list[dict]:
    """Two real optimiser steps from a worker process, then validation on the same shards."""
    trainer_main.main([f"--shards={out}", f"--out={run}", f"--val-shards={out}", "--steps=2",
                       "--batch-size=2", "--crop-seconds=5", "--workers=1", "--log-every=1",
                       "--val-every=2", "--no-progress", "--no-tensorboard"])  # fmt: skip
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "time_s")} for r in lines]


@pytest.mark.slow
def test_pcm16_shards_hold_the_flac_shards_samples_and_train_alike(unseen_clips, tmp_path, capsys):
    outs = {codec: tmp_path / codec for codec in ("flac", "pcm16")}
    for codec, out in outs.items():
        assert (
            run_pipeline(f"--input={unseen_clips}", f"--output={out}", f"--audio-codec={codec}")
            == 0
        )
    flac, pcm16 = read_samples(outs["flac"]), read_samples(outs["pcm16"])
    assert list(pcm16) == list(flac) and len(flac) == 3  # 20 s + 6 s, and 8 s
    for key, sample in pcm16.items():
        assert_same_sample(sample, flac[key])
        assert (sample.metadata.audio_codec, flac[key].metadata.audio_codec) == ("pcm16", "flac")
    # the member is raw little-endian int16, read back without decoding
    shards = sorted(str(p) for p in (outs["pcm16"] / "shards").glob("*.tar"))
    raw = next(iter(wds.WebDataset(shards, shardshuffle=False)))
    assert "flac" not in raw and raw["pcm16"] == pcm16[raw["__key__"]].audio.astype("<i2").tobytes()
    # the codec decides the output's content: a rerun with the other one is refused
    capsys.readouterr()
    code = run_pipeline(
        f"--input={unseen_clips}", f"--output={outs['pcm16']}", "--audio-codec=flac"
    )
    assert code == 2 and "different audio_codec" in capsys.readouterr().err

    # the same crops and targets: the same losses, validation and weights, step for step
    metrics = {codec: train(out, tmp_path / f"run-{codec}") for codec, out in outs.items()}
    assert [r["kind"] for r in metrics["flac"]].count("val") == 1
    assert metrics["pcm16"] == metrics["flac"]
    weights = {c: load_checkpoint(tmp_path / f"run-{c}" / "last.pt")["model"] for c in outs}
    for name, tensor in weights["flac"].items():
        assert torch.equal(weights["pcm16"][name], tensor), name
