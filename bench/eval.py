"""The paper's ESC-10 per-layer table with the authors' SoundNet-8, timed.

    .venv/bin/python bench/eval.py [--esc10 ../shared/data/esc10] [--checkpoint original:soundnet8]

Features of every layer come from one pass per clip (decode, tile to 10 s, batched forward);
then a standardised linear SVM per layer (pooled protocol, C by inner CV, official folds).
Prints clips/s of feature extraction, the table and its time, an ESC-50 projection of the
default run (pool5), and last `extract_over_forward=<ratio>`: feature extraction's time per
clip over a bare forward pass of the same batches measured in this run (decoding, tiling and
copying out every layer are the overhead).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eval.datasets import load_dataset  # noqa: E402
from eval.features import DEFAULT_SECONDS, extract_features, resolve_layers, set_threads  # noqa: E402
from eval.svm import clip_samples, cross_validate  # noqa: E402
from models.pretrained import load_pretrained  # noqa: E402
from schemas import SAMPLE_RATE  # noqa: E402

ESC50_CLIPS = 2000
BATCH = 4


def bare_forward_seconds(model: torch.nn.Module, layers: list[str], clips: int) -> float:
    """A forward pass of random 10 s batches through the same layers: the compute floor."""
    wave = torch.randn(BATCH, int(DEFAULT_SECONDS * SAMPLE_RATE)) * 0.1 * 256
    with torch.inference_mode():
        model.features(wave, layers)  # warm-up
        start = time.perf_counter()
        for _ in range(-(-clips // BATCH)):
            model.features(wave, layers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--esc10", type=Path, default=REPO.parent / "shared" / "data" / "esc10")
    parser.add_argument("--checkpoint", default="original:soundnet8")
    args = parser.parse_args()
    set_threads()
    dataset = load_dataset("esc10", args.esc10)
    model, _ = load_pretrained(args.checkpoint)
    layers = resolve_layers(model, "all")
    paths = [c.path for c in dataset.clips]

    start = time.perf_counter()
    features = extract_features(model, paths, layers, batch_size=BATCH, progress=False)
    extract_s = time.perf_counter() - start
    print(f"features: {len(paths)} clips, {len(layers)} layers in one pass: {extract_s:.1f} s, "
          f"{len(paths) / extract_s:.1f} clips/s ({1000 * extract_s / len(paths):.1f} ms/clip)")  # fmt: skip

    table_start = time.perf_counter()
    svm_s = {}
    print(f"{'layer':>6}  accuracy  (folds)               svm s")
    for layer in layers:
        start = time.perf_counter()
        folds = cross_validate(clip_samples(features[layer], "pooled"), dataset.labels,
                               dataset.folds)  # fmt: skip
        svm_s[layer] = time.perf_counter() - start
        accs = " ".join(f"{f.accuracy:.3f}" for f in folds)
        print(
            f"{layer:>6}  {np.mean([f.accuracy for f in folds]):.4f}    ({accs})  {svm_s[layer]:.1f}"
        )
    table_s = time.perf_counter() - table_start + extract_s
    print(
        f"whole table: {table_s:.1f} s (features {extract_s:.1f} s, SVMs {table_s - extract_s:.1f} s)"
    )
    # ESC-50: 5x the clips; its SVM (5x samples, 5x classes) is not projected from ESC-10's
    print(f"ESC-50 feature extraction, projected: {extract_s * ESC50_CLIPS / len(paths):.0f} s")

    forward_s = bare_forward_seconds(model, layers, len(paths))
    print(f"bare forward: {len(paths) / forward_s:.1f} clips/s")
    print(f"extract_over_forward={extract_s / forward_s:.2f}")


if __name__ == "__main__":
    main()
