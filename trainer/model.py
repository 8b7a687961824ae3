"""SoundNet-8 and SoundNet-5: 1-D convolutional students on the raw waveform (SPEC.md section 2).

    model = soundnet8(heads={"objects": 1000, "scenes": 365})
    log_probs = model(wave)                 # {head: [batch, steps, classes]}
    pool5 = model.features(wave, "pool5")   # [batch, 256, frames]

`wave` is mono 22050 Hz audio scaled to [-256, 256] (see `scale_waveform`), shaped [batch, samples]
or [batch, 1, samples]. Inputs shorter than the network's receptive field are tiled (repeated)
up to the minimum length, as the original code does for short clips. Weights loading lives in
trainer/checkpoint.py and eval/, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 22050
WAVE_SCALE = 256.0  # float audio in [-1, 1] times 256, as the original feeds audio.load * 2^-23


@dataclass(frozen=True)
class ConvSpec:
    name: str
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: int = 0  # max-pool kernel = stride after the block; 0 for none
    pool_name: str = ""


# The paper's tables, layer by layer (from the original Torch7 code).
SOUNDNET8 = (
    ConvSpec("conv1", 16, 64, 2, 32, pool=8, pool_name="pool1"),
    ConvSpec("conv2", 32, 32, 2, 16, pool=8, pool_name="pool2"),
    ConvSpec("conv3", 64, 16, 2, 8),
    ConvSpec("conv4", 128, 8, 2, 4),
    ConvSpec("conv5", 256, 4, 2, 2, pool=4, pool_name="pool5"),
    ConvSpec("conv6", 512, 4, 2, 2),
    ConvSpec("conv7", 1024, 4, 2, 2),
)
SOUNDNET8_HEAD = ConvSpec("conv8", 0, 8, 2, 0)

SOUNDNET5 = (
    ConvSpec("conv1", 32, 64, 2, 32, pool=8, pool_name="pool1"),
    ConvSpec("conv2", 64, 32, 2, 16, pool=8, pool_name="pool2"),
    ConvSpec("conv3", 128, 16, 2, 8, pool=8, pool_name="pool3"),
    ConvSpec("conv4", 256, 8, 2, 4),
)
SOUNDNET5_HEAD = ConvSpec("conv5", 0, 16, 12, 4)

ARCHITECTURES = {"soundnet8": (SOUNDNET8, SOUNDNET8_HEAD), "soundnet5": (SOUNDNET5, SOUNDNET5_HEAD)}


def scale_waveform(audio: torch.Tensor) -> torch.Tensor:
    """Float audio in [-1, 1] -> the network's input range [-256, 256]."""
    return audio * WAVE_SCALE


def wanted_layers(layers: str | Sequence[str], known: Sequence[str]) -> list[str]:
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


class SoundNet(nn.Module):
    """A stack of ConvBlocks (with max-pools) and one conv head per teacher."""

    def __init__(self, blocks: Sequence[ConvSpec], head: ConvSpec, heads: Mapping[str, int]):
        super().__init__()
        if not heads:
            raise ValueError("SoundNet needs at least one head, e.g. heads={'objects': 1000}")
        self.block_specs = tuple(blocks)
        self.head_spec = head
        self.head_sizes = dict(heads)
        self.body = conv_body(blocks)
        in_channels = blocks[-1].out_channels
        self.heads = nn.ModuleDict(
            {
                name: nn.Conv1d(in_channels, size, head.kernel, head.stride, head.padding)
                for name, size in heads.items()
            }
        )
        self.min_samples = self._min_input_samples()
        self.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        """Every layer `features` can return, input to output; the head layer last."""
        return [*self.body.keys(), self.head_spec.name]

    def reset_parameters(self) -> None:
        paper_init(self)

    def _min_input_samples(self) -> int:
        """Shortest input that gives one head step: walk the layers backwards."""
        length = self.head_spec.kernel - 2 * self.head_spec.padding
        for spec in reversed(self.block_specs):
            if spec.pool:
                length = length * spec.pool
            length = max(1, (length - 1) * spec.stride + spec.kernel - 2 * spec.padding)
        return length

    def _prepare(self, wave: torch.Tensor) -> torch.Tensor:
        return prepare_waveform(wave, self.min_samples)

    def output_steps(self, num_samples: int) -> int:
        """Head time steps for an input of `num_samples` (after tiling short inputs)."""
        length = max(num_samples, self.min_samples)
        for spec in self.block_specs:
            length = (length + 2 * spec.padding - spec.kernel) // spec.stride + 1
            if spec.pool:
                length //= spec.pool
        head = self.head_spec
        return (length + 2 * head.padding - head.kernel) // head.stride + 1

    def features(
        self, wave: torch.Tensor, layers: str | Sequence[str] = "pool5"
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Activations [batch, channels, frames] of one layer, or a dict for a list of layers.

        Conv layers give their ReLU outputs; the head layer (`conv8` / `conv5` of SoundNet-5)
        gives a dict of raw head scores per head.
        """
        wanted = wanted_layers(layers, self.layer_names)
        kept, x = run_layers(self.body, self._prepare(wave), wanted)
        out: dict[str, torch.Tensor | dict[str, torch.Tensor]] = dict(kept)
        if self.head_spec.name in wanted:  # not in the body: x is the whole body's output
            out[self.head_spec.name] = {h: conv(x) for h, conv in self.heads.items()}
        return out[wanted[0]] if isinstance(layers, str) else out

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per head, log-probabilities [batch, steps, classes] (log-softmax per time step)."""
        x = self._prepare(wave)
        for module in self.body.values():
            x = module(x)
        return {h: F.log_softmax(conv(x), dim=1).transpose(1, 2) for h, conv in self.heads.items()}


def soundnet8(heads: Mapping[str, int] | None = None) -> SoundNet:
    """SoundNet-8; by default the paper's heads (1000 ImageNet objects, 401 Places2 scenes)."""
    return SoundNet(SOUNDNET8, SOUNDNET8_HEAD, heads or {"objects": 1000, "scenes": 401})


def soundnet5(heads: Mapping[str, int] | None = None) -> SoundNet:
    return SoundNet(SOUNDNET5, SOUNDNET5_HEAD, heads or {"objects": 1000, "scenes": 401})


ARCHS = ("soundnet8", "soundnet5", "autoencoder")


def build_model(arch: str, heads: Mapping[str, int]) -> nn.Module:
    """A model by name; `heads` sizes the distillation heads (the autoencoder has none)."""
    if arch == "autoencoder":
        from trainer.autoencoder import autoencoder  # it builds on this module's blocks

        return autoencoder()
    builders = {"soundnet8": soundnet8, "soundnet5": soundnet5}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; choose from {list(ARCHS)}")
    return builders[arch](heads)
