"""Beam's RunInference model handler for one resolved teacher: uint8 frames [224,224,3] in,
float32 probability rows [C] out. The pipeline's shard writer calls it directly (load_model once
per worker process, through Beam's `Shared`; run_inference per batch of frames that spans
videos); it also works inside `RunInference` like any PyTorch handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from pipeline.teachers.preprocess import teacher_probabilities, torch_device
from pipeline.teachers.resolve import TeacherInfo, build_teacher


class TeacherModelHandler(PytorchModelHandlerTensor):
    """Only the resolved TeacherInfo (names, path, digest) is pickled; the model is built in
    load_model() on the worker, from the path the driver resolved."""

    def __init__(
        self,
        info: TeacherInfo,
        device: str = "cpu",
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            device="GPU" if torch_device(device).type == "cuda" else "CPU",  # checked here
            inference_fn=teacher_probabilities,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            **kwargs,
        )
        self.info, self.teacher_device = info, device

    def load_model(self) -> torch.nn.Module:
        model = build_teacher(self.info, self.teacher_device)
        self._device = next(model.parameters()).device
        return model

    def probabilities(self, frames: Sequence[np.ndarray], model: torch.nn.Module) -> np.ndarray:
        """float32 [len(frames), C]: one softmax row per frame."""
        return np.stack(self.run_inference(frames, model))

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(np.asarray(frame).nbytes for frame in batch)

    def get_metrics_namespace(self) -> str:
        return f"SoundNet_teacher_{self.info.head}"
