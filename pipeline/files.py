"""The run's files, local or in an object store (gs://, s3://, ... through Beam's FileSystems).

Every file is written under a temporary name and renamed into place, so that readers see whole
files or none, and a run killed at any point leaves only whole files (and temporaries, which
`remove_temporaries` deletes). Local paths go through schemas.io, the project's one atomic
writer; object stores through FileSystems, whose rename is a copy then a delete.

Beam is imported on first use, and local files are read, probed and found without it: what only
reads local files (the teachers and their weights: bench/device.py on a machine that has no
Beam) runs where Beam is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import posixpath
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import validate_table
from schemas.io import TMP_MARKER, sync_file, write_bytes_atomic


def _filesystems() -> type:
    """Beam's FileSystems (its class methods do the work), imported on first use."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_remote(path: str) -> bool:
    return "://" in path


def join(*parts: str) -> str:
    return _filesystems().join(*parts) if is_remote(parts[0]) else posixpath.join(*parts)


def parent(path: str) -> str:
    """The folder `path` is in."""
    return _filesystems().split(path)[0] if is_remote(path) else posixpath.dirname(path)


def exists(path: str) -> bool:
    return _filesystems().exists(path) if is_remote(path) else os.path.exists(path)


def size_and_mtime(path: str) -> tuple[int, float]:
    """A file's bytes and last change (seconds since the epoch): what tells two versions apart."""
    if not is_remote(path):
        info = os.stat(path)
        return info.st_size, info.st_mtime
    meta = _filesystems().get_filesystem(path).metadata(path)
    return meta.size_in_bytes, meta.last_updated_in_seconds


# Beam compiles an escaped '[' ('[[]') into a regular expression that Python warns about
warnings.filterwarnings(
    "ignore", "Possible nested set", FutureWarning, module="apache_beam.io.filesystem"
)


def as_pattern(path: str) -> str:
    """`path` as a file pattern that matches only itself: a folder named 'clips [2016]' holds
    no character class."""
    return glob.escape(path)


def listing(folder: str, name_pattern: str) -> list[str]:
    """The files in `folder` whose names match `name_pattern` (a glob), sorted; temporaries
    left out. The folder's own name is literal."""
    if is_remote(folder):
        found = _filesystems().match([join(as_pattern(folder), name_pattern)])[0].metadata_list
        paths = [m.path for m in found]
    else:  # one directory read, not Beam's recursive walk with a stat of every file
        paths = glob.glob(os.path.join(as_pattern(folder), name_pattern))
    return sorted(p for p in paths if TMP_MARKER not in p)


def temporary_name(path: str) -> str:
    return f"{path}{TMP_MARKER}{uuid.uuid4().hex[:8]}"


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the whole file or nothing."""
    if not is_remote(path):
        write_bytes_atomic(path, data)
        return
    tmp = temporary_name(path)
    with _filesystems().create(tmp) as f:
        f.write(data)
    _filesystems().rename([tmp], [path])


@contextlib.contextmanager
def growing_file(path: str) -> Iterator[BinaryIO]:
    """A stream written as data arrives, under a temporary name renamed to `path` when the
    block ends without error (deleted otherwise)."""
    tmp = temporary_name(path)
    stream = _filesystems().create(tmp)
    try:
        yield stream
        stream.close()
        if not is_remote(path):  # an object store's object is whole once closed
            sync_file(tmp)
        _filesystems().rename([tmp], [path])
    except BaseException:
        with contextlib.suppress(Exception):
            stream.close()
        with contextlib.suppress(Exception):
            delete([tmp])
        raise


def delete(paths: list[str]) -> None:
    local = [p for p in paths if not is_remote(p)]
    for path in local:  # by name: Beam's local delete takes each path for a glob
        os.remove(path)
    if remote := [p for p in paths if is_remote(p)]:
        _filesystems().delete(remote)


def read_bytes(path: str) -> bytes:
    with open_file(path) as f:
        return f.read()


def open_file(path: str) -> BinaryIO:
    if not is_remote(path):
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    from apache_beam.io.filesystem import CompressionTypes

    return _filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


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
