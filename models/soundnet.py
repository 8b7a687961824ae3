"""SoundNet-8 and SoundNet-5: 1-D convolutional students on the raw waveform (SPEC.md section 2).

    model = soundnet8(heads={"objects": 1000, "scenes": 365})
    log_probs = model(wave)                 # {head: [batch, steps, classes]}
    pool5 = model.features(wave, "pool5")   # [batch, 256, frames]
    model.step_samples                      # 110250: one head step per 5 s of audio

`wave` is mono 22050 Hz audio scaled to [-256, 256] (models.layers.scale_waveform). A head
step stands for `step_samples` of input: the paper trains on 20 s crops, which give each
architecture 4 steps, one per 5 s teacher frame. Weights loading lives apart, in
models/pretrained.py and models/checkpoint.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    ConvSpec,
    conv_body,
    min_input_samples,
    output_length,
    paper_init,
    prepare_waveform,
    run_layers,
    wanted_layers,
)
from schemas import SAMPLE_RATE

# The paper's training crop (20 s): four teacher frames, four head steps.
TRAINING_CROP_SAMPLES = 20 * SAMPLE_RATE


class Architecture(NamedTuple):
    """A layer table: the conv blocks (with their max-pools), then the head convolution."""

    blocks: tuple[ConvSpec, ...]
    head: ConvSpec

    @property
    def min_samples(self) -> int:
        """The shortest input that gives one head step."""
        return min_input_samples((*self.blocks, self.head))

    def output_steps(self, num_samples: int) -> int:
        """Head time steps for an input of `num_samples` (after tiling short inputs)."""
        return output_length((*self.blocks, self.head), max(num_samples, self.min_samples))

    @property
    def step_samples(self) -> int:
        """Input samples one head step stands for: the training crop over the steps it gives."""
        steps = self.output_steps(TRAINING_CROP_SAMPLES)
        if TRAINING_CROP_SAMPLES % steps:
            raise ValueError(f"a {TRAINING_CROP_SAMPLES}-sample crop gives {steps} head steps")
        return TRAINING_CROP_SAMPLES // steps


# The paper's tables, layer by layer (from the original Torch7 code).
SOUNDNET8 = Architecture(
    blocks=(
        ConvSpec("conv1", 16, 64, 2, 32, pool=8, pool_name="pool1"),
        ConvSpec("conv2", 32, 32, 2, 16, pool=8, pool_name="pool2"),
        ConvSpec("conv3", 64, 16, 2, 8),
        ConvSpec("conv4", 128, 8, 2, 4),
        ConvSpec("conv5", 256, 4, 2, 2, pool=4, pool_name="pool5"),
        ConvSpec("conv6", 512, 4, 2, 2),
        ConvSpec("conv7", 1024, 4, 2, 2),
    ),
    head=ConvSpec("conv8", 0, 8, 2, 0),
)
SOUNDNET5 = Architecture(
    blocks=(
        ConvSpec("conv1", 32, 64, 2, 32, pool=8, pool_name="pool1"),
        ConvSpec("conv2", 64, 32, 2, 16, pool=8, pool_name="pool2"),
        ConvSpec("conv3", 128, 16, 2, 8, pool=8, pool_name="pool3"),
        ConvSpec("conv4", 256, 8, 2, 4),
    ),
    head=ConvSpec("conv5", 0, 16, 12, 4),
)
ARCHITECTURES = {"soundnet8": SOUNDNET8, "soundnet5": SOUNDNET5}
# The paper's heads: 1000 ImageNet objects, 401 Places2 scenes.
PAPER_HEADS = {"objects": 1000, "scenes": 401}


def check_heads(heads: Mapping[str, int]) -> None:
    """Head name -> number of classes: at least one head, each of at least one class."""
    example = "e.g. heads={'objects': 1000}"
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must map each head's name to its classes, {example}; got {heads!r}")
    if not heads:
        raise ValueError(f"SoundNet needs at least one head, {example}")
    wrong = {
        h: n
        for h, n in heads.items()
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1
    }
    if wrong:
        raise ValueError(f"heads {wrong}: each head needs a whole number of classes, at least 1")


class SoundNet(nn.Module):
    """A stack of ConvBlocks (with max-pools) and one conv head per teacher."""

    def __init__(self, blocks: Sequence[ConvSpec], head: ConvSpec, heads: Mapping[str, int]):
        super().__init__()
        check_heads(heads)
        self.architecture = Architecture(tuple(blocks), head)
        self.block_specs = self.architecture.blocks
        self.head_spec = head
        self.head_sizes = {h: int(n) for h, n in heads.items()}
        self.body = conv_body(blocks)
        in_channels = blocks[-1].out_channels
        self.heads = nn.ModuleDict(
            {
                name: nn.Conv1d(in_channels, size, head.kernel, head.stride, head.padding)
                for name, size in heads.items()
            }
        )
        self.min_samples = self.architecture.min_samples
        self.step_samples = self.architecture.step_samples
        self.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        """Every layer `features` can return, input to output; the head layer last."""
        return [*self.body.keys(), self.head_spec.name]

    def reset_parameters(self) -> None:
        paper_init(self)

    def output_steps(self, num_samples: int) -> int:
        """Head time steps for an input of `num_samples` (after tiling short inputs)."""
        return self.architecture.output_steps(num_samples)

    def features(
        self, wave: torch.Tensor, layers: str | Sequence[str] = "pool5"
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Activations [batch, channels, frames] of one layer, or a dict for a list of layers.

        Conv layers give their ReLU outputs; the head layer (`conv8` / `conv5` of SoundNet-5)
        gives a dict of raw head scores per head.
        """
        wanted = wanted_layers(layers, self.layer_names)
        x = prepare_waveform(wave, self.min_samples)
        kept, x = run_layers(self.body, x, wanted)
        out: dict[str, torch.Tensor | dict[str, torch.Tensor]] = dict(kept)
        if self.head_spec.name in wanted:  # not in the body: x is the whole body's output
            out[self.head_spec.name] = {h: conv(x) for h, conv in self.heads.items()}
        return out[wanted[0]] if isinstance(layers, str) else out

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per head, log-probabilities [batch, steps, classes] (log-softmax per time step)."""
        x = prepare_waveform(wave, self.min_samples)
        for module in self.body.values():
            x = module(x)
        # in float32 also under bf16 autocast (CUDA's autocast does so; the CPU's would not)
        return {
            h: F.log_softmax(conv(x).float(), dim=1).transpose(1, 2)
            for h, conv in self.heads.items()
        }


def soundnet8(heads: Mapping[str, int] | None = None) -> SoundNet:
    """SoundNet-8; by default the paper's heads (1000 ImageNet objects, 401 Places2 scenes)."""
    return SoundNet(*SOUNDNET8, PAPER_HEADS if heads is None else heads)


def soundnet5(heads: Mapping[str, int] | None = None) -> SoundNet:
    """SoundNet-5; by default the paper's heads."""
    return SoundNet(*SOUNDNET5, PAPER_HEADS if heads is None else heads)
