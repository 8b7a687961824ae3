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
    meta: Path  # the CSV that lists the clips: what an error about them names

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips])

    @property
    def folds(self) -> np.ndarray:
        return np.array([c.fold for c in self.clips])

    def select_folds(self, folds: list[int] | None = None) -> Dataset:
        """The clips of `folds` (None: every fold), refused where leave-one-out cannot run:
        before the features, not as numpy's words after them."""
        if not self.clips:
            raise DatasetError(f"{self.meta}: no clips to evaluate")
        present = set(self.folds.tolist())
        missing = set(folds or ()) - present
        if missing:
            raise DatasetError(f"{self.meta}: no clips in fold(s) {sorted(missing)}")
        chosen = sorted(set(folds) if folds else present)
        if len(chosen) < 2:  # each fold is scored by an SVM trained on the others
            raise DatasetError(
                f"{self.meta}: folds {chosen}: leave-one-out needs at least two folds"
            )
        clips = [c for c in self.clips if c.fold in chosen]
        return Dataset(self.name, self.root, self.classes, clips, self.meta)


def _read_rows(meta: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each row, its cells stripped and every required cell present."""
    if not meta.is_file():
        raise DatasetError(f"{meta}: metadata file not found")
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would be read as part
    # of the first column's name; names and cells padded with spaces are taken as they read
    # (" dog" and "dog" are one class)
    rows = []
    with meta.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = set(required) - set(reader.fieldnames)
        if missing:
            raise DatasetError(f"{meta}: missing column(s) {sorted(missing)}")
        for raw in reader:
            # a short row's absent cells are None; cells past the header sit under key None
            row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):  # ",,," as spreadsheets write below the data
                continue
            empty = [name for name in required if not row[name]]
            if empty:
                raise DatasetError(
                    f"{meta}: line {reader.line_num}: no value for {', '.join(empty)}"
                )
            rows.append((reader.line_num, row))
    if not rows:
        raise DatasetError(f"{meta}: no rows")
    return rows


def _integer(row: dict[str, str], column: str, meta: Path, line: int) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise DatasetError(
            f"{meta}: line {line}: {column} {row[column]!r} is not an integer"
        ) from None


def _clips(
    root: Path, meta: Path, rows: list[tuple[int, dict[str, str]]], labels: list[int]
) -> list[Clip]:
    """The rows' clips; a file listed twice is refused (in two folds it is trained on and
    tested on: the score would be inflated)."""
    clips, seen = [], {}
    for (line, row), label in zip(rows, labels, strict=True):
        clip = Clip(_resolve(root, row["filename"], meta), label, _integer(row, "fold", meta, line))
        key = clip.path.resolve()
        if key in seen:
            first_line, first_fold = seen[key]
            raise DatasetError(
                f"{meta}: line {line}: {clip.path} is listed again (line {first_line}); "
                f"folds {first_fold} and {clip.fold}"
            )
        seen[key] = (line, clip.fold)
        clips.append(clip)
    return clips


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
        if "esc10" not in rows[0][1]:
            raise DatasetError(f"{meta}: no esc10 column to select the ESC-10 subset")
        rows = [(n, r) for n, r in rows if r["esc10"].lower() == "true"]
        if not rows:
            raise DatasetError(f"{meta}: no row has esc10=True: the ESC-10 subset is empty")
    targets = [_integer(r, "target", meta, n) for n, r in rows]
    names = {t: r["category"] for t, (_, r) in zip(targets, rows, strict=True)}
    numbers = sorted(names)  # the ESC-50 class numbering, so ESC-10 keeps its usual order
    index = {t: i for i, t in enumerate(numbers)}
    clips = _clips(root, meta, rows, [index[t] for t in targets])
    return Dataset(subset or "esc50", root, [names[t] for t in numbers], clips, meta)


def generic(root: str | Path, meta: str | Path | None = None) -> Dataset:
    """Any CSV with filename, fold and label columns; classes in sorted order."""
    root = Path(root)
    meta = Path(meta) if meta else root / "meta.csv"
    rows = _read_rows(meta, ("filename", "fold", "label"))
    classes = sorted({r["label"] for _, r in rows})
    index = {name: i for i, name in enumerate(classes)}
    clips = _clips(root, meta, rows, [index[r["label"]] for _, r in rows])
    name = meta.stem if meta.stem != "meta" else root.name
    return Dataset(name, root, classes, clips, meta)


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
