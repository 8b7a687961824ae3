"""Kill the pipeline with SIGKILL at several moments; a rerun must end equal to a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from pipeline import progress
from pipeline.progress import Position, ShardDone
from schemas import FAILURES_SCHEMA, INDEX_SCHEMA, decode_sample, read_table
from tests.conftest import REPO, assert_same_sample, run_pipeline, write_report

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


def test_a_task_of_failures_only_is_finished_and_a_rerun_redoes_nothing(tmp_path):
    """Its one shard has failure rows and no tar: that is no lost shard to write again."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.mp4").write_bytes(b"")
    args = [f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}"]
    assert run_pipeline(*args) == 0
    done = tmp_path / "out" / "_progress" / "done"
    marker = json.loads((done / "shard-000000-0000.json").read_text())
    assert (marker["samples"], marker["failures"]) == (0, 1)
    assert not list((tmp_path / "out" / "shards").glob("*.tar"))
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    assert run_pipeline(*args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    runs = json.loads((tmp_path / "out" / "run.json").read_text())["runs"]
    assert [r["tasks_written"] for r in runs] == [1, 0]
    (row,) = read_table(tmp_path / "out" / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    assert row["source"] == str(tmp_path / "in" / "empty.mp4")


def test_shards_past_part_9999_resume_after_the_last_and_merge_in_order(tmp_path):
    """Names sort 'shard-000000-10000' before 'shard-000000-9999': order is by number."""
    out = str(tmp_path)
    shards = [(0, 10000), (0, 2), (1_000_000, 0), (0, 9999), (999_999, 0)]
    for task, part in shards:
        source = f"/videos/{task}-{part}.mp4"
        row = {"source": source, "stage": "probe", "error_type": "InputError", "message": source}
        progress.record_shard(out, ShardDone(task, part, 0, 1, 0.0, Position(part)), [], [row])
    assert progress.last_shard(out, 0).part == 10000
    assert progress.last_shard(out, 0).next == Position(10000)
    progress.merge(out)
    merged = read_table(tmp_path / "failures.parquet", FAILURES_SCHEMA).column("source")
    assert merged.to_pylist() == [f"/videos/{t}-{p}.mp4" for t, p in sorted(shards)]


def test_written_files_reach_the_disk_before_they_take_their_final_name(tmp_path, monkeypatch):
    """A power loss after the rename must not leave an empty file under the final name."""
    from pipeline import files

    events: list[tuple[str, str]] = []
    fsync, rename, replace = os.fsync, os.rename, os.replace

    def synced(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def renamed(real):
        def move(source, destination) -> None:
            events.append(("rename", str(source)))
            real(source, destination)

        return move

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "rename", renamed(rename))
    monkeypatch.setattr(os, "replace", renamed(replace))
    files.write_atomic(str(tmp_path / "a.json"), b"{}")
    with files.growing_file(str(tmp_path / "b.tar")) as stream:
        stream.write(b"data")
    moved = [path for kind, path in events if kind == "rename"]
    assert [Path(p).name.split(".tmp-")[0] for p in moved] == ["a.json", "b.tar"]
    for path in moved:  # each synced, under its temporary name, before it was renamed
        assert events.index(("fsync", path)) < events.index(("rename", path))
    assert (tmp_path / "b.tar").read_bytes() == b"data"
