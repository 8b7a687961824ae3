"""What the network hears: per head, the top classes for each output step and for the whole clip.

    python -m eval.predict --checkpoint original:soundnet8 FILE... [--top 5] [--json]

FILE is any audio or video file ffmpeg can decode. Each output step of the head layer covers an
equal share of the input (5 s for a 20 s input, as the teachers' frames in training); a clip
shorter than the network's receptive field is tiled to it, never a crash. The whole-clip
distribution is the mean of the steps' softmax outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eval.audio import AudioError, load_audio, tile
from eval.features import set_threads
from schemas import SAMPLE_RATE
from trainer.checkpoint import CheckpointError
from trainer.model import scale_waveform
from trainer.pretrained import PretrainedError, load_pretrained


def _top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict[str, Any]]:
    values, index = probs.topk(min(k, probs.numel()))
    return [
        {"label": names[i], "prob": round(float(v), 4)}
        for v, i in zip(values.tolist(), index.tolist(), strict=True)
    ]


def predict_wave(
    model: nn.Module, labels: Mapping[str, Sequence[str]], wave: Any, top: int = 5
) -> dict[str, Any]:
    """Predictions for one mono 22050 Hz waveform (numpy, [-1, 1])."""
    duration = len(wave) / SAMPLE_RATE
    tiled = tile(wave, model.min_samples)
    with torch.inference_mode():
        log_probs = model(scale_waveform(torch.from_numpy(tiled))[None])
    span = len(tiled) / SAMPLE_RATE
    heads = {}
    for head, lp in log_probs.items():
        probs = lp[0].exp()  # [steps, classes]
        step = span / probs.shape[0]
        heads[head] = {
            "clip": _top(probs.mean(dim=0), labels[head], top),
            "steps": [
                {
                    "start_s": round(min(i * step, duration), 3),
                    "end_s": round(min((i + 1) * step, duration), 3),
                    "top": _top(p, labels[head], top),
                }
                for i, p in enumerate(probs)
            ],
        }
    return {
        "duration_s": round(duration, 3),
        "tiled_to_s": round(span, 3) if len(tiled) > len(wave) else None,
        "heads": heads,
    }


def format_text(path: str, result: Mapping[str, Any]) -> str:
    steps = len(next(iter(result["heads"].values()))["steps"])
    tiled = f", tiled to {result['tiled_to_s']:.1f} s" if result["tiled_to_s"] else ""
    lines = [f"{path} ({result['duration_s']:.1f} s{tiled}, {steps} step(s))"]
    for head, entry in result["heads"].items():

        def row(items: Sequence[Mapping[str, Any]]) -> str:
            return ", ".join(f"{t['label']} {t['prob']:.2f}" for t in items)

        lines.append(f"  {head:<8} whole clip    {row(entry['clip'])}")
        for s in entry["steps"]:
            when = f"{s['start_s']:6.1f}-{s['end_s']:.1f} s"
            lines.append(f"  {'':<8} {when:<13} {row(s['top'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m eval.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default="original:soundnet8")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    set_threads()
    try:
        model, labels = load_pretrained(args.checkpoint)
    except (PretrainedError, CheckpointError) as err:
        sys.exit(f"error: {err}")
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
