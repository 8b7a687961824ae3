"""A teacher resolved once, on the driver (`resolve_teacher`: its weights file, digest and class
names, checked before any video is touched), and built from that on each worker
(`build_teacher`: no second lookup, no second digest)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.teachers.errors import TeacherError
from pipeline.teachers.labels import class_names
from pipeline.teachers.preprocess import torch_device
from pipeline.teachers.registry import get_arch
from pipeline.teachers.weights import (
    clean_state_dict,
    default_weights,
    exists,
    file_sha256,
    load_state_dict,
    what_to_get,
)
from schemas.sample import HeadInfo, SampleError, check_head_name


@dataclass(frozen=True)
class TeacherInfo:
    """Everything about one head's teacher but the network itself."""

    head: str  # the shard head name: "objects", "scenes", ...
    name: str  # registry name
    label_set: str
    labels: list[str]  # class names in output order
    weights_sha256: str
    weights_path: str

    def head_info(self) -> HeadInfo:
        """The per-head entry of a sample's JSON metadata."""
        return HeadInfo(
            teacher=self.name,
            weights_sha256=self.weights_sha256,
            label_set=self.label_set,
            num_classes=len(self.labels),
        )


def resolve_teacher(
    head: str, name: str, weights: str | None = None, labels: str | None = None
) -> TeacherInfo:
    """A teacher's weights file, digest and class names, without building the model."""
    try:
        check_head_name(head)
    except SampleError as e:
        raise TeacherError(str(e)) from None
    arch = get_arch(name)
    path = weights or default_weights(arch)
    if path is None:
        raise TeacherError(f"teacher {name!r} needs a weights file: {what_to_get(arch, head)}")
    if not exists(path):
        why = "does not exist" if weights else "is not there"
        raise TeacherError(f"weights file {path} {why}: {what_to_get(arch, head)}")
    names = class_names(arch, head, path, labels)
    return TeacherInfo(head, name, arch.label_set, names, file_sha256(path), path)


def usable_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names, if this machine has it (checked by the driver before
    any work, and again where a teacher is built: a worker may be another machine)."""
    device = torch_device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TeacherError(f"device {device} was asked for, but no CUDA device is usable here")
        if device.index is not None and device.index >= count:
            raise TeacherError(f"device {device} was asked for, but this machine has {count}")
    return device


def build_teacher(info: TeacherInfo, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The resolved teacher's network with its weights, in eval mode, on `device`, its
    convolutions channels-last (preprocess's layout): normalised float [N,3,224,224] -> logits
    [N,C]."""
    arch = get_arch(info.name)
    device = usable_device(device)
    state_dict = clean_state_dict(load_state_dict(info.weights_path, arch, info.head))
    model = arch.build()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        # torch lists every mismatched key; the start is enough to see the cause
        detail = str(e) if len(str(e)) <= 800 else str(e)[:800] + " ..."
        raise TeacherError(
            f"{info.weights_path} does not hold {arch.arch} weights with {arch.num_classes} "
            f"classes, as teacher {info.name!r} needs ({what_to_get(arch, info.head)}):\n{detail}"
        ) from None
    model.requires_grad_(False)
    # channels-last: oneDNN's and cuDNN's fast convolution layout, and the frames' own (NHWC);
    # EfficientNet-Lite0 here: 1.1-1.4x the default layout's frames/s, batch 1 to 16 (bench/teachers.py)
    return model.eval().to(device, memory_format=torch.channels_last)
