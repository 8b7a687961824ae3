"""End to end: the real Beam DirectRunner over real videos, real decoders and the real teacher."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from pipeline import decode
from pipeline.decode import spool
from pipeline.teachers import preprocess
from schemas import (
    FAILURES_SCHEMA,
    INDEX_SCHEMA,
    SAMPLE_RATE,
    decode_sample,
    read_labels,
    read_table,
)
from tests.conftest import REPO, assert_same_sample, load_teacher, run_module, run_pipeline
from trainer.data import resolve_shards

# Clips whose audio is under --min-segment-seconds=1 (ffprobe durations 0.30 to 0.98 s).
SHORT_CLIPS = {
    "media3_8k24fps_300ms.mp4",
    "media3_sample_edit_list_only_preroll_sync_sample.mp4",
    "media3_sample_with_color_info.mp4",
    "pymediainfo_sample.mp4",
}
BAD_INPUTS = {"empty.mp4", "notes as video.mp4", "random.mkv"}


def read_samples(output: Path) -> dict:
    shards = sorted(str(p) for p in (output / "shards").glob("*.tar"))
    return {m["__key__"]: decode_sample(m) for m in wds.WebDataset(shards, shardshuffle=False)}


@pytest.fixture(scope="module")
def samples(pipeline_output):
    return read_samples(pipeline_output)


def test_every_clip_is_written_but_the_short_and_the_broken(pipeline_output, shared_videos):
    index = read_table(pipeline_output / "index.parquet", INDEX_SCHEMA)
    failures = read_table(pipeline_output / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    videos = {p.name for p in shared_videos.iterdir() if p.suffix not in {".csv", ".md"}}
    written = {Path(s).name for s in index.column("source").to_pylist()}
    assert written == videos - SHORT_CLIPS
    failed = [Path(r["source"]).name for r in failures]
    assert sorted(failed) == sorted(SHORT_CLIPS | BAD_INPUTS)  # exactly one row each
    for row in failures:
        assert row["source"] in row["message"] or Path(row["source"]).name in row["message"]
        if Path(row["source"]).name in SHORT_CLIPS:
            assert row["stage"] == "segment" and "min-segment-seconds" in row["message"]
        else:
            assert row["stage"] == "probe"
    record = json.loads((pipeline_output / "run.json").read_text())
    assert record["counts"]["videos"] == len(videos) + len(BAD_INPUTS)
    assert record["counts"]["videos_failed"] == len(failures)
    assert record["counts"]["samples"] == index.num_rows
    assert len(list((pipeline_output / "shards").glob("*.tar"))) == record["counts"]["shards"] > 1
    # the decoders that made the samples: another version decodes slightly differently
    versions = record["versions"]
    assert versions["pyav"] == av.__version__ and versions["ffmpeg (fallback)"][0].isdigit()


def test_shards_follow_the_format_and_match_the_index(pipeline_output, samples):
    index = read_table(pipeline_output / "index.parquet", INDEX_SCHEMA).to_pylist()
    assert [r["key"] for r in index] == list(samples)  # same samples, same order
    labels = read_labels(pipeline_output / "labels" / "objects.txt")
    assert len(labels) == 1000
    for row in index:
        sample = samples[row["key"]]
        meta = sample.metadata
        assert meta.heads["objects"].teacher == "efficientnet_lite0"
        assert len(meta.heads["objects"].weights_sha256) == 64
        assert (row["segment"], row["num_frames"]) == (meta.segment, len(meta.frame_times_s))
        probs = sample.probs["objects"].astype(np.float32)
        assert probs.shape == (len(meta.frame_times_s), 1000)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-2)
        assert meta.start_s <= meta.frame_times_s[0] < meta.frame_times_s[-1] + 1e-9
        assert meta.frame_times_s[-1] <= meta.start_s + meta.duration_s
    # no temporary or work files are left visible
    assert not [p for p in pipeline_output.rglob("*") if ".tmp-" in p.name]
    assert not list(pipeline_output.glob("_plan/pending-*"))


def test_segments_hold_the_whole_decoded_audio(samples, shared_videos):
    by_source = defaultdict(list)
    for sample in samples.values():
        by_source[sample.metadata.source].append(sample)
    for name in [
        "mdn-sa_tears-of-steel-battle-clip-medium.webm",
        "videollava_sample_demo_22.mp4",
        "media3_bbb_960x540_60fps_vp8.webm",
        "torchcodec_nasa_13013.mp4",
    ]:
        path = str(shared_videos / name)
        audio = decode.decode_audio(path, decode.probe(path))
        segs = sorted(by_source[path], key=lambda s: s.metadata.segment)
        assert [s.metadata.segment for s in segs] == list(range(len(segs)))
        total = sum(len(s.audio) for s in segs)
        assert 0 <= len(audio) - total < SAMPLE_RATE  # at most a dropped tail under 1 s
        np.testing.assert_array_equal(np.concatenate([s.audio for s in segs]), audio[:total])


def test_teacher_rows_equal_a_direct_model_call_on_the_same_frames(samples, shared_videos):
    teacher = load_teacher("objects", "efficientnet_lite0")
    for name in [
        "videollama_dog_barking.mp4",
        "media3_internal_emulator_transformer_output_270_rotated.mp4",
        "mdn-sa_tears-of-steel-battle-clip-medium.webm",
    ]:
        path = str(shared_videos / name)
        segs = sorted(
            (s for s in samples.values() if s.metadata.source == path),
            key=lambda s: s.metadata.segment,
        )
        times = [t for s in segs for t in s.metadata.frame_times_s]
        frames = np.stack(list(decode.FrameStream(path, decode.probe(path), times)))
        with torch.inference_mode():
            direct = torch.softmax(teacher.model(preprocess(frames)), dim=1).numpy()
        stored = np.concatenate([s.probs["objects"].astype(np.float32) for s in segs])
        np.testing.assert_allclose(stored, direct, atol=1e-3)


def test_rerunning_a_finished_output_changes_nothing(pipeline_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(pipeline_output, out)
    before = {
        p.relative_to(out): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "run.json"
    }
    args = json.loads((out / "run.json").read_text())["argv"]
    args = [a for a in args if not a.startswith(("--output", "--runner"))]
    assert run_pipeline(*args, f"--output={out}") == 0
    runs = json.loads((out / "run.json").read_text())["runs"]
    assert len(runs) == 2 and runs[0]["tasks_written"] > 0 and runs[1]["tasks_written"] == 0
    assert f"--output={out}" in runs[1]["argv"] and set(args) <= set(runs[1]["argv"])
    after = {
        p.relative_to(out): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "run.json"
    }
    assert after == before


def test_multi_processing_mode_writes_the_same_samples(
    pipeline_output, samples, shared_videos, tmp_path, monkeypatch
):
    """...and the run leaves no temporary folder behind: Beam's DirectRunner first tried to
    download its Prism runner from GitHub, leaving an empty beam-temp* folder each run."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    names = [
        "mdn-ie_friday.mp4",
        "grid_lipnet-bbaf2n.mpg",
        "tmh_bear-vp9-opus.webm",
        "media3_sample.avi",
        "pymediainfo_sample.mp4",
    ]
    listing = tmp_path / "some.txt"
    listing.write_text("".join(f"{shared_videos / n}\n" for n in names))
    out = tmp_path / "mp"
    code = run_pipeline(
        f"--input={listing}",
        f"--output={out}",
        "--videos-per-shard=2",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert code == 0
    mine = read_samples(out)
    assert mine and set(mine) <= set(samples)
    assert {s.metadata.source for s in mine.values()} == {
        str(shared_videos / n) for n in names if n not in SHORT_CLIPS
    }
    for key, sample in mine.items():
        assert_same_sample(sample, samples[key])
    failures = read_table(out / "failures.parquet", FAILURES_SCHEMA)
    assert [Path(s).name for s in failures.column("source").to_pylist()] == [
        "pymediainfo_sample.mp4"
    ]
    assert list(temp.iterdir()) == []


def test_audio_held_in_a_mapped_file_writes_the_same_samples(
    samples, shared_videos, tmp_path, monkeypatch
):
    """Long videos' audio (past 10 minutes; here past 1 s) is spooled to a temporary file and
    mapped (pipeline/decode/spool.py): read-only audio, cut and encoded into the same samples."""
    monkeypatch.setattr(spool, "SPILL_AFTER_S", 1.0)
    spilled, array = [], spool.AudioSpool.array

    def noted(self):
        spilled.append(self.file is not None)
        return array(self)

    monkeypatch.setattr(spool.AudioSpool, "array", noted)
    names = ["mdn-sa_tears-of-steel-battle-clip-medium.webm", "tmh_bear-vp9-opus.webm"]
    listing = tmp_path / "two.txt"
    listing.write_text("".join(f"{shared_videos / n}\n" for n in names))
    assert run_pipeline(f"--input={listing}", f"--output={tmp_path / 'out'}") == 0
    assert spilled == [True, True]  # each video's audio, decoded once
    mine = read_samples(tmp_path / "out")
    assert {s.metadata.source for s in mine.values()} == {str(shared_videos / n) for n in names}
    for key, sample in mine.items():
        assert_same_sample(sample, samples[key])


def test_names_with_brackets_are_names_not_globs(tmp_path):
    """yt-dlp names downloads 'Title [id].mp4', and users name runs 'exp [v2]': such a folder or
    file, given as --input, --output or --shards, is itself. (Beam read the output's progress
    listings, its task list and its deletes as globs: the run failed with a traceback.)"""
    clips = tmp_path / "clips [2016]"
    clips.mkdir()
    video = clips / "friday [abc].mp4"
    shutil.copy(REPO / "samples" / "videos" / "mdn-ie_friday.mp4", video)
    out = tmp_path / "out [v2]"
    for spec in (clips, video):
        assert run_pipeline(f"--input={spec}", f"--output={out / spec.name}") == 0
        index = read_table(out / spec.name / "index.parquet", INDEX_SCHEMA)
        assert index.column("source").to_pylist() == [str(video)]
        assert not list((out / spec.name / "_plan").glob("pending-*"))
    shard = next((out / clips.name / "shards").glob("*.tar"))
    written = shard.stat().st_mtime_ns
    assert run_pipeline(f"--input={clips}", f"--output={out / clips.name}") == 0
    assert shard.stat().st_mtime_ns == written  # the rerun found its task finished
    assert resolve_shards(str(shard)).urls == [str(shard)]


def test_a_run_planned_in_a_relative_folder_resumes_from_anywhere(tmp_path, monkeypatch):
    """The plan kept its video lists' paths as given: a killed run whose --output was relative,
    started again from another directory, failed with a worker traceback."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("mdn-ie_friday.mp4", "mdn-la_rabbit320.mp4"):
        shutil.copy(REPO / "samples" / "videos" / name, videos / name)
    monkeypatch.chdir(tmp_path)
    assert run_pipeline("--input=videos", "--output=out", "--videos-per-shard=1") == 0
    out = tmp_path / "out"
    for killed in [*out.glob("_progress/done/*000001*"), *out.glob("shards/*000001*")]:
        killed.unlink()  # task 1 as a killed run leaves it: not done, its shard not written
    monkeypatch.chdir(REPO)
    assert run_pipeline(f"--input={videos}", f"--output={out}", "--videos-per-shard=1") == 0
    index = read_table(out / "index.parquet", INDEX_SCHEMA)
    assert sorted(index.column("shard").to_pylist()) == [
        "shard-000000-0000.tar", "shard-000001-0000.tar"
    ]  # fmt: skip


def test_a_lost_shard_is_written_again_by_the_rerun(tmp_path):
    """A finished shard deleted (or lost with a disk): the rerun had said '0 to do' and kept
    listing it in index.parquet. It now writes it, and its task's later shards, again."""
    args = [f"--input={REPO / 'samples' / 'videos' / 'mdn-ie_friday.mp4'}",
            f"--output={tmp_path / 'out'}", "--segment-seconds=2", "--frame-interval=1",
            "--shard-audio-minutes=0.02"]  # fmt: skip
    assert run_pipeline(*args) == 0
    shards = tmp_path / "out" / "shards"
    before = read_table(tmp_path / "out" / "index.parquet", INDEX_SCHEMA).to_pylist()
    names = sorted(p.name for p in shards.iterdir())
    assert len(names) >= 3
    (shards / names[1]).unlink()
    first_written = (shards / names[0]).stat().st_mtime_ns
    assert run_pipeline(*args) == 0
    assert sorted(p.name for p in shards.iterdir()) == names
    assert (shards / names[0]).stat().st_mtime_ns == first_written  # the part before: kept
    after = read_table(tmp_path / "out" / "index.parquet", INDEX_SCHEMA).to_pylist()
    assert after == before


def test_demo_runs_on_the_bundled_sample_without_shared_data(tmp_path):
    """The command behind `make demo`, as a user runs it (needs nothing beside the repo)."""
    proc = run_module("recipes.demo", f"--output={tmp_path / 'demo'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "videos written: 4, segments: 5" in proc.stdout
    assert "failures: 0" in proc.stdout
    for name in ["mdn-ie_friday.mp4", "mdn-la_rabbit320.mp4"]:
        assert name in proc.stdout


def test_labels_of_an_object_store_output_stay_under_its_url():
    from pipeline.run import labels_file

    # Beam joins s3:// and azfs:// without their extras; gs:// goes the same way (pathlib
    # had made gs:/bucket of gs://bucket, a local folder named 'gs:')
    assert labels_file("s3://bucket/out", "objects") == "s3://bucket/out/labels/objects.txt"
    assert labels_file("azfs://acct/box/out", "scenes") == "azfs://acct/box/out/labels/scenes.txt"
    assert labels_file("/data/out", "objects") == "/data/out/labels/objects.txt"


@pytest.mark.parametrize(
    "given, expected",
    [
        ([], ("multi_threading", "CORES")),
        (["--direct_num_workers=4"], ("multi_threading", 4)),
        (["--direct_running_mode=multi_processing"], ("multi_processing", "CORES")),
        (["--direct_running_mode", "in_memory", "--direct_num_workers", "2"], ("in_memory", 2)),
    ],
)
def test_the_direct_runner_gets_each_core_default_its_options_leave_out(given, expected):
    from apache_beam.options.pipeline_options import DirectOptions

    from pipeline.options import parse_args
    from pipeline.run import use_all_cores

    argv = ["--runner=DirectRunner", "--input=in", "--output=out", *given]
    options = parse_args(argv)
    use_all_cores(options, argv)
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    want = tuple(cores if v == "CORES" else v for v in expected)
    assert (direct.direct_running_mode, direct.direct_num_workers) == want
