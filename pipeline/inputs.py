"""Turn `--input` into the run's ordered list of videos.

`--input` is a directory (searched recursively for media files), a glob, a text file of URIs
(one a line, `#` comments), or a CSV/Parquet manifest with a `uri` column and an optional `id`.
Local paths always; gs://, s3://, http(s):// through Beam's FileSystems when their extras are
installed. The order is deterministic, so that a rerun plans every video into the same shard task.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.errors import InputError, os_reason
from schemas import MANIFEST_SCHEMA, validate_table

MEDIA_EXTENSIONS = frozenset(
    [
        "3gp",
        "3g2",
        "asf",
        "avi",
        "flv",
        "m2ts",
        "m4v",
        "mkv",
        "mov",
        "mp4",
        "mpeg",
        "mpg",
        "mts",
        "mxf",
        "ogv",
        "ts",
        "vob",
        "webm",
        "wmv",
    ]
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
GLOB_CHARS = frozenset("*?[")
T = TypeVar("T")


class InputListError(ValueError):
    """`--input` itself cannot be read (as opposed to one bad video, which is a failures row)."""


def is_media_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in MEDIA_EXTENSIONS if "." in name else False


def _list_directory(root: str) -> list[str]:
    if files.is_remote(root):
        pattern = files.as_pattern(root.rstrip("/")) + "/**"
        return sorted(
            m.path for m in FileSystems.match([pattern])[0].metadata_list if is_media_name(m.path)
        )
    found, seen = [], set()
    # linked folders are followed (a corpus of links into several disks), each folder once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if os.path.realpath(dirpath) in seen:  # a link back up the tree, or a second link
            dirnames[:] = []
            continue
        seen.add(os.path.realpath(dirpath))
        dirnames.sort()
        # A directory named like a video is listed too, so it becomes a failures row, not a
        # silent omission.
        found += [os.path.join(dirpath, d) for d in dirnames if is_media_name(d)]
        found += [os.path.join(dirpath, f) for f in filenames if is_media_name(f)]
        dirnames[:] = [d for d in dirnames if not is_media_name(d) and not d.startswith(".")]
    return sorted(os.path.abspath(p) for p in found)


def _glob(pattern: str) -> list[str]:
    matches = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path if files.is_remote(m.path) else os.path.abspath(m.path) for m in matches)


def _resolve(entry: str, base: str) -> str:
    """List entries may be relative to the list file's directory."""
    if files.is_remote(entry) or os.path.isabs(entry) or files.is_remote(base):
        return entry
    return os.path.abspath(os.path.join(os.path.dirname(base), entry))


def _read_text_list(path: str) -> list[tuple[str, str | None]]:
    try:
        with FileSystems.open(path) as f:
            raw = f.read()
    except OSError as err:  # a folder named x.txt, no permission, ...
        raise InputListError(f"{path}: cannot read the list: {os_reason(err)}") from err
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark is no path
    except UnicodeDecodeError as err:
        raise InputListError(
            f"{path}: the list is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
            f"{err.start}): save it as UTF-8"
        ) from err
    entries = [line.strip() for line in text.splitlines()]
    return [(_resolve(e, path), None) for e in entries if e and not e.startswith("#")]


def _read_manifest(path: str) -> list[tuple[str, str | None]]:
    try:
        with FileSystems.open(path) as f:
            if path.lower().endswith(".parquet"):
                table = pq.read_table(f)
            else:  # ids as written ('007' is not 7), and an empty cell is empty, not null
                types = {"uri": pa.string(), "id": pa.string()}
                convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
                table = pacsv.read_csv(f, convert_options=convert)
    except Exception as err:
        raise InputListError(f"{path}: cannot read the manifest: {err}") from err
    table = validate_table(table, MANIFEST_SCHEMA, what=path)
    ids = table.column("id").to_pylist()
    uris = [u.strip() for u in table.column("uri").to_pylist()]
    if "" in uris:
        raise InputListError(f"{path}: row {uris.index('') + 1} has an empty uri")
    return [(_resolve(u, path), i or None) for u, i in zip(uris, ids, strict=True)]


def read_input_entries(spec: str) -> list[tuple[str, str | None]]:
    """(uri, explicit id or None) for every input named by `spec`, in a deterministic order."""
    try:
        return _entries(spec)
    except OSError as err:  # what the forms below do not word themselves
        raise InputListError(f"--input {spec!r}: cannot be read: {os_reason(err)}") from err


