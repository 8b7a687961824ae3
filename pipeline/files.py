"""The run's files, local or in an object store (gs://, s3://, ... through Beam's FileSystems).

Every file is written under a temporary name and renamed into place, so that readers see whole
files or none, and a run killed at any point leaves only whole files (and temporaries, which
`remove_temporaries` deletes). Local paths go through schemas.io, the project's one atomic
writer; object stores through FileSystems, whose rename is a copy then a delete.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import validate_table
from schemas.io import TMP_MARKER, write_bytes_atomic


def is_remote(path: str) -> bool:
    return "://" in path


def join(*parts: str) -> str:
    return FileSystems.join(*parts) if is_remote(parts[0]) else posixpath.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def listing(pattern: str) -> list[str]:
    """The paths matching a glob, sorted; temporaries left out."""
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in found if TMP_MARKER not in m.path)


def temporary_name(path: str) -> str:
    return f"{path}{TMP_MARKER}{uuid.uuid4().hex[:8]}"


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the whole file or nothing."""
    if not is_remote(path):
        write_bytes_atomic(path, data)
        return
    tmp = temporary_name(path)
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


@contextlib.contextmanager
def growing_file(path: str) -> Iterator[BinaryIO]:
    """A stream written as data arrives, under a temporary name renamed to `path` when the
    block ends without error (deleted otherwise)."""
    tmp = temporary_name(path)
    stream = FileSystems.create(tmp)
    try:
        yield stream
        stream.close()
        FileSystems.rename([tmp], [path])
    except BaseException:
        with contextlib.suppress(Exception):
            stream.close()
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise


def delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)


def read_bytes(path: str) -> bytes:
    with open_file(path) as f:
        return f.read()


def open_file(path: str) -> BinaryIO:
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def table_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def read_parquet(path: str, schema: pa.Schema) -> pa.Table:
    return validate_table(pq.read_table(io.BytesIO(read_bytes(path))), schema, what=path)


def remove_temporaries(output: str) -> None:
    """Delete what killed writers left behind under a local `output` (object stores' multipart
    debris is for their lifecycle rules)."""
    if is_remote(output) or not Path(output).is_dir():
        return
    for path in Path(output).rglob(f"*{TMP_MARKER}*"):
        with contextlib.suppress(OSError):
            path.unlink()
