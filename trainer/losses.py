"""Distillation losses (SPEC.md section 2): the student's per-step class distributions against
the teachers'.

    loss, per_head = distillation_loss(model(wave), targets, kind="kl")
    loss = reconstruction_loss(autoencoder(wave), wave)     # the autoencoder baseline

`log_probs[head]` is the student's log-softmax [batch, steps, classes]; `targets[head]` the
teacher's probabilities of the same shape (one row per output step: the mean of the rows of the
teacher frames inside it). Per head the loss is averaged over batch and steps; the heads' losses are
then averaged, so adding a head does not change the loss scale. (The original Torch code
multiplies the KL by 250; Adam is nearly invariant to that, so we report the plain mean.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from models.layers import WAVE_SCALE, prepare_waveform

LOSSES = ("kl", "l2")


class NonFiniteLoss(RuntimeError):
    """A loss or weights that are NaN or infinite: the run stops (or skips the step)."""


def kl_divergence(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, with 0 log 0 = 0: sum_c p_c (log p_c - log q_c)."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=-1)


def l2_distance(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between the probability vectors (the paper's ablation)."""
    return (log_q.exp() - p).pow(2).sum(dim=-1)


def _check_shapes(head: str, log_q: torch.Tensor, p: torch.Tensor) -> None:
    if log_q.shape != p.shape:
        raise ValueError(
            f"head {head!r}: student output {tuple(log_q.shape)} and teacher targets "
            f"{tuple(p.shape)} differ ([batch, steps, classes]); a 20 s crop gives SoundNet-8 "
            "4 steps for 4 teacher frames"
        )


def distillation_loss(
    log_probs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    kind: str = "kl",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over heads of each head's mean per-step loss; also the per-head values."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
    if set(log_probs) != set(targets):
        raise ValueError(f"student heads {sorted(log_probs)} != target heads {sorted(targets)}")
    per_step = kl_divergence if kind == "kl" else l2_distance
    per_head = {}
    for head, log_q in log_probs.items():
        p = targets[head]
        _check_shapes(head, log_q, p)
        # float32 even under bf16 autocast: these are small sums of large and tiny terms
        per_head[head] = per_step(log_q.float(), p.float()).mean()
    loss = torch.stack(list(per_head.values())).mean()
    return loss, per_head


def reconstruction_loss(recon: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    """The autoencoder's MSE on the waveform, measured in [-1, 1] units so that its values read
    naturally (`wave` is tiled as the model tiles its input)."""
    target = prepare_waveform(wave, recon.shape[-1])[:, 0, : recon.shape[-1]]
    return F.mse_loss(recon.float() / WAVE_SCALE, target.float() / WAVE_SCALE)
