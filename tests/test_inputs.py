"""--input forms: directory, glob, text list, CSV/Parquet manifest; the run's plan on disk."""

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.inputs import InputListError, copy_name, local_media, read_input_entries
from pipeline.plan import ShardTask, make_plan, read_task_videos
from pipeline.segments import SegmentPlan
from pipeline.task import RunSettings, TaskWriter
from pipeline.teachers import TeacherInfo
from schemas import FAILURES_SCHEMA, TASKS_SCHEMA, read_table
from tests.conftest import REPO, run_pipeline
from tests.test_media import ffmpeg


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.mp4").write_bytes(b"x")
    (tmp_path / "c.MKV").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "dir.mp4").mkdir()  # listed, so that it becomes a failures row
    return tmp_path


def test_directory_is_searched_recursively_in_sorted_order(tree):
    uris = [u for u, _ in read_input_entries(str(tree))]
    assert uris == sorted([str(tree / "a" / "b.mp4"), str(tree / "c.MKV"), str(tree / "dir.mp4")])


def test_glob_list_and_manifests(tree, tmp_path):
    assert [u for u, _ in read_input_entries(str(tree / "**" / "*.mp4"))] == [
        str(tree / "a" / "b.mp4")
    ]
    listing = tmp_path / "videos.txt"
    listing.write_text("# comment\na/b.mp4\n\n/elsewhere/missing.mp4\n")
    assert read_input_entries(str(listing)) == [
        (str(tree / "a" / "b.mp4"), None),
        ("/elsewhere/missing.mp4", None),
    ]
    csv = tmp_path / "m.csv"
    csv.write_text("uri,id\na/b.mp4,first\nc.MKV,\n")
    assert read_input_entries(str(csv)) == [
        (str(tree / "a" / "b.mp4"), "first"),
        (str(tree / "c.MKV"), None),
    ]
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(tree / "c.MKV")]}), parquet)
    assert read_input_entries(str(parquet)) == [(str(tree / "c.MKV"), None)]


def test_a_path_that_exists_is_not_a_glob(tmp_path):
    folder = tmp_path / "clips [2016]"
    folder.mkdir()
    (folder / "talk [x1].mp4").write_bytes(b"x")
    want = [(str(folder / "talk [x1].mp4"), None)]
    assert read_input_entries(str(folder)) == want
    assert read_input_entries(str(folder / "talk [x1].mp4")) == want
    assert read_input_entries(str(tmp_path / "clips [[]2016]" / "*.mp4")) == want
    with pytest.raises(InputListError, match=r"glob matches no file .*'\[\[\]'"):
        read_input_entries(str(folder / "*.mp4"))


def test_lists_read_as_written(tmp_path):
    """Ids are text ('007' and '7' are two ids; CSV reading had made both 7), a list with a
    byte-order mark loses no entry, an empty uri is an error, not the manifest's folder."""
    ids = tmp_path / "ids.csv"
    ids.write_text("uri,id\na.mp4,007\nb.mp4,7\nc.mp4,\n")
    assert read_input_entries(str(ids)) == [
        (str(tmp_path / "a.mp4"), "007"), (str(tmp_path / "b.mp4"), "7"),
        (str(tmp_path / "c.mp4"), None),
    ]  # fmt: skip
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa.mp4\r\nb.mp4\r\n")
    assert [u for u, _ in read_input_entries(str(bom))] == [
        str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
    ]  # fmt: skip
    empty = tmp_path / "empty.csv"
    empty.write_text("uri,id\na.mp4,x\n  ,y\n")
    with pytest.raises(InputListError, match="empty.csv: row 2 has an empty uri"):
        read_input_entries(str(empty))


def test_linked_folders_are_searched_once(tmp_path):
    (tmp_path / "disk" / "sub").mkdir(parents=True)
    (tmp_path / "disk" / "sub" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "disk" / "sub" / "up").symlink_to("..")  # a loop
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "disk").symlink_to(tmp_path / "disk")
    found = read_input_entries(str(tmp_path / "corpus"))
    assert found == [(str(tmp_path / "corpus" / "disk" / "sub" / "clip.mp4"), None)]


def test_bad_input_specs_are_clear_errors(tmp_path):
    with pytest.raises(InputListError, match="does not exist"):
        read_input_entries(str(tmp_path / "nope"))
    bad = tmp_path / "m.csv"
    bad.write_text("path\nx.mp4\n")
    with pytest.raises(ValueError, match="missing column"):
        read_input_entries(str(bad))


