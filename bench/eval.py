"""The paper's ESC-10 per-layer table with the authors' SoundNet-8, timed.

    .venv/bin/python bench/eval.py [--esc10 ../shared/data/esc10] [--checkpoint original:soundnet8]

Features of every layer come from one pass per clip (decode, tile to 10 s, batched forward);
then a standardised linear SVM per layer (pooled protocol, C by inner CV, official folds).
Prints clips/s of feature extraction, the table and its time, an ESC-50 projection of the
default run (pool5), and last `extract_over_forward=<ratio>`: feature extraction's time per
clip over a bare forward pass of as many batches (decoding, tiling and copying out every layer
are the overhead). The two alternate, ROUNDS times (a share of the clips extracted, then as many
clips' bare forward), so that both see the same machine, and the ratio is the median of the
rounds' (a slow spell of the shared machine moves one round, not the result).
"""

from __future__ import annotations

import argparse
import statistics
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
from runtime import keep_freed_memory  # noqa: E402
from schemas import SAMPLE_RATE  # noqa: E402

ESC50_CLIPS = 2000
BATCH = 4
ROUNDS = 7


def bare_forward_seconds(model: torch.nn.Module, layers: list[str], clips: int) -> float:
    """A forward pass of random 10 s batches through the same layers: the compute floor."""
    wave = torch.randn(BATCH, int(DEFAULT_SECONDS * SAMPLE_RATE)) * 0.1 * 256
    with torch.inference_mode():
        model.features(wave, layers)  # warm-up
        start = time.perf_counter()
        for _ in range(-(-clips // BATCH)):
            model.features(wave, layers)
    return time.perf_counter() - start


def timed_rounds(
    model: torch.nn.Module, paths: list[Path], layers: list[str], rounds: int = ROUNDS
) -> tuple[dict[str, list[np.ndarray]], float, float, list[float]]:
    """Every clip's features, extracted in `rounds` shares of whole batches, each share followed
    by a bare forward of as many clips: (features, extraction s, forward s, each round's ratio)."""
    share = BATCH * -(-len(paths) // (BATCH * rounds))
    features: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    extract_s, forward_s, ratios = 0.0, 0.0, []
    for first in range(0, len(paths), share):
        chunk = paths[first : first + share]
        start = time.perf_counter()
        got = extract_features(model, chunk, layers, batch_size=BATCH, progress=False)
        round_extract_s = time.perf_counter() - start
        round_forward_s = bare_forward_seconds(model, layers, len(chunk))
        for layer in layers:
            features[layer].extend(got[layer])
        extract_s, forward_s = extract_s + round_extract_s, forward_s + round_forward_s
        ratios.append(round_extract_s / round_forward_s)
    return features, extract_s, forward_s, ratios


def main() -> None:
    keep_freed_memory()  # as eval.run does: each batch's activations reused, not faulted in afresh
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--esc10", type=Path, default=REPO.parent / "shared" / "data" / "esc10")
    parser.add_argument("--checkpoint", default="original:soundnet8")
    args = parser.parse_args()
    set_threads()
    dataset = load_dataset("esc10", args.esc10)
    model, _ = load_pretrained(args.checkpoint)
    layers = resolve_layers(model, "all")
    paths = [c.path for c in dataset.clips]

    features, extract_s, forward_s, ratios = timed_rounds(model, paths, layers)
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

    print(f"bare forward: {len(paths) / forward_s:.1f} clips/s")
    print(f"extract over forward: {extract_s / forward_s:.2f} of the totals; {len(ratios)} rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f}, median:")  # fmt: skip
    print(f"extract_over_forward={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
