"""Writing a run's output, atomically and re-runnably, through Beam's FileSystems.

Layout under --output (SPEC.md section 3), plus the run's progress state:

    shards/shard-NNNNNN.tar          the samples, in input order
    index.parquet, failures.parquet  merged from _progress/ when the run ends
    labels/{head}.txt, run.json
    _progress/shard-NNNNNN.parquet   index rows of a finished shard (written last: the marker)
    _progress/shard-NNNNNN.failures.parquet
    _parts/shard-NNNNNN/{video_id}.tar  one finished video, until its shard is assembled

Every file is written to a temporary name and renamed into place, so a run killed at any point
leaves only whole files; a rerun skips finished shards and reuses finished videos' parts. An
engine that retries a task rewrites the same bytes to the same names.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import tarfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from apache_beam.io.filesystems import FileSystems

from schemas import (
    FAILURES_FILE,
    FAILURES_SCHEMA,
    INDEX_FILE,
    INDEX_SCHEMA,
    SHARDS_DIR,
    Sample,
    SampleMetadata,
    encode_sample,
    index_row,
    shard_name,
    table_from_rows,
    validate_table,
)
from schemas.io import TMP_MARKER

PROGRESS_DIR = "_progress"
PARTS_DIR = "_parts"
FAILURES_SUFFIX = ".failures.parquet"


def join(*parts: str) -> str:
    return FileSystems.join(*parts) if "://" in parts[0] else posixpath.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the whole file or nothing."""
    tmp = f"{path}{TMP_MARKER}{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def parquet_bytes(rows: Iterable[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table_from_rows(rows, schema), buf)
    return buf.getvalue()


def read_parquet(path: str, schema: pa.Schema) -> pa.Table:
    return validate_table(pq.read_table(io.BytesIO(read_bytes(path))), schema, what=path)


def part_path(output: str, shard_id: int, video_id: str) -> str:
    return join(output, PARTS_DIR, shard_name(shard_id).removesuffix(".tar"), f"{video_id}.tar")


def progress_path(output: str, shard_id: int, failures: bool = False) -> str:
    stem = shard_name(shard_id).removesuffix(".tar")
    return join(output, PROGRESS_DIR, stem + (FAILURES_SUFFIX if failures else ".parquet"))


def shard_done(output: str, shard_id: int) -> bool:
    return exists(progress_path(output, shard_id))


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """Samples -> an uncompressed tar (fixed mtime, so reruns give identical bytes)."""
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(encode_sample(sample))
    return buf.getvalue()


def write_part(output: str, shard_id: int, video_id: str, samples: list[Sample]) -> str:
    path = part_path(output, shard_id, video_id)
    write_atomic(path, tar_bytes(samples))
    return path


def assemble_shard(output: str, shard_id: int, parts: list[str], failures: list[dict]) -> dict:
    """Concatenate finished video parts into one shard, then record the shard as done.

    Order of writes: shard tar, failures rows, index rows (the done marker), then the parts are
    deleted. A kill between any two leaves a state the rerun completes.
    """
    name = shard_name(shard_id)
    rows: list[dict] = []
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as shard:
        for path in parts:
            with tarfile.open(fileobj=io.BytesIO(read_bytes(path)), mode="r") as part:
                for member in part.getmembers():
                    data = part.extractfile(member).read()
                    shard.addfile(member, io.BytesIO(data))
                    if member.name.endswith(".json"):
                        rows.append(index_row(SampleMetadata.from_json(data, where=path), name))
    if rows:
        write_atomic(join(output, SHARDS_DIR, name), out.getvalue())
    write_atomic(
        progress_path(output, shard_id, failures=True), parquet_bytes(failures, FAILURES_SCHEMA)
    )
    write_atomic(progress_path(output, shard_id), parquet_bytes(rows, INDEX_SCHEMA))
    if parts:
        FileSystems.delete(parts)
    return {"shard": name if rows else None, "samples": len(rows), "failures": len(failures)}


def merge_progress(output: str) -> tuple[pa.Table, pa.Table]:
    """All finished shards' index and failures rows -> index.parquet and failures.parquet.

    Index rows keep shard order and, within a shard, the tar's (input) order."""
    pattern = join(output, PROGRESS_DIR, "shard-*.parquet")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    index_paths = [p for p in paths if not p.endswith(FAILURES_SUFFIX) and TMP_MARKER not in p]
    index_tables = [read_parquet(p, INDEX_SCHEMA) for p in index_paths]
    failure_tables = [
        read_parquet(p.removesuffix(".parquet") + FAILURES_SUFFIX, FAILURES_SCHEMA)
        for p in index_paths
    ]
    index = pa.concat_tables([INDEX_SCHEMA.empty_table(), *index_tables])
    failures = pa.concat_tables([FAILURES_SCHEMA.empty_table(), *failure_tables])
    failures = failures.sort_by([("source", "ascending")])
    write_atomic(join(output, INDEX_FILE), _table_bytes(index))
    write_atomic(join(output, FAILURES_FILE), _table_bytes(failures))
    return index, failures


def remove_stale_files(output: str, shard_ids: Iterable[int] = ()) -> None:
    """Delete what killed writers left behind: temporary files, and the parts of `shard_ids`
    (finished shards whose parts a kill kept from being deleted). Not for object stores'
    multipart debris, which their lifecycle rules handle."""
    if "://" in output or not Path(output).is_dir():
        return
    root = Path(output)
    for path in root.rglob(f"*{TMP_MARKER}*"):
        with contextlib.suppress(OSError):
            path.unlink()
    for shard_id in shard_ids:
        folder = root / PARTS_DIR / shard_name(shard_id).removesuffix(".tar")
        for path in folder.glob("*.tar"):
            with contextlib.suppress(OSError):
                path.unlink()
    for folder in sorted((root / PARTS_DIR).glob("*"), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only empty ones: parts of unfinished shards stay
    with contextlib.suppress(OSError):
        (root / PARTS_DIR).rmdir()


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
