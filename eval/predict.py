"""What the network hears: per head, the top classes for each output step and for the whole clip.

    python -m eval.predict --checkpoint original:soundnet8 FILE... [--top 5] [--json]

FILE is any audio or video file ffmpeg can decode. The audio is cut into segments of the
network's training crop (20 s: 4 of its output steps), each step standing for the audio the
trainer paired with it (the model's `step_samples`, 5 s for SoundNet-8 and SoundNet-5: the
rows of the teacher frames inside it). A last segment shorter than the crop, or a whole short
clip, is tiled to the crop, never a crash, and its steps that begin past the end are not shown;
fed at another length, or padded, the network does worse: the last frame before the head is
then computed mostly from padding and swamps a step's scores. The whole-clip distribution is
the mean of the steps' softmax outputs (of all of a segment's for a clip within one segment).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from eval.audio import AudioError, load_audio, tile
from eval.features import set_threads
from models.checkpoint import CheckpointError
from models.layers import scale_waveform
from models.pretrained import load_pretrained
from models.soundnet import TRAINING_CROP_SAMPLES
from models.weights import PretrainedError
from runtime import keep_freed_memory
from runtime.arguments import at_least_one
from schemas import SAMPLE_RATE

BATCH = 8  # segments per forward pass: bounded memory for long videos


def _top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict[str, Any]]:
    values, index = probs.topk(min(k, probs.numel()))
    return [
        {"label": names[i], "prob": round(float(v), 4)}
        for v, i in zip(values.tolist(), index.tolist(), strict=True)
    ]


def predict_wave(
    model: nn.Module, labels: Mapping[str, Sequence[str]], wave: np.ndarray, top: int = 5
) -> dict[str, Any]:
    """Predictions for one mono 22050 Hz waveform (float in [-1, 1])."""
    duration = len(wave) / SAMPLE_RATE
    crop, step_s = TRAINING_CROP_SAMPLES, model.step_samples / SAMPLE_RATE
    pieces = [tile(wave[s : s + crop], crop) for s in range(0, len(wave), crop)]
    probs: dict[str, list[torch.Tensor]] = {head: [] for head in model.head_sizes}
    with torch.inference_mode():
        for i in range(0, len(pieces), BATCH):
            batch = scale_waveform(torch.from_numpy(np.stack(pieces[i : i + BATCH])))
            for head, log_probs in model(batch).items():
                probs[head].extend(log_probs.exp())  # [steps, classes] per segment
    heads = {}
    for head, per_segment in probs.items():
        steps = [
            (k * crop / SAMPLE_RATE + j * step_s, p)
            for k, segment in enumerate(per_segment)
            for j, p in enumerate(segment)
        ]
        shown = [(start, p) for start, p in steps if start < duration]
        # a clip within one segment is all of its (tiled) steps; a longer one, its own steps
        clip = torch.stack([p for _, p in (steps if len(per_segment) == 1 else shown)])
        heads[head] = {
            "clip": _top(clip.mean(dim=0), labels[head], top),
            "steps": [
                {
                    "start_s": round(start, 3),
                    "end_s": round(min(start + step_s, duration), 3),
                    "top": _top(p, labels[head], top),
                }
                for start, p in shown
            ],
        }
    return {"duration_s": round(duration, 3), "tiled": len(wave) % crop != 0, "heads": heads}


def _row(items: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{t['label']} {t['prob']:.2f}" for t in items)


def format_text(path: str, result: Mapping[str, Any]) -> str:
    steps = len(next(iter(result["heads"].values()))["steps"])
    tiled = ", tiled" if result["tiled"] else ""
    lines = [f"{path} ({result['duration_s']:.1f} s{tiled}, {steps} step(s))"]
    for head, entry in result["heads"].items():
        lines.append(f"  {head:<8} whole clip    {_row(entry['clip'])}")
        for s in entry["steps"]:
            when = f"{s['start_s']:6.1f}-{s['end_s']:.1f} s"
            lines.append(f"  {'':<8} {when:<13} {_row(s['top'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # first: each batch's activations reused, not faulted in afresh
    p = argparse.ArgumentParser(
        prog="python -m eval.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default="original:soundnet8")
    p.add_argument("--top", type=at_least_one, default=5, help="classes shown per step")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    set_threads()
    try:
        model, labels = load_pretrained(args.checkpoint)
    except (PretrainedError, CheckpointError) as err:
        sys.exit(f"error: {err}")
    if not getattr(model, "head_sizes", None):
        sys.exit(f"error: {args.checkpoint} has no class heads to predict (an autoencoder?)")
    results, failed = [], 0
    for path in args.files:
        try:
            result = {"file": path, **predict_wave(model, labels, load_audio(path), args.top)}
        except AudioError as err:  # one bad file never stops the others
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            results.append({"file": path, "error": str(err)})
            continue
        results.append(result)
        if not args.json:
            print(format_text(path, result), flush=True)
    if args.json:
        json.dump({"checkpoint": args.checkpoint, "results": results}, sys.stdout, indent=2)
        print()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
