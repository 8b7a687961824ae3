"""The HEAR 2021 common API, so that hear-eval-kit can score a SoundNet checkpoint.

    model = load_model("original:soundnet8")          # or RUN/last.pt, random:soundnet8, a .t7
    model = load_model("original:soundnet8?hop=2048") # options after '?', or as keywords:
    model = load_model("RUN/last.pt", hop=2048)       #   heareval's --model-options '{"hop": 2048}'
    scene = get_scene_embeddings(audio, model)        # [n_sounds, 512]
    emb, ts = get_timestamp_embeddings(audio, model)  # [n_sounds, n_frames, 256], [n_sounds, n_frames] ms

`audio` is [n_sounds, n_samples] float in [-1, 1] at `model.sample_rate` (22050 Hz). Scene
embeddings are pool5's mean and max over time of the clip tiled to 10 s: eval.run's SVM samples
(its default layer and pooled protocol), computed by the same code. Timestamp embeddings are
conv5's frames (pool5's input); networks without those layers use their deepest hidden layer
for both.

Timestamps: each is the centre of the audio its frame hears (its receptive field, derived from
the layers by models.layers.receptive_field), at 0, hop, 2 * hop, ... up to the clip's end and
never past it. The clip is padded with silence (never tiled) so that every kept frame hears only
the clip and silence, never the network's own zero padding of deeper layers nor another part of
the clip. conv5's frames step by 2048 samples (92.9 ms); a finer `hop` that divides it runs the
network once per phase, on the clip shifted by a multiple of `hop`, and interleaves the frames.
The default is the largest such hop of at most 50 ms (SoundNet-8: 1024 samples, 46.4 ms, two
passes); `hop=2048` gives the network's own frames in one pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from torch import nn

from eval.features import body_layers, default_layer, mean_max, network_features
from models.layers import receptive_field, scale_waveform
from models.pretrained import load_pretrained
from schemas import SAMPLE_RATE

DEFAULT_MODEL = "original:soundnet8"
TIMESTAMP_LAYER = "conv5"
MAX_DEFAULT_HOP_MS = 50.0  # the validator's (and HEAR's event tasks') suggested largest hop
OPTIONS = ("hop",)


def default_hop(frame_hop: int, sample_rate: int = SAMPLE_RATE) -> int:
    """The largest divisor of `frame_hop` of at most MAX_DEFAULT_HOP_MS."""
    limit = MAX_DEFAULT_HOP_MS * sample_rate / 1000.0
    return max(d for d in range(1, frame_hop + 1) if frame_hop % d == 0 and d <= limit)


class SoundNetEmbedding(nn.Module):
    """A network plus the attributes the HEAR API asks of a model.

    `hop` (samples between timestamps) must divide the timestamp layer's frame hop; None
    takes `default_hop`. The module stays in inference mode whatever `train()` is asked."""

    sample_rate = SAMPLE_RATE

    def __init__(self, net: nn.Module, hop: int | None = None):
        super().__init__()
        self.net = net
        self.eval()
        body = body_layers(net)
        self.scene_layer = default_layer(net)
        self.timestamp_layer = TIMESTAMP_LAYER if TIMESTAMP_LAYER in body else body[-1]
        self.frame_hop, start, self.field_size = receptive_field(net.body, self.timestamp_layer)
        self.hop = default_hop(self.frame_hop) if hop is None else hop
        if self.hop <= 0 or self.frame_hop % self.hop:
            raise ValueError(
                f"hop={hop}: the hop must divide {self.timestamp_layer}'s frame hop of "
                f"{self.frame_hop} samples, e.g. {self.frame_hop} or {self.frame_hop // 2}"
            )
        self.phases = self.frame_hop // self.hop  # network passes per call
        # Frame u of a pass hears [frame_hop*u + start, ... + field_size): its centre is
        # frame_hop*u + centre2 / 2 (in half samples: an odd field centres between two).
        centre2 = 2 * start + self.field_size
        self.offset = (centre2 % 2) / 2  # timestamps are offset + k * hop samples
        # Pass j pads the clip with pads[j] samples of silence before it, so that its frames
        # are centred at offset + (j + phases * i) * hop with i = 0, 1, ... (first_frame[j] on):
        # the smallest pad that aligns them and puts the first one's whole field inside the
        # padded input (silence before the clip, never the network's own zero padding).
        self.pads: list[int] = []
        self.first_frame: list[int] = []
        for j in range(self.phases):
            least = max(0, math.ceil(self.field_size / 2 - self.offset) - j * self.hop)
            pad = least + ((centre2 // 2 - j * self.hop - least) % self.frame_hop)
            self.pads.append(pad)
            self.first_frame.append((pad + j * self.hop - centre2 // 2) // self.frame_hop)
        with torch.inference_mode():
            probe = net.features(torch.zeros(1, net.min_samples), self._layers)
        self.scene_embedding_size = 2 * probe[self.scene_layer].shape[1]
        self.timestamp_embedding_size = probe[self.timestamp_layer].shape[1]

    def train(self, mode: bool = True) -> SoundNetEmbedding:
        """Always inference mode: BatchNorm's batch statistics (and their updates of the running
        ones) would make the embeddings depend on the batch and on earlier calls."""
        return super().train(False)

    @property
    def _layers(self) -> list[str]:
        return list(dict.fromkeys([self.scene_layer, self.timestamp_layer]))

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def scene_features(self, audio: torch.Tensor) -> torch.Tensor:
        """[n_sounds, 2 * channels]: the scene layer's mean and max over time, of each sound
        tiled as eval.run tiles a clip (network_features, eval.run's path)."""
        _check_audio(audio)
        waves = audio.detach().float().cpu().numpy()
        frames = network_features(self.net, waves, [self.scene_layer])[self.scene_layer]
        return torch.from_numpy(mean_max(frames)).to(self._device())

    def frame_count(self, num_samples: int) -> int:
        """Timestamps for a clip of `num_samples`: those at offset + k * hop <= its end."""
        return math.floor((num_samples - self.offset) / self.hop) + 1

    def timestamps_ms(self, num_samples: int) -> torch.Tensor:
        """The frames' centres in ms, for a clip of `num_samples` (float64: no drift)."""
        k = torch.arange(self.frame_count(num_samples), dtype=torch.float64)
        return (k * self.hop + self.offset) * 1000.0 / self.sample_rate

    def timestamp_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """[n_sounds, frame_count, channels]: every phase's frames, interleaved in time."""
        _check_audio(audio)
        sounds, n = audio.shape
        count = self.frame_count(n)
        # one length for every pass (one batch): the last frame's field fits, and no tiling
        length = max(max(self.pads) + n + self.field_size // 2 + self.frame_hop,
                     self.net.min_samples)  # fmt: skip
        padded = audio.new_zeros(self.phases, sounds, length, dtype=torch.float32)
        for j, pad in enumerate(self.pads):
            padded[j, :, pad : pad + n] = audio
        with torch.inference_mode():
            out = self.net.features(
                scale_waveform(padded.flatten(0, 1).to(self._device())), self.timestamp_layer
            )
        out = out.unflatten(0, (self.phases, sounds))  # [phases, sounds, channels, frames]
        frames = out.new_empty(sounds, out.shape[2], count)
        for j, first in enumerate(self.first_frame):
            wanted = len(range(j, count, self.phases))
            if first + wanted > out.shape[-1]:
                raise RuntimeError(f"pass {j} gave {out.shape[-1]} frames, {first + wanted} needed")
            frames[:, :, j :: self.phases] = out[j, :, :, first : first + wanted]
        return frames.transpose(1, 2)


def _check_audio(audio: torch.Tensor) -> None:
    if audio.dim() != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got {tuple(audio.shape)}")
    if audio.shape[1] == 0:
        raise ValueError("audio has no samples")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """'WEIGHTS?hop=1024' -> ('WEIGHTS', {'hop': '1024'}); a file that exists is taken whole."""
    if "?" not in spec or Path(spec).exists():
        return spec, {}
    base, _, query = spec.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise ValueError(f"{spec!r}: options are '?name=value&...', e.g. '?hop=2048'") from None
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{spec!r}: unknown option(s) {unknown}; known: {list(OPTIONS)}")
    return base, options


def load_model(
    model_file_path: str = DEFAULT_MODEL, hop: int | str | None = None
) -> SoundNetEmbedding:
    """A weights spec (load_pretrained's, plus '?hop=N' options) -> the HEAR model."""
    spec, options = split_options(str(model_file_path or DEFAULT_MODEL))
    if hop is not None:
        options["hop"] = str(hop)
    if "hop" in options and not options["hop"].isdigit():
        raise ValueError(f"hop={options['hop']!r}: a whole number of samples, e.g. hop=2048")
    net, _ = load_pretrained(spec)
    return SoundNetEmbedding(net, int(options["hop"]) if "hop" in options else None)


def get_scene_embeddings(audio: torch.Tensor, model: SoundNetEmbedding) -> torch.Tensor:
    return model.scene_features(audio)


def get_timestamp_embeddings(
    audio: torch.Tensor, model: SoundNetEmbedding
) -> tuple[torch.Tensor, torch.Tensor]:
    frames = model.timestamp_frames(audio)
    timestamps = model.timestamps_ms(audio.shape[1]).float().to(frames.device)
    return frames, timestamps.expand(audio.shape[0], -1).contiguous()
