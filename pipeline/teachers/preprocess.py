"""What the teachers see and say: uint8 frames -> ImageNet-normalised tensors -> softmax rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.teachers.errors import TeacherError

IMAGE_SIZE = 224
# One normalisation for every teacher: all of them were trained with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_device(device: str | torch.device) -> torch.device:
    """A torch device from "cpu", "cuda", "cuda:1", or Beam's spelling "GPU"."""
    if isinstance(device, str) and device.lower() == "gpu":
        device = "cuda"
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise TeacherError(f"unknown device {device!r} (use cpu, cuda or cuda:N): {e}") from None


def preprocess(frames: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 RGB frames [N,224,224,3] (resized and centre-cropped) -> normalised [N,3,224,224].

    Frames go to `device` while still uint8, so a GPU receives a quarter of the bytes. The
    result stays channels-last in memory, as the frames come (no transposing copy), which is
    the layout the teachers' convolutions run in (build_teacher).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (224, 224, 3):
        raise ValueError(
            f"teacher frames must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] RGB, "
            f"got {frames.dtype} {list(frames.shape)}"
        )
    # a decoder's read-only buffer would make torch warn; copy only then
    x = torch.from_numpy(np.require(frames, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def teacher_probabilities(
    batch: Sequence[np.ndarray],
    model: torch.nn.Module,
    device: str | torch.device,
    inference_args: Mapping[str, Any] | None = None,
    model_id: str | None = None,
) -> list[np.ndarray]:
    """RunInference's inference_fn: a batch of uint8 frames -> one float32 softmax row each."""
    x = preprocess(np.stack(batch), device)
    with torch.inference_mode():
        probs = model(x, **(inference_args or {})).float().softmax(dim=1).cpu().numpy()
    return [row.copy() for row in probs]  # independent rows: downstream may hold any of them
