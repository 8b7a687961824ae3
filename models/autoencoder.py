"""The paper's convolutional autoencoder baseline (SPEC.md section 2, "Conv autoencoder" row).

    model = autoencoder()
    recon = model(wave)                    # [batch, samples], same length as the input
    conv4 = model.features(wave, "conv4")  # [batch, 128, frames], what eval's SVM reads

Encoder: SoundNet-8's first four convolutions (conv1..conv4 with BatchNorm, ReLU and the two
max-pools), so its features are directly comparable with SoundNet's conv4. Decoder: four
transposed convolutions that undo the encoder's strides (2, 2, 2*8, 2*8 = 1024 in all), trained
with MSE on the waveform (trainer.losses.reconstruction_loss). `python -m trainer.main --arch
autoencoder` trains it from the same shards (teacher rows are ignored) and writes checkpoints
in the same format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import (
    conv_body,
    min_input_samples,
    paper_init,
    prepare_waveform,
    run_layers,
    wanted_layers,
)
from models.soundnet import SOUNDNET8

ENCODER = SOUNDNET8.blocks[:4]  # conv1 (+pool1), conv2 (+pool2), conv3, conv4
# (in, out, kernel, stride, padding), chosen so that each layer's output = stride * its input
DECODER = (
    (128, 64, 8, 2, 3),  # undoes conv4
    (64, 32, 16, 2, 7),  # undoes conv3
    (32, 16, 32, 16, 8),  # undoes pool2 (8) and conv2 (2)
    (16, 1, 64, 16, 24),  # undoes pool1 (8) and conv1 (2); linear: the waveform itself
)


class ConvAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_sizes: dict[str, int] = {}  # no teacher heads; keeps the checkpoint format
        # crops are cut in SoundNet-8's steps, whose encoder this is (no head of its own)
        self.step_samples = SOUNDNET8.step_samples
        self.body = conv_body(ENCODER)
        layers: list[nn.Module] = []
        for i, (cin, cout, kernel, stride, padding) in enumerate(DECODER):
            layers.append(nn.ConvTranspose1d(cin, cout, kernel, stride, padding))
            if i < len(DECODER) - 1:
                layers += [nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*layers)
        self.min_samples = min_input_samples(ENCODER)
        self.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        """Every layer `features` can return: the encoder's, input to output."""
        return list(self.body.keys())

    def reset_parameters(self) -> None:
        paper_init(self)  # SoundNet's, decoder included

    def features(
        self, wave: torch.Tensor, layers: str | Sequence[str] = "conv4"
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Encoder activations [batch, channels, frames] of one layer, or a dict for a list."""
        wanted = wanted_layers(layers, self.layer_names)
        out, _ = run_layers(self.body, prepare_waveform(wave, self.min_samples), wanted)
        return out[wanted[0]] if isinstance(layers, str) else out

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Reconstruction [batch, samples] of the (tiled) input, in the input's scale."""
        x = prepare_waveform(wave, self.min_samples)
        code = x
        for module in self.body.values():
            code = module(code)
        recon = self.decoder(code)[:, 0]
        # the decoder gives 1024 samples per code frame: at least the input; crop to it
        return recon[:, : x.shape[-1]]


def autoencoder() -> ConvAutoencoder:
    return ConvAutoencoder()
