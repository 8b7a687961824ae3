"""An ESC-50-sized stand-in in ESC-50's own layout, for timing and smoke-testing eval.run at full
scale where the real ESC-50 is not at hand.

    .venv/bin/python bench/esc50_standin.py OUT [--esc10 ../shared/data/esc10]
    time .venv/bin/python -m eval.run --checkpoint original:soundnet8 --dataset esc50 --root OUT

The 400 ESC-10 clips, each played at five speeds (0.8x to 1.25x, pitch moving with speed), make
2000 five-second 44.1 kHz mono WAV files in 50 classes ("dog@0.80x", ...) with the clips' own
folds, and meta/esc50.csv with ESC-50's columns. Neighbouring speeds of one sound are hard to
tell apart, so accuracies here are not ESC-50's; the clip count, length, rate and layout are.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from eval.audio import load_audio  # noqa: E402
from eval.datasets import load_dataset  # noqa: E402

SPEEDS = (0.8, 0.9, 1.0, 1.12, 1.25)
RATE = 44100
SECONDS = 5.0


def at_speed(wave: np.ndarray, speed: float) -> np.ndarray:
    """Play `wave` `speed` times faster (linear interpolation), cut or zero-padded to 5 s."""
    positions = np.arange(0, len(wave) - 1, speed)
    played = np.interp(positions, np.arange(len(wave)), wave)
    out = np.zeros(int(SECONDS * RATE), np.float32)
    out[: min(len(out), len(played))] = played[: len(out)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--esc10", type=Path, default=REPO.parent / "shared" / "data" / "esc10")
    args = parser.parse_args()
    esc10 = load_dataset("esc10", args.esc10)
    (args.out / "audio").mkdir(parents=True, exist_ok=True)
    (args.out / "meta").mkdir(exist_ok=True)
    rows = []
    for clip in esc10.clips:
        wave = load_audio(clip.path, RATE)
        for k, speed in enumerate(SPEEDS):
            target = clip.label * len(SPEEDS) + k
            # ESC-50's FOLD-SOURCE-TAKE-TARGET.wav, with the new target
            name = f"{clip.path.stem.rsplit('-', 1)[0]}-{target}.wav"
            sf.write(args.out / "audio" / name, at_speed(wave, speed), RATE, subtype="PCM_16")
            category = f"{esc10.classes[clip.label]}@{speed:.2f}x"
            rows.append([name, clip.fold, target, category, "False", clip.path.stem, "A"])
    with (args.out / "meta" / "esc50.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    print(f"{len(rows)} clips, {len(SPEEDS) * len(esc10.classes)} classes in {args.out}")


if __name__ == "__main__":
    main()
