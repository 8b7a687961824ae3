"""Hidden-layer activations of a network for every clip of a dataset, all layers in one pass.

Each clip is read once, tiled circularly to at least `seconds` (10 s, as the original eval), and
run through the network in batches of equal-length clips. The result keeps every layer's full
time series ([channels, frames] per clip) so that both SVM protocols can be derived from it.
`network_features` is the one path from waves to activations: eval.hear's scene embeddings take
it too, so they are the pooled protocol's SVM samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eval.audio import load_audio, tile
from models.layers import scale_waveform
from schemas import SAMPLE_RATE

# The paper's per-layer table, in network order; `--layer all` uses those the model has. All are
# hidden layers but conv8, SoundNet-8's head (the original eval's concatenated class scores).
TABLE_LAYERS = ("conv4", "conv5", "pool5", "conv6", "conv7", "conv8")
TABLE_HEAD = "conv8"
DEFAULT_LAYER = "pool5"
DEFAULT_SECONDS = 10.0


def set_threads() -> None:
    """All cores for the convolutions (torch may default to fewer under a container quota)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, cores or 1))


def body_layers(model: nn.Module) -> list[str]:
    """The model's hidden layers, input to output: its layers but the class-score head (SoundNet-5
    calls its head conv5, a name that is a hidden layer of SoundNet-8)."""
    head = getattr(getattr(model, "head_spec", None), "name", None)
    return [name for name in model.layer_names if name != head]


def default_layer(model: nn.Module) -> str:
    """pool5, or the deepest hidden layer of a model without it (SoundNet-5's and the
    autoencoder's conv4): eval.run's layer and eval.hear's scene layer."""
    body = body_layers(model)
    return DEFAULT_LAYER if DEFAULT_LAYER in body else body[-1]


def resolve_layers(model: nn.Module, layer: str | None) -> list[str]:
    """`all` -> the table's layers the model has as hidden layers, and SoundNet-8's head conv8
    as the table has it; None -> `default_layer`; otherwise one checked layer name (a head's
    scores too)."""
    names = list(model.layer_names)
    if layer is None:
        return [default_layer(model)]
    if layer == "all":
        body = body_layers(model)
        layers = [n for n in TABLE_LAYERS if n in body or (n == TABLE_HEAD and n in names)]
        return layers or body
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; this model has {names} (or 'all')")
    return [layer]


def input_samples(model: nn.Module, seconds: float = DEFAULT_SECONDS) -> int:
    """The length every clip is tiled to: `seconds`, or the network's shortest input."""
    return max(int(round(seconds * SAMPLE_RATE)), getattr(model, "min_samples", 1))


def _as_array(output: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray:
    """A layer output as [batch, channels, frames]; the heads' scores are concatenated, as the
    original eval does for conv8."""
    if isinstance(output, dict):
        output = torch.cat(list(output.values()), dim=1)
    return output.float().cpu().numpy()


def mean_max(frames: np.ndarray) -> np.ndarray:
    """[..., channels, frames] -> [..., 2 * channels]: each channel's mean and max over time
    (the pooled SVM protocol's sample, and the HEAR scene embedding)."""
    return np.concatenate([frames.mean(axis=-1), frames.max(axis=-1)], axis=-1)


def network_features(
    model: nn.Module,
    waves: Sequence[np.ndarray],
    layers: Sequence[str],
    seconds: float = DEFAULT_SECONDS,
) -> dict[str, np.ndarray]:
    """{layer: [batch, channels, frames]} of waves (float in [-1, 1]) in one forward pass, each
    tiled to `input_samples`; tiled, they must be of one length."""
    num_samples = input_samples(model, seconds)
    tiled = [tile(np.asarray(w, np.float32), num_samples) for w in waves]
    batch = np.stack(tiled) if tiled else np.zeros((0, num_samples), np.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.features(scale_waveform(torch.from_numpy(batch).to(device)), list(layers))
    return {name: _as_array(out[name]) for name in layers}


def _batches(
    paths: Iterable[Path], num_samples: int, batch_size: int
) -> Iterator[list[np.ndarray]]:
    """Waves grouped into batches of one length once tiled to `num_samples`, in input order."""
    batch: list[np.ndarray] = []
    length = 0
    for path in paths:
        wave = load_audio(path, SAMPLE_RATE)
        if batch and (len(batch) == batch_size or max(len(wave), num_samples) != length):
            yield batch
            batch = []
        batch.append(wave)
        length = max(len(wave), num_samples)
    if batch:
        yield batch


def extract_features(
    model: nn.Module,
    paths: Sequence[Path],
    layers: Sequence[str],
    seconds: float = DEFAULT_SECONDS,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, list[np.ndarray]]:
    """{layer: one [channels, frames] float32 array per clip}, all layers from one pass."""
    model.eval()
    features: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with tqdm(total=len(paths), desc="features", unit="clip", disable=not progress) as bar:
        for waves in _batches(paths, input_samples(model, seconds), batch_size):
            for name, arrays in network_features(model, waves, layers, seconds).items():
                features[name].extend(arrays)
            bar.update(len(waves))
    return features
