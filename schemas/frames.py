"""How a reader pairs the shards' teacher frames with output steps of its own (SPEC.md section 3).

A sample's teacher frames sit at the centre of each whole `frame_interval` step of its segment
(`SampleMetadata.frame_interval()`). A reader whose outputs come in steps of its own (SoundNet-8's
conv8: one step per 5 s) trains each step on the frames inside it: when the interval divides the
step, `frames_per_step` frames a step, whose rows `step_rows` averages; an interval that does not
divide the step is refused, never silently misaligned.

    k = frames_per_step(2.5, step_samples=110250)   # 2: two 2.5 s frames in each 5 s step
    targets = step_rows(rows, k, steps=4)            # [8, C] -> [4, C], step j: rows 2j, 2j+1
"""

from __future__ import annotations

import numpy as np

from schemas.sample import SAMPLE_RATE, SampleError


class FrameIntervalError(SampleError):
    """The shards' frame interval does not divide a reader's output step."""


def frames_per_step(
    frame_interval_s: float,
    step_samples: int,
    where: str = "shards",
    sample_rate: int = SAMPLE_RATE,
) -> int:
    """How many teacher frames fall inside one output step of `step_samples` audio samples.

    Counted in whole samples, as the pipeline places its frames (a step of
    round(interval * rate) samples each), so that frame boundaries fall exactly on step ones."""
    frame_samples = round(frame_interval_s * sample_rate)
    count = step_samples // frame_samples if frame_samples > 0 else 0
    if count < 1 or count * frame_samples != step_samples:
        step_s = step_samples / sample_rate
        raise FrameIntervalError(
            f"{where}: frame interval {frame_interval_s:g} s does not divide the model's output "
            f"step of {step_s:g} s, so its steps cannot be trained on whole teacher frames; make "
            f"the shards with a --frame-interval that divides {step_s:g} s "
            f"({step_s:g}, {step_s / 2:g}, 1, ...)"
        )
    return count


def step_rows(rows: np.ndarray, frames_per_step: int, steps: int) -> np.ndarray:
    """Teacher rows [frames, C] -> one row per output step [steps, C] (float32): step j gets the
    mean of the rows of its frames j*k .. j*k+k-1. The caller checks there are enough frames."""
    rows = np.asarray(rows, dtype=np.float32)[: steps * frames_per_step]
    if frames_per_step == 1:  # the default interval: each step's one row as it is
        return rows
    return rows.reshape(steps, frames_per_step, -1).mean(axis=1)