def test_unreadable_lists_and_outputs_are_errors_that_name_them(tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café.mp4\n".encode("latin-1"))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("clip.mp4\n", encoding="utf-16")
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    for path, words in [
        (latin, "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (utf16, "is not UTF-8 text (byte 0xff at offset 0)"),
        (folder, "cannot read the list: Is a directory"),
    ]:
        with pytest.raises(InputListError) as caught:
            read_input_entries(str(path))
        assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value)
    # the driver: a usage error (exit 2) naming the output, not a traceback
    clip = REPO / "samples" / "videos" / "mdn-ie_friday.mp4"
    assert run_pipeline(f"--input={clip}", "--output=/proc/soundnet-out") == 2
    assert "--output /proc/soundnet-out: cannot hold the run" in capsys.readouterr().err


def test_plan_assigns_stable_ids_and_tasks_and_drops_duplicate_uris(tmp_path):
    entries = [(f"/v/{i}.mp4", None) for i in range(5)] + [("/v/0.mp4", None)]
    plan = make_plan(str(tmp_path / "out"), entries, 2, {"segment_seconds": 20.0})
    assert (plan.videos, plan.tasks) == (5, 3)
    tasks = [ShardTask(**row) for row in read_table(plan.tasks_file, TASKS_SCHEMA).to_pylist()]
    assert [(t.task, t.row_group, t.videos) for t in tasks] == [(0, 0, 2), (1, 1, 2), (2, 2, 1)]
    out = str(tmp_path / "out")
    videos = [read_task_videos(out, t) for t in tasks]  # each task reads its own row group only
    assert [[v.uri for v in vs] for vs in videos] == [
        ["/v/0.mp4", "/v/1.mp4"], ["/v/2.mp4", "/v/3.mp4"], ["/v/4.mp4"]
    ]  # fmt: skip
    assert [v.position for vs in videos for v in vs] == [0, 1, 0, 1, 0]
    first_ids = [v.video_id for vs in videos for v in vs]
    # the same inputs and options again: the same plan, untouched
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "_plan").iterdir()}
    assert make_plan(str(tmp_path / "out"), entries, 2, {"segment_seconds": 20.0}) == plan
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "_plan").iterdir()} == before
    again = make_plan(str(tmp_path / "again"), entries, 2, {"segment_seconds": 20.0})
    again_tasks = read_table(again.tasks_file, TASKS_SCHEMA).to_pylist()
    assert [
        v.video_id
        for t in again_tasks
        for v in read_task_videos(str(tmp_path / "again"), ShardTask(**t))
    ] == first_ids
    # other inputs or options on the same output are refused, naming what differs
    with pytest.raises(InputListError, match="different inputs_sha256"):
        make_plan(str(tmp_path / "out"), entries[:3], 2, {"segment_seconds": 20.0})
    with pytest.raises(InputListError, match="different segment_seconds, videos_per_shard"):
        make_plan(str(tmp_path / "out"), entries, 3, {"segment_seconds": 10.0})
    with pytest.raises(InputListError, match="given to both"):
        make_plan(str(tmp_path / "ids"), [("/a.mp4", "same"), ("/b.mp4", "same")], 2, {})


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on this machine: the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_inputs_are_copied_locally_and_unreachable_ones_are_read_failures(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"video bytes")
    with serving(tmp_path) as base:
        with local_media(f"{base}/clip.mp4") as path:
            assert path.endswith("clip.mp4")
            assert Path(path).read_bytes() == b"video bytes"
        assert not os.path.exists(path)
        missing = pytest.raises(InputError, match="missing.mp4: cannot read it")
        with missing as err, local_media(f"{base}/missing.mp4"):
            pass
        assert err.value.stage == "read"
        # a pre-signed URL: its query is no part of the copy's name (which it made too long)
        signed = f"{base}/clip.mp4?X-Amz-Credential=abc%2F20240101&X-Amz-Signature={'f' * 400}"
        with local_media(signed) as path:
            assert Path(path).name == "clip.mp4"
            assert Path(path).read_bytes() == b"video bytes"
    with local_media(str(tmp_path / "clip.mp4")) as path:
        assert path == str(tmp_path / "clip.mp4")


def test_a_remote_copy_name_is_short_and_keeps_its_extension():
    long_name = copy_name(f"https://host/v/{'é' * 200}.webm?token=1")
    assert long_name.endswith(".webm") and len(long_name.encode()) <= 120
    assert long_name.removesuffix(".webm").strip("é") == ""  # no half character left
    assert copy_name("gs://bucket/clips/a?b.mp4") == "a?b.mp4"  # an object's name, whole
    assert copy_name("https://host/?id=7") == "video"
    assert copy_name("s3://bucket/..") == "video"  # never the temporary folder's parent


def test_a_frame_failure_of_a_remote_input_names_its_url(tmp_path):
    """The frames are decoded from a temporary copy; the failures row names the URL."""
    served = tmp_path / "served"
    served.mkdir()
    # sound and a video stream every packet of which was dropped: probe and audio are fine,
    # decoding frames fails
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=4", "-f", "lavfi",
           "-i", "sine=duration=4", "-c:v", "libx264", "-preset", "ultrafast",
           "-bsf:v", "noise=dropamount=1", str(served / "no-pictures.mkv"))  # fmt: skip
    head = TeacherInfo("objects", "uniform", "test", ["a", "b"], "0" * 64, "/nowhere")

    def teacher(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"objects": np.full((len(frames), 2), 0.5, np.float32)}

    out = str(tmp_path / "out")
    with serving(served) as base:
        url = f"{base}/no-pictures.mkv"
        plan = make_plan(out, [(url, None)], 1, {})
        (task,) = [ShardTask(**r) for r in read_table(plan.tasks_file, TASKS_SCHEMA).to_pylist()]
        settings = RunSettings(out, SegmentPlan(2.0, 1.0), (head,), decode_timeout_s=60)
        summary = TaskWriter(settings, teacher).write(task)
    assert summary.videos_failed == 1
    (row,) = read_table(
        Path(out) / "_progress" / "failures" / "shard-000000-0000.parquet", FAILURES_SCHEMA
    ).to_pylist()
    assert row["source"] == url and row["stage"] == "decode_frames"
    assert row["message"].startswith(f"{url}: ") and "soundnet-" not in row["message"], row


def test_the_default_task_size_follows_the_corpus_not_the_machine():
    from pipeline.plan import task_size

    assert [task_size(0, n) for n in (1, 59, 256, 2_000, 64_000, 2_000_000)] == [
        4, 4, 4, 32, 1000, 1000
    ]  # fmt: skip
    assert task_size(50, 2_000) == 50  # given: as given
    with pytest.raises(ValueError, match="videos-per-shard"):
        task_size(-1, 10)
