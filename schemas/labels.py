"""Class names: the label sets every stage shares, and reading a labels file.

    names = read_labels("OUT/labels/objects.txt")          # a local path or a URL
    names = parse_labels(text, where=uri)                  # text already read by the caller
    names = imagenet_labels()                               # the 1000 ImageNet-1k names
    names = generic_labels("objects", 16)                   # objects_0000 .. objects_0015

A labels file has one name a line, in the order of its head's columns (what the pipeline writes
to OUT/labels/{head}.txt), or the CSAIL Places365 format ("/a/airfield 0", a name and its index).
"""

from __future__ import annotations

import re
from pathlib import Path

_PLACES_LINE = re.compile(r"^(/\S+)\s+(\d+)$")


class LabelsError(ValueError):
    """A labels file cannot be read or makes no sense; the message names it."""


IMAGENET1K_FILE = Path(__file__).with_name("imagenet1k.txt")


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k names in ILSVRC synset order: torchvision's weights metadata
    (`ResNet18_Weights.IMAGENET1K_V1.meta["categories"]`, tests check they agree), kept as a
    file because importing torchvision for them costs seconds at every start."""
    return IMAGENET1K_FILE.read_text(encoding="utf-8").splitlines()


def generic_labels(head: str, num_classes: int) -> list[str]:
    """Numbered names for a head whose class names nobody recorded."""
    return [f"{head}_{i:04d}" for i in range(num_classes)]


def parse_labels(text: str, where: str = "labels") -> list[str]:
    """Class names from one name a line, or from categories_places365.txt ("/a/airfield 0").

    Places names drop the letter directory: "/a/apartment_building/outdoor 8" ->
    "apartment_building/outdoor"; their indices must be 0..N-1, once each."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    matches = [_PLACES_LINE.match(line) for line in lines]
    if not lines or not all(matches):
        return lines
    for line, match in zip(lines, matches, strict=True):
        if match.group(1).count("/") < 2:  # no letter directory: not a name to cut out
            raise LabelsError(f"{where}: {line!r} is not a Places line ('/a/airfield 0')")
    indexed = {int(m.group(2)): m.group(1).split("/", 2)[2] for m in matches if m}
    if sorted(indexed) != list(range(len(lines))):
        raise LabelsError(f"{where}: class indices are not 0..{len(lines) - 1}, once each")
    return [indexed[i] for i in range(len(lines))]


def is_url(location: str) -> bool:
    """A location WebDataset opens (http(s)://, gs://, pipe:, ...) rather than a local path."""
    return "://" in location or location.startswith("pipe:")


def read_labels(location: str | Path) -> list[str]:
    """Class names from a labels file at a local path or a URL (opened as WebDataset opens
    shards: http(s)://, gs://, pipe:COMMAND, ...)."""
    text_location = str(location)
    if is_url(text_location):
        import webdataset as wds  # only URL readers pay for the import

        with wds.gopen(text_location) as stream:
            text = stream.read().decode("utf-8")
    else:
        text = Path(location).read_text(encoding="utf-8")
    return parse_labels(text, where=text_location)


def format_labels(names: list[str]) -> str:
    """A labels file's text: one name a line."""
    bad = [n for n in names if "\n" in n or not n.strip()]
    if bad:
        raise ValueError(f"label names must be non-empty single lines: {bad[:3]}")
    return "".join(f"{n}\n" for n in names)
