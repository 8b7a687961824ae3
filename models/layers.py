"""What every network here is made of: the waveform it reads, conv blocks described by ConvSpec,
the paper's init, and running a body layer by layer.

`wave` is mono 22050 Hz audio scaled to [-256, 256] (`scale_waveform`), shaped [samples],
[batch, samples] or [batch, 1, samples]. Inputs shorter than a network's receptive field are
tiled (repeated) up to its minimum length, as the original code does for short clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

WAVE_SCALE = 256.0  # float audio in [-1, 1] times 256, as the original feeds audio.load * 2^-23


@dataclass(frozen=True)
class ConvSpec:
    """One Conv1d layer of a table in the paper (and its max-pool after it, if any)."""

    name: str
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: int = 0  # max-pool kernel = stride after the block; 0 for none
    pool_name: str = ""


def scale_waveform(audio: torch.Tensor) -> torch.Tensor:
    """Float audio in [-1, 1] -> the network's input range [-256, 256]."""
    return audio * WAVE_SCALE


def prepare_waveform(wave: torch.Tensor, min_samples: int) -> torch.Tensor:
    """[samples] or [batch, samples] or [batch, 1, samples] -> [batch, 1, >= min_samples].

    Inputs shorter than `min_samples` are tiled (repeated), as the original code does."""
    if wave.dim() == 1:
        wave = wave[None]
    if wave.dim() == 2:
        wave = wave[:, None]
    if wave.dim() != 3 or wave.shape[1] != 1:
        raise ValueError(f"expected a waveform [batch, samples], got shape {tuple(wave.shape)}")
    if wave.shape[-1] == 0:
        raise ValueError("empty waveform")
    if wave.shape[-1] < min_samples:
        repeats = -(-min_samples // wave.shape[-1])
        wave = wave.repeat(1, 1, repeats)[..., :min_samples]
    return wave


def min_input_samples(layers: Sequence[ConvSpec]) -> int:
    """The shortest input that gives one output frame after `layers`: walk them backwards."""
    length = 1
    for spec in reversed(layers):
        if spec.pool:
            length *= spec.pool
        length = max(1, (length - 1) * spec.stride + spec.kernel - 2 * spec.padding)
    return length


def output_length(layers: Sequence[ConvSpec], num_samples: int) -> int:
    """Output frames after `layers` for an input of `num_samples` (walking them forwards)."""
    length = num_samples
    for spec in layers:
        length = (length + 2 * spec.padding - spec.kernel) // spec.stride + 1
        if spec.pool:
            length //= spec.pool
    return length


def receptive_field(body: nn.ModuleDict, layer: str) -> tuple[int, int, int]:
    """(hop, start, size) of `layer`'s frames in input samples, read off the body's Conv1d and
    MaxPool1d modules (BatchNorm and ReLU act per sample): frame u of `layer` hears the input
    samples [hop * u + start, hop * u + start + size). `start` is negative where the
    convolutions' zero padding lies before the input."""
    hop, start, size = 1, 0, 1
    for name, block in body.items():
        for module in block.modules():
            if isinstance(module, nn.Conv1d | nn.MaxPool1d):
                kernel, stride, padding = (
                    v if isinstance(v, int) else v[0]
                    for v in (module.kernel_size, module.stride, module.padding)
                )
                # frame v of this module reads its input frames [stride*v - padding, ... + kernel)
                start -= padding * hop
                size += (kernel - 1) * hop
                hop *= stride
        if name == layer:
            return hop, start, size
    raise ValueError(f"unknown layer {layer!r}; choose from {list(body.keys())}")


class ConvBlock(nn.Sequential):
    """Conv1d -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, spec: ConvSpec):
        super().__init__(
            nn.Conv1d(in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding),
            nn.BatchNorm1d(spec.out_channels),
            nn.ReLU(inplace=True),
        )


def conv_body(blocks: Sequence[ConvSpec]) -> nn.ModuleDict:
    """ConvBlocks and their max-pools by layer name, input to output, from a mono waveform."""
    body = nn.ModuleDict()
    in_channels = 1
    for spec in blocks:
        body[spec.name] = ConvBlock(in_channels, spec)
        if spec.pool:
            body[spec.pool_name] = nn.MaxPool1d(spec.pool, spec.pool)
        in_channels = spec.out_channels
    return body


def paper_init(model: nn.Module) -> None:
    """The paper's init: conv weights N(0, 0.01), BatchNorm gamma N(1, 0.02), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)


def wanted_layers(layers: str | Sequence[str], known: Sequence[str]) -> list[str]:
    """`layers` (one name or several) as a list, each checked against `known`."""
    wanted = [layers] if isinstance(layers, str) else list(layers)
    unknown = set(wanted) - set(known)
    if unknown:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {list(known)}")
    return wanted


def run_layers(
    body: nn.ModuleDict, x: torch.Tensor, wanted: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run `body` in order keeping the outputs named in `wanted`, up to the last of them (all
    of it when one is not in `body`); also the last output computed."""
    out: dict[str, torch.Tensor] = {}
    for name, module in body.items():
        x = module(x)
        if name in wanted:
            out[name] = x
        if len(out) == len(wanted):
            break
    return out, x
