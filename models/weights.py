"""Trained weights and what they predict, kept apart from the architectures (torchvision style).

A `Weights` names an architecture and, per head, its class names in output order (as
torchvision's `Weights.meta["categories"]`): the names travel with the weights and size the
heads the model is built with, never guessed from a head's name and size afterwards.

The authors' SoundNet-8 (SPEC.md section 7) is fetched and converted once into the cache
($SOUNDNET_CACHE, else ~/.cache/soundnet) by `python -m models.fetch`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.checkpoint import load_checkpoint
from models.registry import build_model
from schemas.labels import generic_labels, imagenet_labels

log = logging.getLogger(__name__)

FETCH_COMMAND = "python -m models.fetch"
SOUND8_FILE = "sound8.npy"
ORIGINAL_FILE = "soundnet8_original.pt"
# The authors' heads, in the order of their release's ConcatTable and of sound8.npy's
# conv8 / conv8_2: ImageNet-1k objects (ILSVRC synset order) and Places2 scenes.
AUTHORS_HEADS = {"objects": 1000, "scenes": 401}


class PretrainedError(ValueError):
    """Weights cannot be had or read; the message names the file and what to do."""


@dataclass(frozen=True)
class Weights:
    """An architecture and what each of its heads predicts."""

    arch: str
    categories: Mapping[str, Sequence[str]]  # head -> class names, in output order
    source: str = ""

    @property
    def heads(self) -> dict[str, int]:
        """Head sizes: one output per class name."""
        return {head: len(names) for head, names in self.categories.items()}

    @property
    def labels(self) -> dict[str, list[str]]:
        return {head: list(names) for head, names in self.categories.items()}

    def build(self) -> nn.Module:
        """The architecture with heads sized for these weights (freshly initialised)."""
        return build_model(self.arch, self.heads)


def cache_dir() -> Path:
    return Path(os.environ.get("SOUNDNET_CACHE") or Path.home() / ".cache" / "soundnet")


def original_checkpoint_path() -> Path:
    return cache_dir() / ORIGINAL_FILE


def untrained_categories(heads: Mapping[str, int]) -> dict[str, list[str]]:
    """Numbered names: heads that were never trained on anything named."""
    return {head: generic_labels(head, size) for head, size in heads.items()}


def authors_categories() -> dict[str, list[str]]:
    """The class names of the authors' two heads: ImageNet-1k, and the 401 Places2 names that
    `python -m models.fetch` read from their package (numbered until it has run)."""
    scenes = generic_labels("scenes", AUTHORS_HEADS["scenes"])
    path = original_checkpoint_path()
    if path.is_file():
        scenes = load_checkpoint(path)["labels"]["scenes"]
    else:
        log.warning("%s is missing: scene classes are numbered (run `%s`)", path, FETCH_COMMAND)
    return {"objects": imagenet_labels(), "scenes": scenes}
