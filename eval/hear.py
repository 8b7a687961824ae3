"""The HEAR 2021 common API, so that hear-eval-kit can score a SoundNet checkpoint.

    model = load_model("original:soundnet8")          # or RUN/last.pt, random:soundnet8, a .t7
    scene = get_scene_embeddings(audio, model)        # [n_sounds, 512]
    emb, ts = get_timestamp_embeddings(audio, model)  # [n_sounds, n_frames, 256], [n_sounds, n_frames] ms

`audio` is [n_sounds, n_samples] float in [-1, 1] at `model.sample_rate` (22050 Hz). Scene
embeddings are pool5's mean and max over time (the SVM features of eval.run); timestamp
embeddings are conv5's frames (pool5's input, a hop of 2048 samples, ~93 ms), centred in
their hop. Networks without those layers use their last body layer for both.
"""

from __future__ import annotations

import torch
from torch import nn

from eval.features import mean_max
from models.layers import scale_waveform
from models.pretrained import load_pretrained
from schemas import SAMPLE_RATE

SCENE_LAYER = "pool5"
TIMESTAMP_LAYER = "conv5"


def _hop(net: nn.Module, layer: str) -> int:
    """Input samples per frame of `layer`, measured: frames gained by 2^16 more samples."""
    extra = 1 << 16  # a multiple of every hop of these networks
    with torch.inference_mode():
        short, long = (
            net.features(torch.zeros(1, net.min_samples + n), layer).shape[-1]
            for n in (extra, 2 * extra)
        )
    return extra // (long - short)


class SoundNetEmbedding(nn.Module):
    """A network plus the attributes the HEAR API asks of a model."""

    sample_rate = SAMPLE_RATE

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        head = getattr(getattr(net, "head_spec", None), "name", None)
        body = [name for name in net.layer_names if name != head]
        self.scene_layer = SCENE_LAYER if SCENE_LAYER in body else body[-1]
        self.timestamp_layer = TIMESTAMP_LAYER if TIMESTAMP_LAYER in body else body[-1]
        self.hop = _hop(net, self.timestamp_layer)
        with torch.inference_mode():
            probe = net.features(torch.zeros(1, net.min_samples), self._layers)
        self.scene_embedding_size = 2 * probe[self.scene_layer].shape[1]
        self.timestamp_embedding_size = probe[self.timestamp_layer].shape[1]

    @property
    def _layers(self) -> list[str]:
        return list(dict.fromkeys([self.scene_layer, self.timestamp_layer]))

    def layer_features(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        if audio.dim() != 2:
            raise ValueError(f"audio must be [n_sounds, n_samples], got {tuple(audio.shape)}")
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            return self.net.features(scale_waveform(audio.float().to(device)), self._layers)


def load_model(model_file_path: str = "original:soundnet8") -> SoundNetEmbedding:
    net, _ = load_pretrained(model_file_path or "original:soundnet8")
    return SoundNetEmbedding(net)


def get_scene_embeddings(audio: torch.Tensor, model: SoundNetEmbedding) -> torch.Tensor:
    return mean_max(model.layer_features(audio)[model.scene_layer])


def get_timestamp_embeddings(
    audio: torch.Tensor, model: SoundNetEmbedding
) -> tuple[torch.Tensor, torch.Tensor]:
    frames = model.layer_features(audio)[model.timestamp_layer].transpose(1, 2)
    # a short input was tiled to the receptive field: keep the frames of the real audio
    count = min(frames.shape[1], max(1, -(-audio.shape[1] // model.hop)))
    frames = frames[:, :count]
    centres = (torch.arange(count, dtype=torch.float32) + 0.5) * model.hop
    timestamps = (centres * 1000.0 / model.sample_rate).expand(audio.shape[0], count)
    return frames, timestamps.to(frames.device)
