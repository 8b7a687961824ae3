"""The files a pipeline run writes under --output, and how readers find them."""

from __future__ import annotations

from pathlib import Path

SHARDS_DIR = "shards"
LABELS_DIR = "labels"
INDEX_FILE = "index.parquet"
FAILURES_FILE = "failures.parquet"
RUN_FILE = "run.json"


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.tar"


def labels_path(output: str | Path, head: str) -> Path:
    return Path(output) / LABELS_DIR / f"{head}.txt"
