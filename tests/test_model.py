"""SoundNet-8/5 and the autoencoder baseline: shapes, parameter counts, tiling, checkpoints."""

from __future__ import annotations

import pytest
import torch

from models.autoencoder import ConvAutoencoder
from models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from models.registry import build_model
from models.soundnet import soundnet5, soundnet8
from schemas import SAMPLE_RATE
from trainer.losses import reconstruction_loss

SECONDS_20 = 20 * SAMPLE_RATE


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_soundnet8_paper_shapes_and_parameter_count():
    model = soundnet8({"objects": 1000, "scenes": 401}).eval()
    assert count(model) == 14_352_713
    wave = torch.randn(2, SECONDS_20) * 50
    with torch.no_grad():
        out = model(wave)
        pool5 = model.features(wave, "pool5")
    assert out["objects"].shape == (2, 4, 1000)
    assert out["scenes"].shape == (2, 4, 401)
    assert pool5.shape == (2, 256, 54)
    # log-softmax per step: each row is a distribution
    assert torch.allclose(out["scenes"].exp().sum(-1), torch.ones(2, 4), atol=1e-5)


def test_soundnet5_shapes_and_parameter_count():
    model = soundnet5({"objects": 1000, "scenes": 401}).eval()
    # conv1..conv4 (+BN) and two heads of kernel 16 over 256 channels
    body = (32 * 64 + 32 + 64) + (64 * 32 * 32 + 64 + 128) + (128 * 64 * 16 + 128 + 256)
    body += 256 * 128 * 8 + 256 + 512
    heads = (1000 + 401) * (256 * 16 + 1)
    assert count(model) == body + heads
    with torch.no_grad():
        out = model(torch.randn(1, SECONDS_20))
    assert out["objects"].shape == (1, 4, 1000)


@pytest.mark.parametrize("seconds", [5, 10, 15, 20, 25, 40])
def test_output_steps_matches_a_forward_pass(seconds):
    model = soundnet8({"objects": 3}).eval()
    with torch.no_grad():
        steps = model(torch.zeros(1, seconds * SAMPLE_RATE))["objects"].shape[1]
    assert model.output_steps(seconds * SAMPLE_RATE) == steps
    # the one-to-one crops: 5 s -> 1 step, 20 s -> 4 steps (the paper's)
    if seconds in (5, 20):
        assert steps == seconds // 5


@pytest.mark.parametrize("samples", [1, 1000, SAMPLE_RATE])
def test_short_inputs_are_tiled_never_negative_sizes(samples):
    model = soundnet8({"objects": 5}).eval()
    with torch.no_grad():
        out = model(torch.randn(samples))
        feats = model.features(torch.randn(1, samples), ["conv1", "pool5", "conv7", "conv8"])
    assert out["objects"].shape == (1, 1, 5)
    assert feats["conv8"]["objects"].shape[-1] == 1
    assert feats["pool5"].shape[:2] == (1, 256)


def test_features_unknown_layer_names_the_choices():
    with pytest.raises(ValueError, match="pool5"):
        soundnet8({"objects": 2}).features(torch.zeros(1, 1000), "conv9")


def test_autoencoder_encoder_is_soundnet8s_first_four_convolutions():
    ae, sn = build_model("autoencoder", {}), soundnet8({"objects": 2})
    assert isinstance(ae, ConvAutoencoder)
    assert ae.layer_names == ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4"]
    for name in ("conv1", "conv2", "conv3", "conv4"):
        ours, theirs = ae.body[name], sn.body[name]
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    decoder = [m for m in ae.decoder if isinstance(m, torch.nn.ConvTranspose1d)]
    assert len(decoder) == 4 and decoder[-1].out_channels == 1


@pytest.mark.parametrize("samples", [1, 500, 1024, 5000, 110_250, 110_251])
def test_autoencoder_reconstructs_any_length(samples):
    ae = build_model("autoencoder", {}).eval()
    wave = torch.randn(2, samples) * 30
    with torch.no_grad():
        recon = ae(wave)
        conv4 = ae.features(wave, "conv4")
    assert recon.shape == (2, max(samples, ae.min_samples))
    assert conv4.shape[:2] == (2, 128) and conv4.shape[-1] >= 1
    loss = reconstruction_loss(recon, wave)
    assert torch.isfinite(loss) and loss > 0


def test_autoencoder_checkpoint_round_trip(tmp_path):
    ae = build_model("autoencoder", {})
    wave = torch.randn(2, 8000) * 30
    with torch.no_grad():
        ae(wave)  # train mode: moves the BatchNorm running statistics off their init
    save_checkpoint(tmp_path / "ae.pt", ae, "autoencoder", {}, step=1)
    payload = load_checkpoint(tmp_path / "ae.pt")
    assert torch.load(tmp_path / "ae.pt", weights_only=True)["arch"] == "autoencoder"
    loaded = model_from_checkpoint(payload)
    ae.eval()
    with torch.no_grad():
        assert torch.equal(loaded.features(wave, "conv4"), ae.features(wave, "conv4"))
