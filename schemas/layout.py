"""The files a pipeline run writes under --output, and how readers find them."""

from __future__ import annotations

from pathlib import Path

SHARDS_DIR = "shards"
LABELS_DIR = "labels"
INDEX_FILE = "index.parquet"
FAILURES_FILE = "failures.parquet"
RUN_FILE = "run.json"


def shard_name(task: int, part: int = 0) -> str:
    """Shard file `part` (from 0) of shard task `task`: a task's shards roll over by audio."""
    return f"shard-{task:06d}-{part:04d}.tar"


def labels_path(output: str | Path, head: str) -> Path:
    return Path(output) / LABELS_DIR / f"{head}.txt"
