"""Stage 1 streams: shards roll over by audio and resume mid-task, frames stream through the
teacher batches, and the job graph does not grow with the corpus."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest

from pipeline import plan as planning
from pipeline.errors import InputError
from pipeline.labeller import FrameLabeller
from pipeline.plan import ShardTask
from pipeline.segments import SegmentPlan
from pipeline.task import RunSettings, TaskWriter
from pipeline.teachers import TeacherInfo, resolve_teacher
from pipeline.transforms import WriteShardTasks
from schemas import FAILURES_SCHEMA, INDEX_SCHEMA, TASKS_SCHEMA, read_table
from tests.conftest import assert_same_sample, run_pipeline
from tests.test_media import ffmpeg
from tests.test_pipeline import read_samples

ROLLOVER_CLIPS = [
    "mdn-sa_tears-of-steel-battle-clip-medium.webm",  # 70 s: four segments
    "videollama_dog_barking.mp4",  # 7 s
    "mdn-la_elf.webm",
    "torchcodec_nasa_13013.mp4",
]


def test_shards_roll_over_by_audio_and_a_rerun_goes_on_mid_task(
    pipeline_output, shared_videos, tmp_path
):
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{shared_videos / name}\n" for name in ROLLOVER_CLIPS))
    out = tmp_path / "out"
    options = [f"--input={listing}", "--videos-per-shard=4", "--shard-audio-minutes=0.5"]
    assert run_pipeline(*options, f"--output={out}") == 0

    index = read_table(out / "index.parquet", INDEX_SCHEMA).to_pylist()
    shards = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert shards == [f"shard-000000-{part:04d}.tar" for part in range(len(shards))]
    assert len(shards) >= 3  # one task, its audio cut into ~30 s shards
    audio = {name: 0.0 for name in shards}
    for row in index:
        audio[row["shard"]] += row["duration_s"]
    for name in shards[:-1]:  # each full shard: its target, plus at most one segment
        assert 30 <= audio[name] < 30 + 20, audio
    by_video: dict[str, set] = {}
    for row in index:
        by_video.setdefault(row["video_id"], set()).add(row["shard"])
    assert max(len(s) for s in by_video.values()) >= 2  # the 70 s clip spans shards

    # the samples are the ones any other run gives (the session's run over all clips)
    mine, everyone = read_samples(out), read_samples(pipeline_output)
    assert [r["key"] for r in index] == list(mine)
    for key, sample in mine.items():
        assert_same_sample(sample, everyone[key])

    # a run killed after the task's second shard: a rerun writes the rest, and only that
    for kind in ("index", "failures"):
        for path in sorted((out / "_progress" / kind).glob("*.parquet"))[2:]:
            path.unlink()
    for path in sorted((out / "_progress" / "done").glob("shard-*.json"))[2:]:
        path.unlink()
    (out / "_progress" / "done" / "task-000000.json").unlink()
    for name in shards[2:]:
        (out / "shards" / name).unlink()
    kept = {name: (out / "shards" / name).stat().st_mtime_ns for name in shards[:2]}
    resume_at = json.loads((out / "_progress" / "done" / "shard-000000-0001.json").read_text())
    assert resume_at["next"]["segment"] > 0 or resume_at["next"]["video"] > 0
    assert run_pipeline(*options, f"--output={out}") == 0
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == shards
    assert {n: (out / "shards" / n).stat().st_mtime_ns for n in shards[:2]} == kept
    assert read_table(out / "index.parquet", INDEX_SCHEMA).to_pylist() == index
    again = read_samples(out)
    assert list(again) == list(mine)
    for key, sample in mine.items():
        assert_same_sample(again[key], sample)


def test_frames_stream_through_batches_that_span_videos_and_a_bad_video_is_isolated():
    """The labeller pulls a video's frames only as batches need them, hands videos back in
    input order, and loses only the video whose frames a teacher cannot label."""
    batch_size, pulled, calls, held = 4, [0], [], []
    poison = 7.0  # frames of this value make the teacher fail

    def teachers(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        # frames pulled and not yet labelled (asserted after: the labeller records what this raises)
        held.append(pulled[0] - sum(len(c) for c in calls if c is not None))
        if any(f[0, 0, 0] == poison for f in frames):
            calls.append(None)
            raise RuntimeError("objects teacher: cannot label this")
        calls.append(frames)
        return {"objects": np.stack([np.full(3, f[0, 0, 0], np.float32) for f in frames])}

    def frames(value: float, count: int):
        for _ in range(count):
            pulled[0] += 1
            yield np.full((2, 2, 3), value, np.uint8)

    labeller = FrameLabeller(teachers, batch_size)
    out = list(labeller.push("long", "long.mp4", frames(1, 30)))  # a long video: 30 frames
    assert [d.video for d in out] == []  # not done until its last frame is labelled
    out += labeller.push("short", "short.mp4", frames(2, 2))
    out += labeller.fail("broken", "broken.mp4", InputError("probe", "broken.mp4: no audio"))
    out += labeller.push("poisoned", "poisoned.mp4", frames(poison, 1))
    out += labeller.push("after", "after.mp4", frames(3, 1))
    out += labeller.finish()

    assert [d.video for d in out] == ["long", "short", "broken", "poisoned", "after"]
    long, short, broken, poisoned, after = out
    assert long.error is None and long.rows["objects"].shape == (30, 3)
    assert (long.rows["objects"] == 1).all() and (short.rows["objects"] == 2).all()
    assert after.error is None and (after.rows["objects"] == 3).all()
    assert broken.error.stage == "probe"
    assert poisoned.error.stage == "teacher"
    assert "poisoned.mp4" in poisoned.error.message and "objects teacher" in poisoned.error.message
    batches = [len(c) for c in calls if c is not None]
    assert max(batches) == batch_size and sum(batches) == 30 + 2 + 1
    assert max(held) == batch_size  # never more than a batch of frames in memory
    assert any(len({f[0, 0, 0] for f in c}) > 1 for c in calls if c)  # batches span videos


def test_a_video_a_teacher_fails_is_not_decoded_further():
    """Once a batch holding its frames fails, a video's remaining frames are never decoded."""
    pulled, closed = [0], []

    def teachers(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("objects teacher: cannot label this")

    def frames(count: int):
        try:
            for _ in range(count):
                pulled[0] += 1
                yield np.zeros((2, 2, 3), np.uint8)
        finally:
            closed.append(True)

    labeller = FrameLabeller(teachers, batch_size=4)
    (failed,) = [*labeller.push("long", "long.mp4", frames(1000)), *labeller.finish()]
    assert failed.error.stage == "teacher" and "long.mp4" in failed.error.message
    assert pulled[0] == 4 and closed == [True]  # one batch of 1000 frames, and the decoder shut


def test_time_in_slow_teachers_does_not_count_against_the_decode_timeout(tmp_path):
    """The frames decoder waits while the teachers label each batch; only its own decoding
    counts against --decode-timeout (a video of slow CPU teachers was failed as timed out)."""
    clip = tmp_path / "clip.mp4"  # 4 s: two 2 s segments, 8 frames at one each 0.5 s
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=4", "-f", "lavfi",
           "-i", "sine=duration=4", "-c:v", "libx264", "-preset", "ultrafast", str(clip))  # fmt: skip
    out = str(tmp_path / "out")
    plan = planning.make_plan(out, [(str(clip), None)], 1, {})
    (task,) = [ShardTask(**row) for row in read_table(plan.tasks_file, TASKS_SCHEMA).to_pylist()]
    head = TeacherInfo("objects", "slow", "test", ["a", "b"], "0" * 64, "/nowhere")
    timeout_s, waited = 1.0, []

    def slow_teacher(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        waited.append(0.3)
        return {"objects": np.full((len(frames), 2), 0.5, np.float32)}

    settings = RunSettings(out, SegmentPlan(2.0, 0.5), (head,), teacher_batch_size=1,
                           decode_timeout_s=timeout_s)  # fmt: skip
    summary = TaskWriter(settings, slow_teacher).write(task)
    failures = read_table(Path(out) / "_progress/failures/shard-000000-0000.parquet",
                          FAILURES_SCHEMA).to_pylist()  # fmt: skip
    assert failures == []
    assert (summary.samples, summary.videos_failed) == (2, 0)
    assert sum(waited) > 2 * timeout_s  # the decoder was paused longer than its limit


def graph_bytes(output: Path, videos: int) -> int:
    entries = [(f"/corpus/video{i:07d}.mp4", None) for i in range(videos)]
    plan = planning.make_plan(str(output), entries, 100, {})
    pending = planning.write_pending(str(output), plan, set())
    settings = RunSettings(
        str(output), SegmentPlan(), (resolve_teacher("objects", "efficientnet_lite0"),)
    )
    p = beam.Pipeline(runner="DirectRunner")
    p | WriteShardTasks(pending, settings)
    return len(p.to_runner_api().SerializeToString())


def test_the_job_graph_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    # a Pipeline makes a temporary folder that only running it removes: these are never run
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    small, large = graph_bytes(tmp_path / "small", 10), graph_bytes(tmp_path / "large", 20_000)
    assert large == pytest.approx(small, abs=200)  # the plan is on disk, not in the graph
    assert large < 100_000
    assert len(list((tmp_path / "large" / "_plan").glob("videos-*.parquet"))) == 1


def test_shard_audio_target_must_be_positive(tmp_path, shared_videos, capsys):
    clip = shared_videos / "videollama_dog_barking.mp4"
    code = run_pipeline(f"--input={clip}", f"--output={tmp_path}", "--shard-audio-minutes=0")
    assert code == 2
    assert "--shard-audio-minutes" in capsys.readouterr().err
