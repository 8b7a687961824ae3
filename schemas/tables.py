"""Pyarrow schemas of every table the project reads or writes, and their validation.

The pipeline writes `index.parquet` and `failures.parquet` through these; whoever reads them
(the demo's report, users' own queries) reads through them too. An input manifest (CSV or Parquet) is checked against MANIFEST_SCHEMA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Input manifest: one row per video; `id` optional (derived from the URI when missing).
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=True),
    ]
)

# index.parquet: one row per sample written to a shard.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # e.g. shard-000000-0000.tar
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
    ]
)

# failures.parquet: one row per input that produced nothing.
FAILURES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)

# A pipeline run's plan (OUT/_plan/): every input video and the shard task it belongs to. One
# row group per task, so that a worker reads its own videos and nothing else.
PLAN_SCHEMA = pa.schema(
    [
        pa.field("task", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # the video's place in its task
        pa.field("uri", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
    ]
)

# The plan's shard tasks, one row each: what the pipeline's workers are handed.
TASKS_SCHEMA = pa.schema(
    [
        pa.field("task", pa.int32(), nullable=False),
        pa.field("plan_file", pa.string(), nullable=False),  # in _plan/: PLAN_SCHEMA rows
        pa.field("row_group", pa.int32(), nullable=False),  # the task's row group in it
        pa.field("videos", pa.int32(), nullable=False),
    ]
)

# The stages an input can fail in, in pipeline order (the `stage` column of failures.parquet).
STAGES = ("read", "probe", "decode_audio", "decode_frames", "teacher", "segment", "write")


def index_row(meta, shard: str) -> dict:
    """The index.parquet row of one sample (`meta`: its schemas.SampleMetadata) in `shard`."""
    return {
        "key": meta.key,
        "shard": shard,
        "video_id": meta.video_id,
        "source": meta.source,
        "segment": meta.segment,
        "start_s": meta.start_s,
        "duration_s": meta.duration_s,
        "num_frames": len(meta.frame_times_s),
    }


class SchemaError(ValueError):
    """A table or record does not match its schema; the message names the file and the problem."""


def table_from_rows(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly `schema`'s columns from dict rows (extra keys are an error)."""
    rows = list(rows)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise SchemaError(f"row {i} has unknown columns {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def validate_table(table: pa.Table, schema: pa.Schema, what: str = "table") -> pa.Table:
    """Check columns, types and nulls against `schema`; return the table cast to it."""
    missing = [n for n in schema.names if n not in table.column_names]
    required_missing = [n for n in missing if not schema.field(n).nullable]
    if required_missing:
        raise SchemaError(f"{what}: missing column(s) {required_missing}")
    for name in missing:  # optional columns may be absent: add them as nulls
        table = table.append_column(
            schema.field(name), pa.nulls(len(table), schema.field(name).type)
        )
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"{what}: column {field.name!r} has empty values")
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise SchemaError(f"{what}: column types do not match the schema: {err}") from err
    if "stage" in schema.names:
        bad = set(table.column("stage").to_pylist()) - set(STAGES)
        if bad:
            raise SchemaError(f"{what}: unknown stage(s) {sorted(bad)}; expected one of {STAGES}")
    return table


def write_table(table: pa.Table, path: str | Path, schema: pa.Schema) -> None:
    """Validate and write a Parquet file atomically (write to a temporary name, then rename)."""
    from schemas.io import atomic_path

    table = validate_table(table, schema, what=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read and validate a Parquet file written through one of these schemas."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise SchemaError(f"{path}: not a readable Parquet file: {err}") from err
    return validate_table(table, schema, what=str(path))
