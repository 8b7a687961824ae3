"""Every architecture by name, and building one (torchvision's `get_model`, in small).

model = build_model("soundnet8", heads={"objects": 1000})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from models.autoencoder import autoencoder
from models.soundnet import soundnet5, soundnet8

DEFAULT_ARCH = "soundnet8"
_BUILDERS: dict[str, Callable[[Mapping[str, int]], nn.Module]] = {
    "soundnet8": soundnet8,
    "soundnet5": soundnet5,
    "autoencoder": lambda heads: autoencoder(),  # no teacher heads: it rebuilds the waveform
}
ARCHS = tuple(_BUILDERS)


def build_model(arch: str, heads: Mapping[str, int]) -> nn.Module:
    """A freshly initialised model by name; `heads` sizes the distillation heads (the
    autoencoder has none)."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; choose from {list(ARCHS)}")
    return _BUILDERS[arch](heads)
