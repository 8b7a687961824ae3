"""argparse types of eval.run and eval.predict beyond runtime/arguments.py's numbers: a bad
option fails at once, naming itself, and not after minutes of features."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.arguments import whole_number


def jobs(text: str) -> int:
    """joblib's n_jobs: N workers, or -1 for every core (-2 all but one, ...); never 0."""
    value = whole_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 means no worker: give N >= 1, or -1 for every core")
    return value


def fold_numbers(text: str) -> list[int]:
    """'1,2' -> [1, 2]; spaces and a trailing comma are fine."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        folds = [int(item) for item in items]
    except ValueError:
        folds = []
    if not folds:
        raise argparse.ArgumentTypeError(f"{text!r}: not fold numbers, e.g. 1,2")
    return folds


def not_a_folder(out: Path) -> str | None:
    """Why `out` cannot become an output folder (it, or a folder above it, is a file), else
    None: found before the work whose results it would hold."""
    for folder in (out, *out.parents):
        if folder.exists():
            return None if folder.is_dir() else f"{folder} exists and is not a folder"
    return None
