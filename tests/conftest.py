"""Shared fixtures. Tests that need ../shared/data skip without it, and fail under CI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import teachers

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        message = f"{path} is missing (the developers' test data beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI it must be there")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """../shared/data/videos: 59 real clips with natural sound and odd encodings."""
    return _shared("videos")


@pytest.fixture(scope="session")
def shared_esc10() -> Path:
    """../shared/data/esc10: ESC-10 as mono 22050 Hz FLAC with meta/esc10.csv."""
    return _shared("esc10")


REPORTS = REPO / "build" / "reports"


def write_report(name: str, figures: dict) -> None:
    """Figures a test measured, for the README's reliability section (build/ is git-ignored)."""
    import json

    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def assert_same_sample(got, want) -> None:
    """Two schemas.Sample: identical audio, and each of `want`'s teacher rows within 1e-3
    (float16 storage; BLAS may order sums differently between runs)."""
    np.testing.assert_array_equal(got.audio, want.audio)
    for head, probs in want.probs.items():
        np.testing.assert_allclose(
            got.probs[head].astype(np.float32), probs.astype(np.float32), atol=1e-3
        )


def run_module(
    module: str, *args: str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the repository, as a user runs it; output captured."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def blocking_inputs(folder: Path) -> dict[str, Path]:
    """Inputs that would block a reader for good: a named pipe nobody writes to, and regular
    files whose content (whatever their name) makes FFmpeg open that pipe."""
    folder.mkdir()
    pipe = folder / "nobody-writes.fifo"  # not a media name: listed only through the playlists
    os.mkfifo(pipe)
    inputs = {
        "named pipe": folder / "pipe.mp4",
        "concat list": folder / "list.mp4",
        "HLS playlist": folder / "playlist.mkv",
    }
    os.mkfifo(inputs["named pipe"])
    inputs["concat list"].write_text(f"ffconcat version 1.0\nfile {pipe.name}\n")
    inputs["HLS playlist"].write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{pipe.name}\n#EXT-X-ENDLIST\n"
    )
    return inputs


def run_pipeline(*args: str) -> int:
    """Run `python -m pipeline.run` in-process (the real DirectRunner)."""
    from pipeline import run

    return run.main(["--runner=DirectRunner", *args])


def noise(size: int, seed: int = 0) -> bytes:
    """The same `size` random bytes every run. (os.urandom's were, about once in 300, a file
    PyAV took for H.263 or a subtitle format: a test of an unreadable input then flaked.)"""
    return random.Random(seed).randbytes(size)


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """A few broken inputs a real crawl meets; each must become exactly one failures row."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {
        "empty": folder / "empty.mp4",
        "text": folder / "notes as video.mp4",
        "random": folder / "random.mkv",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a video\n")
    bad["random"].write_bytes(noise(50_000))
    return bad


@pytest.fixture(scope="session")
def pipeline_output(shared_videos: Path, tmp_path_factory) -> Path:
    """One real pipeline run over all of ../shared/data/videos plus a few bad inputs, shared by
    every test (and every xdist worker) that needs real shards: OUT with shards/, index.parquet,
    failures.parquet, labels/, run.json. 8 videos a shard, so there are several shards."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, shared by its xdist workers
    out = root / "pipeline-output"
    with FileLock(str(root / "pipeline-output.lock")):
        if not (out / "run.json").exists():
            bad = make_bad_inputs(root / "bad-inputs")
            listing = root / "inputs.txt"
            videos = sorted(
                p for p in shared_videos.iterdir() if p.suffix != ".csv" and p.suffix != ".md"
            )
            listing.write_text("".join(f"{p}\n" for p in [*videos, *bad.values()]))
            code = run_pipeline(f"--input={listing}", f"--output={out}", "--videos-per-shard=8")
            assert code == 0, "the pipeline run for the test fixtures failed"
    return out


@dataclass(frozen=True)
class Teacher(teachers.TeacherInfo):
    """A resolved teacher and its network, for looking at a teacher outside the pipeline."""

    model: torch.nn.Module


def load_teacher(head, name, weights=None, labels=None, device="cpu") -> Teacher:
    info = teachers.resolve_teacher(head, name, weights, labels)
    return Teacher(**vars(info), model=teachers.build_teacher(info, device))
