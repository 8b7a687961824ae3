"""Teachers' class names: ImageNet's from torchvision's offline metadata, Places365's from the
release's categories file (beside the weights, or given)."""

from __future__ import annotations

import re

from apache_beam.io.filesystems import FileSystems

from pipeline.teachers.errors import TeacherError
from pipeline.teachers.registry import TeacherArch
from pipeline.teachers.weights import PLACES365_CATEGORIES, exists, open_file

_PLACES_LINE = re.compile(r"^(/\S+)\s+(\d+)$")


def class_names(arch: TeacherArch, head: str, weights: str, labels: str | None) -> list[str]:
    if labels is None and arch.label_set == "imagenet1k":
        return imagenet_labels()
    if labels is None:
        labels = FileSystems.join(FileSystems.split(weights)[0], PLACES365_CATEGORIES)
        if not exists(labels):
            raise TeacherError(
                f"{PLACES365_CATEGORIES} is not beside {weights} (looked for {labels}): get it "
                "from the CSAIL Places365 release (https://github.com/CSAILVision/places365) "
                f"and put it there, or pass --{head}-labels=PATH"
            )
    try:
        with open_file(labels) as f:
            text = f.read().decode("utf-8")
    except (OSError, ValueError) as e:
        raise TeacherError(f"cannot read labels file {labels}: {e}") from None
    names = parse_labels(text, where=labels)
    if len(names) != arch.num_classes:
        raise TeacherError(
            f"{labels} names {len(names)} classes, but teacher {arch.name!r} has {arch.num_classes}"
        )
    return names


def parse_labels(text: str, where: str = "labels") -> list[str]:
    """Class names from categories_places365.txt ("/a/airfield 0") or one name a line.

    Places names drop the letter directory: "/a/apartment_building/outdoor 8" ->
    "apartment_building/outdoor".
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    matches = [_PLACES_LINE.match(line) for line in lines]
    if not lines or not all(matches):
        return lines
    indexed = {int(m.group(2)): m.group(1).split("/", 2)[2] for m in matches if m}
    if sorted(indexed) != list(range(len(lines))):
        raise TeacherError(f"{where}: class indices are not 0..{len(lines) - 1}, once each")
    return [indexed[i] for i in range(len(lines))]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard (ILSVRC synset) order, all distinct."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
