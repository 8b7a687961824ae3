"""A corpus of broken and awkward inputs, made at test time from real clips.

The run completes with exit 0; every good input is written; every input that yields nothing is
exactly one failures row with its stage and a message that names the file; no decoder hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from schemas import FAILURES_SCHEMA, INDEX_SCHEMA, read_table
from tests.conftest import REPO, blocking_inputs, noise, run_module, write_report

GOOD_CLIP = "mdn-sa_tears-of-steel-battle-clip-medium.webm"  # 70 s, VP8/Vorbis
MP4_CLIP = "videollama_dog_barking.mp4"  # 7 s H.264/AAC, moov atom first


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_corpus(videos: Path, folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(must_fail, must_write) inputs by kind; truncated/corrupted files may go either way
    but must end up in exactly one place (they are in must_fail when they yield nothing)."""
    folder.mkdir()
    mp4 = (videos / MP4_CLIP).read_bytes()
    fail = {
        "empty": folder / "empty.mp4",
        "random bytes": folder / "random.webm",
        "text named .mp4": folder / "readme.mp4",
        "directory named .mp4": folder / "folder.mp4",
        "video without audio": folder / "silent-film.mp4",
        "audio without video": folder / "radio.mkv",
        "0.3 s clip": folder / "blink.mp4",
        "truncated at 2%": folder / "trunc02.mp4",
        "truncated at 50%": folder / "trunc50.mp4",
        "corrupted middle": folder / "corrupt-middle.mp4",
    }
    fail["empty"].write_bytes(b"")
    fail["random bytes"].write_bytes(noise(200_000))
    fail["text named .mp4"].write_text("not a video, just text\n" * 100)
    fail["directory named .mp4"].mkdir()
    ffmpeg("-i", str(videos / MP4_CLIP), "-an", "-c", "copy", str(fail["video without audio"]))
    ffmpeg("-i", str(videos / MP4_CLIP), "-vn", "-c", "copy", str(fail["audio without video"]))
    ffmpeg("-i", str(videos / MP4_CLIP), "-t", "0.3", str(fail["0.3 s clip"]))
    fail["truncated at 2%"].write_bytes(mp4[: len(mp4) // 50])
    fail["truncated at 50%"].write_bytes(mp4[: len(mp4) // 2])
    middle = bytearray(mp4)
    start = len(middle) // 3
    middle[start : start + len(middle) // 3] = noise(len(middle) // 3)
    fail["corrupted middle"].write_bytes(bytes(middle))

    write = {
        "spaces and quotes in the name": folder / 'it\'s a "quoted" name & more.webm',
        "audio shorter than the video": folder / "short-audio.mp4",
        "long silence": folder / "silence.mp4",
        "plain good clip": folder / "good.webm",
    }
    shutil.copy(videos / GOOD_CLIP, write["spaces and quotes in the name"])
    shutil.copy(videos / GOOD_CLIP, write["plain good clip"])
    ffmpeg(
        "-i",
        str(videos / MP4_CLIP),
        "-filter_complex",
        "[0:a]atrim=0:3[a]",
        "-map",
        "0:v",
        "-map",
        "[a]",
        "-c:v",
        "copy",
        str(write["audio shorter than the video"]),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=blue:s=320x240:r=10:d=30",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=44100:cl=stereo",
        "-t",
        "30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(write["long silence"]),
    )
    return fail, write


def run(args: list[str]) -> subprocess.CompletedProcess:
    return run_module("pipeline.run", "--runner=DirectRunner", *args, timeout=900)


def check_output(out: Path, proc, fail: dict, write: dict, missing: Path | None = None):
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = read_table(out / "index.parquet", INDEX_SCHEMA)
    failures = read_table(out / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    written = set(index.column("source").to_pylist())
    failed = [row["source"] for row in failures]
    assert len(failed) == len(set(failed)), "an input has more than one failures row"
    assert not written & set(failed), "an input is both written and failed"
    for kind, path in write.items():
        assert str(path) in written, f"good input lost: {kind}"
    expected_failures = {str(p) for p in fail.values()} | ({str(missing)} if missing else set())
    # truncated or corrupted files may still give whole segments; none may vanish
    assert written | set(failed) == expected_failures | {str(p) for p in write.values()}
    for kind in [
        "empty",
        "random bytes",
        "text named .mp4",
        "directory named .mp4",
        "video without audio",
        "audio without video",
        "0.3 s clip",
        "truncated at 2%",
    ]:
        assert str(fail[kind]) in failed, f"{kind} was not a failures row"
    for row in failures:
        assert row["stage"] in {"probe", "decode_audio", "decode_frames", "segment"}
        assert Path(row["source"]).name in row["message"], row
        assert len(row["message"]) < 400 and "Traceback" not in row["message"]
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["videos_failed"] == len(failures)
    assert counts["videos_written"] == len(written)
    assert f"{counts['videos_failed']} failed" in proc.stdout
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    return failures


@pytest.mark.slow
def test_bad_input_corpus_as_a_directory_and_as_a_list(shared_videos, tmp_path):
    fail, write = make_corpus(shared_videos, tmp_path / "corpus")
    out = tmp_path / "out-dir"
    proc = run([f"--input={tmp_path / 'corpus'}", f"--output={out}", "--decode-timeout=120"])
    failures = check_output(out, proc, fail, write)
    kinds = {row["stage"] for row in failures}
    assert {"probe", "segment"} <= kinds

    missing = tmp_path / "nowhere" / "missing.mp4"
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in [*fail.values(), missing, *write.values()]))
    out = tmp_path / "out-list"
    proc = run([f"--input={listing}", f"--output={out}", "--decode-timeout=120"])
    failures = check_output(out, proc, fail, write, missing)
    (row,) = [r for r in failures if r["source"] == str(missing)]
    assert row["stage"] == "probe" and "no such file" in row["message"]
    outcome = {str(p): "written" for p in write.values()}
    outcome.update({r["source"]: f"failed [{r['stage']}] {r['message']}" for r in failures})
    write_report(
        "bad_inputs",
        {
            "input_kinds_tried": len(fail) + len(write) + 1,
            "crashes": 0,
            "good_inputs_lost": 0,
            "outcome_by_kind": {
                k: outcome[str(p)]
                for k, p in [*fail.items(), *write.items(), ("missing path", missing)]
            },
        },
    )


def test_inputs_that_would_block_a_reader_fail_at_once_and_the_run_goes_on(tmp_path):
    """A named pipe is refused unopened; a concat list or an HLS playlist naming one is refused
    by its format (opened, PyAV blocked inside FFmpeg for good: no timeout reaches there), by
    PyAV and the ffmpeg tools alike; the good clip beside them is written."""
    inputs = blocking_inputs(tmp_path / "in")
    good = tmp_path / "in" / "good.webm"
    shutil.copy(REPO / "samples" / "videos" / "mdn-ie_stream-of-water.webm", good)
    out = tmp_path / "out"
    proc = run_module(
        "pipeline.run", "--runner=DirectRunner", f"--input={tmp_path / 'in'}", f"--output={out}",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        r["source"]: r for r in read_table(out / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    }
    assert set(rows) == {str(p) for p in inputs.values()}
    assert all(r["stage"] == "probe" and Path(s).name in r["message"] for s, r in rows.items())
    assert "is a named pipe, not a regular file" in rows[str(inputs["named pipe"])]["message"]
    assert "in the concat format" in rows[str(inputs["concat list"])]["message"]
    assert "in the hls format" in rows[str(inputs["HLS playlist"])]["message"]
    index = read_table(out / "index.parquet", INDEX_SCHEMA)
    assert set(index.column("source").to_pylist()) == {str(good)}


def test_a_decoder_that_hangs_times_out_instead_of_stalling_the_run(tmp_path):
    """--decode-timeout bounds every decoding step: here the ffprobe the pipeline falls back to
    (for a file PyAV cannot open) hangs, as it would on a stalled network file system; the
    input fails after the timeout, naming the tool, and the good clip is still written."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ffprobe").write_text("#!/bin/sh\nexec sleep 600\n")
    (tools / "ffprobe").chmod(0o755)
    (tmp_path / "in").mkdir()
    stuck = tmp_path / "in" / "stuck.mp4"
    stuck.write_bytes(noise(100_000))  # PyAV finds no format: the tools are asked
    good = tmp_path / "in" / "good.webm"
    shutil.copy(REPO / "samples" / "videos" / "mdn-ie_stream-of-water.webm", good)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    began = time.monotonic()
    proc = run_module(
        "pipeline.run", "--runner=DirectRunner", f"--input={tmp_path / 'in'}", f"--output={out}",
        "--decode-timeout=3", timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - began < 120  # not the hung tool's 600 s
    (row,) = read_table(out / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    assert row["source"] == str(stuck) and row["stage"] == "probe"
    assert row["message"] == f"{stuck}: ffprobe timed out after 3 s"
    index = read_table(out / "index.parquet", INDEX_SCHEMA)
    assert set(index.column("source").to_pylist()) == {str(good)}


def test_max_failed_fraction_fails_the_job_loudly(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"")
    shutil.copy(REPO / "samples" / "videos" / "mdn-ie_stream-of-water.webm", tmp_path / "in")
    proc = run(
        [f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", "--max-failed-fraction=0.25"]
    )
    assert proc.returncode == 1
    assert "50.0% of inputs failed" in proc.stderr and "--max-failed-fraction=0.25" in proc.stderr
    # the good input is still written, and the record says what happened
    counts = json.loads((tmp_path / "out" / "run.json").read_text())["counts"]
    assert (counts["videos_written"], counts["videos_failed"]) == (1, 1)