def _entries(spec: str) -> list[tuple[str, str | None]]:
    lower = spec.lower()
    # a path that exists is itself, even when its name has brackets ('Title [id].mp4')
    exists = files.exists(spec)
    is_glob = not exists and any(c in spec for c in GLOB_CHARS)
    if not files.is_remote(spec) and not is_glob and not exists:
        raise InputListError(f"--input {spec!r} does not exist")
    if is_glob:
        entries = [(u, None) for u in _glob(spec)]
    elif lower.endswith((".csv", ".parquet")):
        entries = _read_manifest(spec)
    elif os.path.splitext(lower)[1] in LIST_EXTENSIONS:
        entries = _read_text_list(spec)
    elif (not files.is_remote(spec) and os.path.isdir(spec)) or spec.endswith("/"):
        entries = [(u, None) for u in _list_directory(spec)]
    elif is_media_name(spec):
        entries = [(spec if files.is_remote(spec) else os.path.abspath(spec), None)]
    else:
        raise InputListError(
            f"--input {spec!r}: not a directory, glob, .txt list, CSV/Parquet manifest or media file"
        )
    if not entries and is_glob:
        raise InputListError(
            f"--input {spec!r}: the glob matches no file ('[' starts a set of characters: "
            "write '[[]' for a bracket in a name)"
        )
    if not entries:
        kinds = ", ".join(f".{e}" for e in sorted(MEDIA_EXTENSIONS)[:6])
        raise InputListError(
            f"--input {spec!r}: no media in it (looked for files named {kinds}, ...)"
        )
    return entries


# A local copy's name at most: well under the 255 bytes of common file systems
COPY_NAME_BYTES = 120
_EXTENSION_BYTES = 16  # a longer "extension" is part of a name, not a format's


def copy_name(uri: str) -> str:
    """The file name of a remote input's local copy: the last part of its path, without an
    http(s) query (a pre-signed URL's runs past 255 bytes), cut short but for its extension
    (FFmpeg guesses some formats by it). In gs://, s3://, ... a '?' is part of the name."""
    path = urllib.parse.urlsplit(uri).path if uri.startswith(("http://", "https://")) else uri
    name = posixpath.basename(path.rstrip("/"))
    name = "video" if name in ("", ".", "..") else name  # '..' would be the folder above
    stem, ext = os.path.splitext(name)
    if len(ext.encode()) > _EXTENSION_BYTES:
        stem, ext = name, ""
    room = COPY_NAME_BYTES - len(ext.encode())
    stem = stem.encode()[:room].decode("utf-8", "ignore")  # never half a character
    return f"{stem or 'video'}{ext}"


def name_the_input(err: InputError, local: str, uri: str) -> None:
    """Make `err` say which input failed, not which temporary copy of it."""
    if local != uri:
        err.message = err.message.replace(local, uri)
        err.args = (err.message,)


def frames_naming_input(frames: Iterable[T], local: str, uri: str) -> Iterator[T]:
    """`frames` as they come; a failure while decoding them names `uri`, not `local`."""
    try:
        yield from frames
    except InputError as err:
        name_the_input(err, local, uri)
        raise


@contextlib.contextmanager
def local_media(uri: str, timeout_s: float = 600) -> Iterator[str]:
    """A local path for `uri`: the path itself, or a temporary copy of a remote object
    (gs://, s3://, ... through Beam's FileSystems; http(s):// through urllib), deleted after."""
    if not files.is_remote(uri) or uri.startswith("file://"):
        yield uri.removeprefix("file://")
        return
    with tempfile.TemporaryDirectory(prefix="soundnet-") as tmp:
        local = os.path.join(tmp, copy_name(uri))
        try:
            if uri.startswith(("http://", "https://")):
                with (
                    urllib.request.urlopen(uri, timeout=timeout_s) as src,
                    open(local, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                with FileSystems.open(uri) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except Exception as err:  # noqa: BLE001 - any transport error is this input's failure
            raise InputError("read", f"{uri}: cannot read it: {type(err).__name__}: {err}") from err
        try:
            yield local
        except InputError as err:
            name_the_input(err, local, uri)
            raise
