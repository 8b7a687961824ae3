"""--input forms: directory, glob, text list, CSV/Parquet manifest; deterministic shard plan."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.inputs import InputListError, plan_tasks, read_input_entries


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


def test_bad_input_specs_are_clear_errors(tmp_path):
    with pytest.raises(InputListError, match="does not exist"):
        read_input_entries(str(tmp_path / "nope"))
    bad = tmp_path / "m.csv"
    bad.write_text("path\nx.mp4\n")
    with pytest.raises(ValueError, match="missing column"):
        read_input_entries(str(bad))


def test_plan_assigns_stable_ids_and_shards_and_drops_duplicate_uris():
    entries = [(f"/v/{i}.mp4", None) for i in range(5)] + [("/v/0.mp4", None)]
    tasks = plan_tasks(entries, videos_per_shard=2)
    assert [t.shard_id for t in tasks] == [0, 0, 1, 1, 2]
    assert [t.order for t in tasks] == list(range(5))
    assert plan_tasks(entries, 2) == tasks
    with pytest.raises(InputListError, match="given to both"):
        plan_tasks([("/a.mp4", "same"), ("/b.mp4", "same")], 2)


def test_remote_inputs_are_copied_locally_and_unreachable_ones_are_read_failures(tmp_path):
    import functools
    import http.server
    import threading

    from pipeline.errors import InputError
    from pipeline.inputs import local_media

    (tmp_path / "clip.mp4").write_bytes(b"video bytes")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with local_media(f"{base}/clip.mp4") as path:
            assert path.endswith("clip.mp4")
            assert Path(path).read_bytes() == b"video bytes"
        assert not os.path.exists(path)
        missing = pytest.raises(InputError, match="missing.mp4: cannot read it")
        with missing as err, local_media(f"{base}/missing.mp4"):
            pass
        assert err.value.stage == "read"
    finally:
        server.shutdown()
        server.server_close()
    with local_media(str(tmp_path / "clip.mp4")) as path:
        assert path == str(tmp_path / "clip.mp4")
