"""The teacher on batches of frames as the pipeline runs it (channels-last) against the same
network in PyTorch's default layout, in the same run.

    .venv/bin/python bench/teachers.py [--teacher efficientnet_lite0] [--batch-size 16]

Frames/s of `teacher_probabilities` (preprocessing and softmax in) on one thread and on every
core, the two layouts alternating round by round (the median round is kept), and their
probabilities compared. Prints `channels_last_over_default=<ratio>` (one thread) last.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.teachers import (  # noqa: E402
    build_teacher,
    preprocess,
    resolve_teacher,
    teacher_probabilities,
)


def default_layout_probabilities(frames: list[np.ndarray], model: torch.nn.Module) -> np.ndarray:
    """The reference: the same preprocessing, then NCHW-contiguous tensors and weights."""
    with torch.inference_mode():
        return model(preprocess(np.stack(frames)).contiguous()).softmax(dim=1).numpy()


def frames_per_s(run, frames: list[np.ndarray], batches: int) -> float:
    began = time.perf_counter()
    for _ in range(batches):
        run(frames)
    return batches * len(frames) / (time.perf_counter() - began)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=3, help="per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    fast = build_teacher(resolve_teacher("objects", args.teacher), "cpu")  # the pipeline's
    default = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
    rng = np.random.default_rng(0)
    frames = list(rng.integers(0, 256, (args.batch_size, 224, 224, 3), np.uint8))
    runs = {
        "channels_last": lambda f: teacher_probabilities(f, fast, "cpu"),
        "default": lambda f: default_layout_probabilities(f, default),
    }
    difference = np.abs(np.stack(runs["channels_last"](frames)) - runs["default"](frames)).max()

    ratio = {}
    for threads in dict.fromkeys((1, os.cpu_count() or 1)):
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():  # alternating: a busy minute costs both alike
                rates[name].append(frames_per_s(run, frames, args.batches))
        median = {name: statistics.median(r) for name, r in rates.items()}
        ratio[threads] = median["channels_last"] / median["default"]
        print(f"{threads} thread(s), batch {args.batch_size}: channels-last "
              f"{median['channels_last']:.1f} frames/s, default layout "
              f"{median['default']:.1f} frames/s ({ratio[threads]:.2f}x)", flush=True)  # fmt: skip
    print(f"{args.teacher}: largest difference in a probability {difference:.1e}")
    print(f"channels_last_over_default={ratio[1]:.3f}")


if __name__ == "__main__":
    main()
