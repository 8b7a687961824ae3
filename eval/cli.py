"""argparse types of eval.run and eval.predict: a bad option fails at once, naming itself, and
not after minutes of features (argparse prefixes each message with `argument --NAME:`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r}: not {what}") from None


def at_least_one(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def positive(text: str) -> float:
    value = _number(text, float)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def jobs(text: str) -> int:
    """joblib's n_jobs: N workers, or -1 for every core (-2 all but one, ...); never 0."""
    value = _number(text, int)
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
