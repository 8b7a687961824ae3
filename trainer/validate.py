"""Validation: per head the student's KL and top-1 agreement with the teacher, beside the prior
baseline's; for the autoencoder, its reconstruction MSE beside predicting silence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.data import batch_to
from trainer.distributed import Summed
from trainer.losses import kl_divergence, l2_distance, reconstruction_loss
from trainer.stats import Prior


@dataclass
class ValSums(Summed):
    samples: torch.Tensor
    rows: torch.Tensor  # teacher rows scored: batch x steps
    kl: dict[str, torch.Tensor]  # per head: the student's KL(teacher || student), summed
    top1: dict[str, torch.Tensor]  # the student's argmax agreeing with the teacher's
    prior_kl: dict[str, torch.Tensor]  # the same for always predicting the prior
    prior_top1: dict[str, torch.Tensor]
    l2: dict[str, torch.Tensor]  # the student's L2 distance to the teacher (--loss l2)
    mse: torch.Tensor  # the autoencoder's reconstruction MSE, summed over samples
    silence_mse: torch.Tensor  # ... and that of predicting silence

    @classmethod
    def zeros(cls, heads: list[str], device: torch.device) -> ValSums:
        def zero() -> torch.Tensor:
            return torch.zeros((), dtype=torch.float64, device=device)

        per_head = [{h: zero() for h in heads} for _ in range(5)]
        return cls(zero(), zero(), *per_head, zero(), zero())


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    prior: Prior,
    device: torch.device,
    max_batches: int,
    autocast: Any,
    loss: str = "kl",
) -> dict[str, Any]:
    """This rank's shards, summed over the ranks: per head the student's mean KL(teacher ||
    student) and top-1 agreement with the teacher beside those of always predicting `prior`
    (the autoencoder: its reconstruction MSE beside predicting silence); `loss` is the mean
    over heads of the run's loss, the KL or (`loss="l2"`) the L2 distance, also per head."""
    model.eval()
    # a class the teachers never gave mass to so far: a tiny prior, not log 0 and an inf KL
    distributions = {h: smoothed(d) for h, d in prior.distributions().items()}
    heads = list(distributions)
    sums = ValSums.zeros(heads, device)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        wave, targets = batch_to(batch, device)
        with autocast:
            out = model(wave)
        sums.samples += len(wave)
        if not heads:
            sums.mse += reconstruction_loss(out, wave).double() * len(wave)
            sums.silence_mse += reconstruction_loss(torch.zeros_like(wave), wave).double() * len(
                wave
            )
            continue
        for head in heads:
            p = targets[head]
            log_q = out[head].float()
            log_prior = distributions[head].log().to(device).expand_as(p)
            teacher_top = p.argmax(-1)
            sums.kl[head] += kl_divergence(log_q, p).sum().double()
            sums.l2[head] += l2_distance(log_q, p).sum().double()
            sums.top1[head] += (log_q.argmax(-1) == teacher_top).sum().double()
            sums.prior_kl[head] += kl_divergence(log_prior, p).sum().double()
            sums.prior_top1[head] += (log_prior.argmax(-1) == teacher_top).sum().double()
        sums.rows += p.shape[0] * p.shape[1]
    model.train()
    total: ValSums = sums.all_sum()
    samples, rows = int(total.samples), total.rows.item()

    def mean(value: torch.Tensor, count: float) -> float | None:
        return value.item() / count if count else None  # no sample: no score, not a perfect 0

    if not heads:
        return {"samples": samples, "mse": mean(total.mse, samples),
                "silence_mse": mean(total.silence_mse, samples)}  # fmt: skip
    names = ("kl", "top1", "prior_kl", "prior_top1", *(("l2",) if loss == "l2" else ()))
    record: dict[str, Any] = {"samples": samples}
    for head in heads:
        record[head] = {name: mean(getattr(total, name)[head], rows) for name in names}
    record["loss"] = sum(record[h][loss] for h in heads) / len(heads) if rows else None
    return record


def smoothed(distribution: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """At least `floor` for every class, renormalised."""
    distribution = distribution.clamp_min(floor)
    return distribution / distribution.sum()
