"""Hidden-layer activations of a network for every clip of a dataset, all layers in one pass.

Each clip is read once, tiled circularly to at least `seconds` (10 s, as the original eval), and
run through the network in batches of equal-length clips. The result keeps every layer's full
time series ([channels, frames] per clip) so that both SVM protocols can be derived from it.
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

# The paper's per-layer table, in network order; `--layer all` uses those the model has.
TABLE_LAYERS = ("conv4", "conv5", "pool5", "conv6", "conv7", "conv8")
DEFAULT_SECONDS = 10.0


def set_threads() -> None:
    """All cores for the convolutions (torch may default to fewer under a container quota)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, cores or 1))


def resolve_layers(model: nn.Module, layer: str | None) -> list[str]:
    """`all` -> the table's layers present in the model; None -> pool5, or the deepest table
    layer of a model without it (the autoencoder's conv4); otherwise one checked layer name."""
    names = list(model.layer_names)
    if layer is None:
        present = [name for name in TABLE_LAYERS if name in names]
        return ["pool5"] if "pool5" in names else present[-1:] or names[-1:]
    if layer == "all":
        layers = [name for name in TABLE_LAYERS if name in names]
        return layers or names
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; this model has {names} (or 'all')")
    return [layer]


def _as_array(output: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray:
    """A layer output as [batch, channels, frames]; the heads' scores are concatenated, as the
    original eval does for conv8."""
    if isinstance(output, dict):
        output = torch.cat(list(output.values()), dim=1)
    return output.float().cpu().numpy()


def mean_max(frames: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """[..., channels, frames] -> [..., 2 * channels]: each channel's mean and max over time
    (the pooled SVM protocol's sample, and the HEAR scene embedding)."""
    if isinstance(frames, torch.Tensor):
        return torch.cat([frames.mean(dim=-1), frames.amax(dim=-1)], dim=-1)
    return np.concatenate([frames.mean(axis=-1), frames.max(axis=-1)], axis=-1)


def network_features(
    model: nn.Module, waves: Sequence[np.ndarray], layers: Sequence[str]
) -> dict[str, list[np.ndarray]]:
    """Features of equal-length waves (float in [-1, 1]) in one forward pass."""
    batch = scale_waveform(torch.from_numpy(np.stack(waves)))
    with torch.inference_mode():
        out = model.features(batch, list(layers))
    return {name: list(_as_array(out[name])) for name in layers}


def _batches(
    paths: Iterable[Path], num_samples: int, batch_size: int
) -> Iterator[list[np.ndarray]]:
    """Tiled waves grouped into batches of equal length, in input order."""
    batch: list[np.ndarray] = []
    for path in paths:
        wave = tile(load_audio(path, SAMPLE_RATE), num_samples)
        if batch and (len(batch) == batch_size or wave.shape[0] != batch[0].shape[0]):
            yield batch
            batch = []
        batch.append(wave)
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
    num_samples = max(int(round(seconds * SAMPLE_RATE)), getattr(model, "min_samples", 1))
    features: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with tqdm(total=len(paths), desc="features", unit="clip", disable=not progress) as bar:
        for waves in _batches(paths, num_samples, batch_size):
            for name, arrays in network_features(model, waves, layers).items():
                features[name].extend(arrays)
            bar.update(len(waves))
    return features
