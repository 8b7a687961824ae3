"""Labelled clip collections with official folds: ESC-50 (and its ESC-10 subset), the ESC-10 copy
in ../shared/data/esc10, and a generic CSV layout (DCASE 2013 scenes and the like).

    ESC-50     ROOT/audio/*.wav + ROOT/meta/esc50.csv (filename, fold, target, category, esc10)
    ESC-10     the same with meta/esc10.csv; a listed `x.wav` may be stored as `x.flac`
    generic    ROOT/meta.csv (or --meta) with columns filename, fold, label; files relative to
               ROOT or ROOT/audio
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
DATASETS = ("esc50", "esc10", "generic")


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int  # index into Dataset.classes
    fold: int


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    classes: list[str]
    clips: list[Clip]

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips])

    @property
    def folds(self) -> np.ndarray:
        return np.array([c.fold for c in self.clips])

    def select_folds(self, folds: list[int]) -> Dataset:
        missing = set(folds) - set(self.folds.tolist())
        if missing:
            raise DatasetError(f"{self.root}: no clips in fold(s) {sorted(missing)}")
        if len(set(folds)) < 2:  # each fold is scored by an SVM trained on the others
            raise DatasetError(
                f"{self.root}: folds {sorted(set(folds))}: leave-one-out needs at least two folds"
            )
        clips = [c for c in self.clips if c.fold in folds]
        return Dataset(self.name, self.root, self.classes, clips)


def _read_rows(meta: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not meta.is_file():
        raise DatasetError(f"{meta}: metadata file not found")
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would be read as part
    # of the first column's name; names padded with spaces are taken as they read, too
    with meta.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = set(required) - set(reader.fieldnames)
        if missing:
            raise DatasetError(f"{meta}: missing column(s) {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{meta}: no rows")
    return rows


def _resolve(root: Path, filename: str, meta: Path) -> Path:
    """The file a row names, under ROOT/audio or ROOT, also with another audio suffix."""
    for folder in (root / "audio", root):
        path = folder / filename
        if path.is_file():
            return path
        for suffix in AUDIO_SUFFIXES:
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    raise DatasetError(f"{meta}: listed file {filename!r} not found under {root}/audio or {root}")


def _fold(value: str, meta: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{meta}: fold {value!r} is not an integer") from None


def esc50(root: str | Path, subset: str | None = None) -> Dataset:
    """ESC-50 (official 5 folds); `subset="esc10"` keeps the ESC-10 clips."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file() and (root / "meta" / "esc10.csv").is_file():
        meta, subset = root / "meta" / "esc10.csv", "esc10"  # the ESC-10-only copy
    if subset not in (None, "esc10"):
        raise DatasetError(f"unknown ESC-50 subset {subset!r}; the one subset is esc10")
    rows = _read_rows(meta, ("filename", "fold", "target", "category"))
    if subset == "esc10":
        if "esc10" not in rows[0]:
            raise DatasetError(f"{meta}: no esc10 column to select the ESC-10 subset")
        rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
    names = {int(r["target"]): r["category"] for r in rows}
    targets = sorted(names)  # the ESC-50 class numbering, so ESC-10 keeps its usual order
    index = {t: i for i, t in enumerate(targets)}
    clips = [
        Clip(_resolve(root, r["filename"], meta), index[int(r["target"])], _fold(r["fold"], meta))
        for r in rows
    ]
    return Dataset(subset or "esc50", root, [names[t] for t in targets], clips)


def generic(root: str | Path, meta: str | Path | None = None) -> Dataset:
    """Any CSV with filename, fold and label columns; classes in sorted order."""
    root = Path(root)
    meta = Path(meta) if meta else root / "meta.csv"
    rows = _read_rows(meta, ("filename", "fold", "label"))
    classes = sorted({r["label"] for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    clips = [
        Clip(_resolve(root, r["filename"], meta), index[r["label"]], _fold(r["fold"], meta))
        for r in rows
    ]
    return Dataset(meta.stem if meta.stem != "meta" else root.name, root, classes, clips)


def load_dataset(
    kind: str, root: str | Path, subset: str | None = None, meta: str | Path | None = None
) -> Dataset:
    if kind == "esc50":
        return esc50(root, subset)
    if kind == "esc10":
        return esc50(root, "esc10")
    if kind == "generic":
        return generic(root, meta)
    raise DatasetError(f"unknown dataset {kind!r}; choose from {DATASETS}")
