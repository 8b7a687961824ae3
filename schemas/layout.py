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


def read_labels(path: str | Path) -> list[str]:
    """Class names, one a line, in the order of the head's columns."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def format_labels(names: list[str]) -> str:
    bad = [n for n in names if "\n" in n or not n.strip()]
    if bad:
        raise ValueError(f"label names must be non-empty single lines: {bad[:3]}")
    return "".join(f"{n}\n" for n in names)
