"""A run's state on disk: RUN/step-N.pt and RUN/last.pt (models/checkpoint.py's format, plus the
optimiser, every rank's random states, the prior baseline and the config), and resuming from it."""

from __future__ import annotations

import argparse
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from schemas.io import atomic_path
from trainer.distributed import gather
from trainer.losses import NonFiniteLoss
from trainer.stats import Prior

log = logging.getLogger("trainer")

LAST = "last.pt"
# options that change how a run is carried out, not what it computes: changing them on --resume
# goes without a word
RUN_MECHANICS = {
    "resume", "steps", "out", "init", "workers", "log_every", "checkpoint_every",
    "keep_checkpoints", "val_every", "val_batches", "device", "progress", "tensorboard",
}  # fmt: skip


def capture_rng() -> dict[str, Any]:
    """This process's random states (torch, CUDA, Python, NumPy) as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def publish_last(step_path: Path, last: Path) -> None:
    """last.pt = step-N.pt, atomically (a hard link where the file system has them)."""
    with atomic_path(last) as tmp:
        try:
            os.link(step_path, tmp)
        except OSError:
            tmp.write_bytes(step_path.read_bytes())


@dataclass
class Checkpoints:
    """RUN/step-N.pt and RUN/last.pt: the model, optimiser, step, every rank's RNG, the prior,
    the config; only rank 0 writes."""

    out: Path
    model: nn.Module  # unwrapped from DDP
    optimizer: torch.optim.Optimizer
    args: argparse.Namespace
    labels: dict[str, list[str]]
    world: int
    is_main: bool

    @property
    def last(self) -> Path:
        return self.out / LAST

    def save(self, step: int, prior: Prior, samples: int) -> None:
        rngs = gather(capture_rng())
        # every rank checks (the weights are the same everywhere), so all stop together
        if not all(torch.isfinite(t).all() for t in self.model.state_dict().values()):
            raise NonFiniteLoss(f"step {step}: the weights are not finite; not saving")
        if not self.is_main:
            return
        path = self.out / f"step-{step}.pt"
        save_checkpoint(
            path, self.model, self.args.arch, self.labels, step=step,
            optimizer=self.optimizer.state_dict(), rng=rngs, config=vars(self.args),
            world_size=self.world, prior=prior.state(), samples=samples,
        )  # fmt: skip
        publish_last(path, self.last)
        if self.args.keep_checkpoints:
            for stale in self.step_files()[: -self.args.keep_checkpoints]:
                stale.unlink()

    def apply_changed_options(self, saved: dict[str, Any]) -> None:
        """Options given on resuming apply from here on (the optimiser's saved betas and weight
        decay would otherwise silently win), and a changed one is said: it changes the run."""
        changed = {
            name: (saved[name], value)
            for name, value in vars(self.args).items()
            if name in saved and saved[name] != value and name not in RUN_MECHANICS
        }
        if changed:
            log.warning("--resume: options changed since %s, from here on: %s", self.last,
                        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))  # fmt: skip
        for group in self.optimizer.param_groups:
            group["betas"] = (self.args.beta1, self.args.beta2)
            group["weight_decay"] = self.args.weight_decay

    def agree_on(self, start: int) -> None:
        """Every rank must start at the same step, or DDP hangs."""
        starts = gather(start)
        if len(set(starts)) > 1:  # e.g. nodes that do not share --out
            raise SystemExit(
                f"ranks would start at different steps {starts}: --out must be a directory that "
                f"every node sees (a shared file system), so that --resume reads the same {LAST}"
            )

    def step_files(self) -> list[Path]:
        """RUN/step-N.pt, oldest first."""
        return sorted(self.out.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def refuse_earlier_run(self) -> None:
        """A run without --resume in a folder that holds another run's checkpoints would mix
        the two (--keep-checkpoints then deletes the new run's own files first)."""
        found = [p.name for p in self.step_files()] + ([LAST] if self.last.exists() else [])
        if found:
            raise SystemExit(
                f"--out {self.out} holds an earlier run's checkpoints ({', '.join(found[-3:])}): "
                "--resume continues it; a new run needs another --out"
            )

    def resume(self, heads: dict[str, int], rank: int) -> tuple[int, Prior, int]:
        """Model, optimiser and this rank's RNG from last.pt; its step, prior and the samples
        trained on until then (0 from checkpoints written before they were kept)."""
        try:
            ckpt = load_checkpoint(self.last)
        except CheckpointError as err:
            others = [p.name for p in self.step_files() if not p.samefile(self.last)]
            raise SystemExit(
                f"--resume: {err}. "
                + (f"Older checkpoints: {', '.join(others[-3:])}; copy the newest good one to "
                   f"{self.last} to go on from it" if others else "No older checkpoint is here")
            ) from err  # fmt: skip
        # in the same order too: the optimiser's state is matched to the parameters by position
        ours = self.model.head_sizes
        if ckpt["arch"] != self.args.arch or list(ckpt["heads"].items()) != list(ours.items()):
            raise SystemExit(
                f"--resume: {self.last} is {ckpt['arch']} with heads {ckpt['heads']}; this run "
                f"is {self.args.arch} with {heads}: pass the same --arch and --heads (in the "
                f"same order: --heads={','.join(ckpt['heads'])})"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.apply_changed_options(ckpt.get("config", {}))
        if len(ckpt["rng"]) == self.world:  # the same ranks again: each continues its streams
            restore_rng(ckpt["rng"][rank])
        log.info("resumed from %s at step %d", self.last, ckpt["step"])
        return int(ckpt["step"]), Prior.from_state(ckpt["prior"]), int(ckpt.get("samples", 0))
