"""Teachers' class names: ImageNet's from torchvision's offline metadata, Places365's from the
release's categories file (beside the weights, or given)."""

from __future__ import annotations

from pipeline import files
from pipeline.teachers.errors import TeacherError
from pipeline.teachers.registry import TeacherArch
from pipeline.teachers.weights import PLACES365_CATEGORIES, exists
from schemas.labels import LabelsError, imagenet_labels, parse_labels


def class_names(arch: TeacherArch, head: str, weights: str, labels: str | None) -> list[str]:
    if labels is None and arch.label_set == "imagenet1k":
        return imagenet_labels()
    if labels is None:
        labels = files.join(files.parent(weights), PLACES365_CATEGORIES)
        if not exists(labels):
            raise TeacherError(
                f"{PLACES365_CATEGORIES} is not beside {weights} (looked for {labels}): get it "
                "from the CSAIL Places365 release (https://github.com/CSAILVision/places365) "
                f"and put it there, or pass --{head}-labels=PATH"
            )
    try:
        with files.open_file(labels) as f:
            text = f.read().decode("utf-8")
    except (OSError, ValueError) as e:
        raise TeacherError(f"cannot read labels file {labels}: {e}") from None
    try:
        names = parse_labels(text, where=labels)
    except LabelsError as e:
        raise TeacherError(str(e)) from None
    if len(names) != arch.num_classes:
        raise TeacherError(
            f"{labels} names {len(names)} classes, but teacher {arch.name!r} has {arch.num_classes}"
        )
    return names
