"""The files a pipeline run writes under --output, and how readers find them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

SHARDS_DIR = "shards"
LABELS_DIR = "labels"
INDEX_FILE = "index.parquet"
FAILURES_FILE = "failures.parquet"
RUN_FILE = "run.json"
_AFTER = sys.maxsize  # shard_order: names not of shard_name's form


def shard_name(task: int, part: int = 0) -> str:
    """Shard file `part` (from 0) of shard task `task`: a task's shards roll over by audio."""
    return f"shard-{task:06d}-{part:04d}.tar"


def shard_task_and_part(path: str | Path) -> tuple[int, int] | None:
    """(task, part) of a shard's file (tar, marker or rows: .../shard-TTTTTT-PPPP.*), or None
    for a name of another form."""
    match = re.fullmatch(r"shard-(\d+)-(\d+)", str(path).rsplit("/", 1)[-1].split(".", 1)[0])
    return None if match is None else (int(match[1]), int(match[2]))


def shard_order(path: str | Path) -> tuple[int, int, str]:
    """Sort key of shards' files: by task and part (past part 9999 or task 999999 the names sort
    out of that order), then names of other forms."""
    return (*(shard_task_and_part(path) or (_AFTER, _AFTER)), str(path))


def labels_path(output: str | Path, head: str) -> Path:
    return Path(output) / LABELS_DIR / f"{head}.txt"
