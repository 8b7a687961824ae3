"""Kill the pipeline with SIGKILL at several moments; a rerun must end equal to a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from schemas import INDEX_SCHEMA, decode_sample, read_table
from tests.conftest import REPO, assert_same_sample, write_report

CLIPS = [
    "mdn-ie_friday.mp4",
    "grid_lipnet-bbaf2n.mpg",
    "tmh_bear-vp9-opus.webm",
    "media3_sample.avi",
    "mdn-sa_tears-of-steel-battle-clip-medium.webm",
    "videollama_dog_barking.mp4",
    "mdn-la_elf.webm",
    "retalking_2.mp4",
]


def command(listing: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        "--runner=DirectRunner",
        f"--input={listing}",
        f"--output={out}",
        "--videos-per-shard=2",
        "--teacher-batch-size=4",
    ]


def run_to_end(listing: Path, out: Path) -> None:
    proc = subprocess.run(
        command(listing, out), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_when(listing: Path, out: Path, ready) -> bool:
    """Start a run and SIGKILL its whole process group once `ready(out)` holds.
    Returns False when the run finished before the moment came."""
    temp = out.parent / "temp"  # what a killed run cannot clean up stays with the test
    temp.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        command(listing, out),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    try:
        while proc.poll() is None:
            if ready(out):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def contents(out: Path) -> dict:
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {m["__key__"]: decode_sample(m) for m in wds.WebDataset(shards, shardshuffle=False)}


def assert_same_samples(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, sample in want.items():
        assert_same_sample(got[key], sample)


def has(pattern: str):
    return lambda out: any(out.glob(pattern))


@pytest.mark.slow
def test_sigkill_at_several_moments_then_rerun_equals_a_clean_run(shared_videos, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{shared_videos / c}\n" for c in CLIPS))
    clean = tmp_path / "clean"
    run_to_end(listing, clean)
    want = contents(clean)
    assert len(want) >= len(CLIPS)

    out = tmp_path / "killed"
    moments = {
        "run planned": has("_plan/config.json"),
        "a shard half-written": has("shards/*.tar.tmp-*"),
        "first shard written": has("shards/*.tar"),
        "half the shard tasks done": lambda o: len(list(o.glob("_progress/done/task-*"))) >= 2,
    }
    survived = [name for name, ready in moments.items() if kill_when(listing, out, ready)]
    assert len(survived) >= 3, f"the run finished before most kill points: {survived}"
    run_to_end(listing, out)

    assert_same_samples(contents(out), want)
    index = read_table(out / "index.parquet", INDEX_SCHEMA)
    assert index.to_pylist() == read_table(clean / "index.parquet", INDEX_SCHEMA).to_pylist()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not list(out.glob("_plan/pending-*"))
    # a finished output: running again rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    run_to_end(listing, out)
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == before
    write_report("sigkill", {"kill_points_survived": survived, "samples": len(want)})
