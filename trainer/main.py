"""Distil the visual teachers into SoundNet, streaming WebDataset shards (SPEC.md sections 2, 5).

    python -m trainer.main --shards='OUT/shards/shard-{000000..000009}.tar' --out=RUN
    python -m trainer.main --shards=OUT --out=RUN --resume --steps=20000
    torchrun --nproc-per-node=N -m trainer.main --shards=OUT --out=RUN

One process on CPU or a GPU, or DDP under torchrun (gloo on CPU, NCCL on GPUs; each rank reads
its own shards). The run directory gets:

    RUN/step-N.pt, RUN/last.pt   checkpoints (models/checkpoint.py; weights_only-loadable)
    RUN/metrics.jsonl            one JSON object a line: kind train / val / skip / data_error
    RUN/run.json                 config, world size, timings, the shards each rank read
    RUN/tensorboard/             the same numbers, when tensorboard is installed

The file reads top to bottom: options, the pieces of a run (process group, step statistics,
the prior baseline, metrics, checkpoints, validation), then `main`: options -> data -> model
(fresh, --init or resumed) -> the loop -> the record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.checkpoint import load_checkpoint, save_checkpoint
from models.pretrained import load_pretrained
from models.registry import ARCHS, DEFAULT_ARCH, build_model
from models.soundnet import SoundNet
from schemas import SAMPLE_RATE, FrameIntervalError, frames_per_step
from schemas.io import atomic_path, write_text_atomic
from trainer import data
from trainer.losses import LOSSES, distillation_loss, kl_divergence, reconstruction_loss
from trainer.rng import capture_rng, restore_rng

log = logging.getLogger("trainer")

LAST = "last.pt"
METRICS = "metrics.jsonl"
MAX_SKIPPED_IN_A_ROW = 10


# ---------------------------------------------------------------------------------------------
# Options: the paper's defaults (Adam, lr 0.001, beta1 0.9, batch 64, 20 s crops)


def default_workers() -> int:
    """The machine's cores shared between the ranks on it (at most 8 a rank)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(8, (os.cpu_count() or 1) // local_ranks))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.main",
        description="Distil visual teachers into SoundNet from WebDataset shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--shards", required=True, help="brace pattern, glob, pipeline output dir, "
                   "dir of .tar, or http(s):// / pipe: URLs; join several with '::'")  # fmt: skip
    g.add_argument("--val-shards", help="validation shards, same forms as --shards")
    g.add_argument("--heads", default="", help="comma-separated teacher heads; empty: all")
    g.add_argument("--crop-seconds", type=float, default=20.0,
                   help="training crop, whole output steps of the model (SoundNet-8's: 5 s; "
                   "the paper: 20)")  # fmt: skip
    g.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True,
                   help="resample shards per rank (balanced); no: each rank its own share")  # fmt: skip
    g.add_argument("--shuffle-buffer", type=int, default=256, help="samples (0: no shuffling)")
    g.add_argument("--workers", type=int, default=default_workers(),
                   help="data loader processes per rank")  # fmt: skip
    g = p.add_argument_group("model and loss")
    g.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH, help="the student")
    g.add_argument("--loss", choices=LOSSES, default="kl", help="l2: the paper's ablation")
    g.add_argument("--init", help="start from these weights (matching layers): a checkpoint, "
                   "original:soundnet8, a .t7 release")  # fmt: skip
    g = p.add_argument_group("optimiser")
    g.add_argument("--batch-size", type=int, default=64, help="per rank")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    g.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 penalty")
    g.add_argument("--steps", type=int, default=100_000, help="total optimiser steps")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear lr warmup")
    g.add_argument("--decay", choices=("none", "cosine"), default="none",
                   help="lr schedule after warmup (the paper: none)")  # fmt: skip
    g.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine decay")
    g.add_argument("--grad-clip", type=float, default=0.0, help="max grad norm (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--log-every", type=int, default=10, help="steps per metrics line")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="(and at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=0, help="keep the newest N (0: all)")
    g.add_argument("--val-every", type=int, default=1000, help="(and at the end)")
    g.add_argument("--val-batches", type=int, default=0, help="per rank (0: the whole set)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="init, crops, shard order")
    g.add_argument("--on-nonfinite", choices=("stop", "skip"), default="stop",
                   help="a NaN/inf loss stops the run, or skips that step (logged)")  # fmt: skip
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also log to OUT/tensorboard when tensorboard is installed")  # fmt: skip
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on rank 0")  # fmt: skip
    return p


def set_learning_rate(
    optimizer: torch.optim.Optimizer, step: int, args: argparse.Namespace
) -> float:
    lr = learning_rate(step, args)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Pure function of the step, so a resumed run continues the same schedule."""
    if args.warmup_steps and step <= args.warmup_steps:
        return args.lr * step / args.warmup_steps
    if args.decay == "none":
        return args.lr
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1, progress)))


# ---------------------------------------------------------------------------------------------
# The process group, and numbers summed over its ranks


class NonFiniteLoss(RuntimeError):
    pass


def setup_device(choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when launched by it."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {choice}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )


def seed_process(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop length: pick the fastest kernels


def parallel(
    model: nn.Module, world: int, device: torch.device, precision: str
) -> tuple[nn.Module, Any, bool]:
    """The model as the loop runs it (DDP across ranks), its autocast, and whether bf16."""
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    return model, autocast, use_bf16


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Summed:
    """A dataclass of tensors and dicts of tensors; `all_sum` adds them up over the ranks in
    one all-reduce (packed into one float64 buffer and unpacked by field name)."""

    def all_sum(self) -> Any:
        named: dict[tuple[str, str | None], torch.Tensor] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            items = value.items() if isinstance(value, dict) else [(None, value)]
            named |= {(f.name, key): tensor for key, tensor in items}
        flat = torch.cat([t.detach().double().reshape(-1) for t in named.values()])
        if dist.is_initialized():
            dist.all_reduce(flat)
        parts = dict(zip(named, flat.cpu().split([t.numel() for t in named.values()]), strict=True))
        summed = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            keys = list(value) if isinstance(value, dict) else [None]
            shaped = {k: parts[(f.name, k)].reshape(named[(f.name, k)].shape) for k in keys}
            summed[f.name] = shaped if isinstance(value, dict) else shaped[None]
        return type(self)(**summed)


@dataclass
class StepStats(Summed):
    """One training step's numbers on this rank (or, after `all_sum`, over all ranks)."""

    loss: torch.Tensor
    nonfinite: torch.Tensor  # 1 where the loss is NaN or infinite
    shard_errors: torch.Tensor  # shards and samples the loader skipped since the last batch
    sample_errors: torch.Tensor
    head_loss: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # for the prior

    @classmethod
    def of(
        cls,
        loss: torch.Tensor,
        head_loss: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        events: Mapping[str, list],
    ) -> StepStats:
        def count(n: int) -> torch.Tensor:
            return torch.tensor(float(n), device=loss.device)

        return cls(
            loss=loss.detach(),
            nonfinite=(~torch.isfinite(loss.detach())).double(),
            shard_errors=count(len(events["shard_errors"])),
            sample_errors=count(len(events["sample_errors"])),
            head_loss=dict(head_loss),
            teacher_sums={h: t.sum(dim=(0, 1)) for h, t in targets.items()},
        )


@dataclass
class Prior:
    """The prior baseline: always predicting the mean teacher distribution of everything
    trained on so far, so that validation shows whether the student learned anything."""

    sums: dict[str, torch.Tensor]  # per head, the teacher rows trained on, summed (float64)
    rows: int = 0

    @classmethod
    def empty(cls, heads: Mapping[str, int]) -> Prior:
        return cls({h: torch.zeros(n, dtype=torch.float64) for h, n in heads.items()})

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Prior:
        return cls({h: t.double() for h, t in state["sum"].items()}, int(state["rows"]))

    def add(self, sums: Mapping[str, torch.Tensor], rows: int) -> None:
        for head in self.sums:
            self.sums[head] += sums[head]
        self.rows += rows

    def distributions(self) -> dict[str, torch.Tensor]:
        return {h: (s / max(1, self.rows)).float() for h, s in self.sums.items()}

    def state(self) -> dict[str, Any]:
        """What checkpoints keep of it."""
        return {"sum": {h: t.float() for h, t in self.sums.items()}, "rows": self.rows}


# ---------------------------------------------------------------------------------------------
# What a run writes: metrics, the loaders' reports, checkpoints


class Metrics:
    """RUN/metrics.jsonl (appended; on resume, lines past the checkpoint are dropped) and
    TensorBoard scalars. Only rank 0 writes."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.path, self.enabled, self.tb = out / METRICS, enabled, None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        elif self.path.is_file():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for name, value in flatten(record).items():
                if isinstance(value, int | float) and name != "step":
                    self.tb.add_scalar(f"{record['kind']}/{name}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrainWindow:
    """The steps since the last `train` line of metrics.jsonl: their mean losses and speed."""

    def __init__(self, heads: list[str]):
        self.heads = heads
        self.reset()

    def reset(self) -> None:
        self.loss, self.head_loss, self.steps = 0.0, dict.fromkeys(self.heads, 0.0), 0
        self.tick = time.time()

    def add(self, total: StepStats, world: int) -> None:
        self.loss += total.loss.item() / world
        for head, value in total.head_loss.items():
            self.head_loss[head] += value.item() / world
        self.steps += 1

    def record(self, step: int, lr: float, samples_per_step: int, **totals: Any) -> dict[str, Any]:
        """The `train` line of these steps: mean losses, lr, samples/s, then the run's totals;
        the window starts again."""
        n = self.steps
        rate = n * samples_per_step / max(time.time() - self.tick, 1e-9)
        losses = {"loss": self.loss / n, **{f"loss_{h}": v / n for h, v in self.head_loss.items()}}
        self.reset()
        return {"kind": "train", "step": step, **losses, "lr": lr, "samples_per_s": rate, **totals}


def nonfinite_step(
    args: argparse.Namespace,
    step: int,
    loss: torch.Tensor,
    per_head: Mapping[str, torch.Tensor],
    lr: float,
    rank: int,
    last: Path,
    metrics: Metrics,
    skipped_in_a_row: int,
) -> None:
    """A NaN/inf loss: stop without saving, or (--on-nonfinite skip) log the skipped step."""
    message = (
        f"step {step}: the loss is not finite ({loss.item()} on rank {rank}; "
        f"per head { ({h: v.item() for h, v in per_head.items()}) }, lr {lr:g})"
    )
    if args.on_nonfinite == "stop":
        raise NonFiniteLoss(
            f"{message}. Stopped without saving; the last good checkpoint is "
            f"{last if last.exists() else 'none'}. Try a lower --lr, --grad-clip, or "
            "--on-nonfinite skip"
        )
    metrics.write({"kind": "skip", "step": step, "reason": message})
    log.warning("%s: skipped", message)
    if skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
        raise NonFiniteLoss(f"{skipped_in_a_row} non-finite steps in a row; stopping")


class DataLog:
    """What the loaders report with each batch: the shards read (for run.json), and bad shards
    and samples (counted, and one `data_error` line per shard in metrics.jsonl)."""

    def __init__(self, metrics: Metrics, rank: int):
        self.metrics, self.rank = metrics, rank
        self.shards_read: Counter[str] = Counter()
        self.reported: set[str] = set()
        self.skipped = {"shards": 0, "samples": 0}

    def note(self, events: Mapping[str, list], step: int) -> None:
        self.shards_read.update(events["shards"])
        for url, message in events["shard_errors"] + events["sample_errors"]:
            if url not in self.reported:
                self.reported.add(url)
                self.metrics.write({"kind": "data_error", "step": step, "url": url,
                                    "error": message, "rank": self.rank})  # fmt: skip

    def totals(self) -> dict[str, int]:
        return {
            "skipped_shards": self.skipped["shards"],
            "skipped_samples": self.skipped["samples"],
        }

    def count(self, total: StepStats) -> None:
        """Every rank's skips, summed in the step's all-reduce."""
        self.skipped["shards"] += int(total.shard_errors)
        self.skipped["samples"] += int(total.sample_errors)


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

    def save(self, step: int, prior: Prior) -> None:
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
            world_size=self.world, prior=prior.state(),
        )  # fmt: skip
        publish_last(path, self.last)
        if self.args.keep_checkpoints:
            old = sorted(self.out.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            for stale in old[: -self.args.keep_checkpoints]:
                stale.unlink()

    def agree_on(self, start: int) -> None:
        """Every rank must start at the same step, or DDP hangs."""
        starts = gather(start)
        if len(set(starts)) > 1:  # e.g. nodes that do not share --out
            raise SystemExit(
                f"ranks would start at different steps {starts}: --out must be a directory that "
                f"every node sees (a shared file system), so that --resume reads the same {LAST}"
            )

    def resume(self, heads: dict[str, int], rank: int) -> tuple[int, Prior]:
        """Model, optimiser and this rank's RNG from last.pt; its step and prior."""
        ckpt = load_checkpoint(self.last)
        if ckpt["arch"] != self.args.arch or ckpt["heads"] != self.model.head_sizes:
            raise SystemExit(
                f"--resume: {self.last} is {ckpt['arch']} with heads {ckpt['heads']}; this run "
                f"is {self.args.arch} with {heads}: pass the same --arch and --heads"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if len(ckpt["rng"]) == self.world:  # the same ranks again: each continues its streams
            restore_rng(ckpt["rng"][rank])
        log.info("resumed from %s at step %d", self.last, ckpt["step"])
        return int(ckpt["step"]), Prior.from_state(ckpt["prior"])


def run_record(
    args: argparse.Namespace, shards: Shards, data_log: DataLog, ranks: list, **progress: Any
) -> dict[str, Any]:
    """RUN/run.json: the config, how the run went, what it skipped and which shards it read."""
    return {"config": vars(args), **progress, **data_log.totals(), "heads": shards.heads,
            "shards": len(shards.train.urls), "ranks": ranks,
            "torch": torch.__version__}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Data and model: crops in the model's steps, teacher frames aligned to them, --init


@dataclass(frozen=True)
class Shards:
    """The run's data as the options name it: shards, heads, class names."""

    train: data.ShardSource
    val: data.ShardSource | None
    found: data.ShardInfo  # what the first training samples say
    val_found: data.ShardInfo | None
    heads: dict[str, int]  # the heads trained, and their sizes
    labels: dict[str, list[str]]


def open_shards(args: argparse.Namespace, world: int) -> Shards:
    """--shards, --val-shards and --heads, checked; the class names of the heads."""
    try:
        source = data.resolve_shards(args.shards)
        val_source = data.resolve_shards(args.val_shards) if args.val_shards else None
        found = data.inspect_shards(source.urls)
        val_found = data.inspect_shards(val_source.urls) if val_source else None
    except data.ShardSpecError as err:
        raise SystemExit(f"--shards: {err}") from err
    wanted = [h for h in args.heads.split(",") if h] or list(found.heads)
    unknown = [h for h in wanted if h not in found.heads]
    if unknown:
        raise SystemExit(f"--heads {unknown}: the shards have {sorted(found.heads)}")
    heads = {h: found.heads[h].num_classes for h in wanted}
    if not args.resample and len(source.urls) < world * max(1, args.workers):
        raise SystemExit(
            f"--no-resample splits {len(source.urls)} shards between {world} ranks x "
            f"{max(1, args.workers)} workers: some would get none; resample, or use fewer workers"
        )
    labels = data.read_label_names(source, heads)
    return Shards(source, val_source, found, val_found, heads, labels)


def crop_steps_of(args: argparse.Namespace, model: nn.Module) -> int:
    """--crop-seconds in the model's output steps, which must map one-to-one onto its heads."""
    step_s = model.step_samples / SAMPLE_RATE
    steps = round(args.crop_seconds / step_s)
    if steps < 1 or abs(steps * step_s - args.crop_seconds) > 1e-6:
        raise SystemExit(f"--crop-seconds {args.crop_seconds}: must be a multiple of {step_s:g} s")
    if isinstance(model, SoundNet) and model.output_steps(steps * model.step_samples) != steps:
        raise SystemExit(
            f"--crop-seconds {args.crop_seconds}: {args.arch} gives "
            f"{model.output_steps(steps * model.step_samples)} output steps for {steps} teacher "
            f"frames; they must match one-to-one (20 s gives 4)"
        )
    return steps


def check_frame_intervals(shards: Shards, model: nn.Module) -> None:
    """Refuse, before any step, shards whose frame interval does not divide the model's step
    (the autoencoder reads no teacher rows: any interval will do)."""
    if not model.head_sizes:
        return
    for option, info in (("--shards", shards.found), ("--val-shards", shards.val_found)):
        if info is None or info.frame_interval_s is None:
            continue  # no samples, or each read so far is labelled as a whole
        try:
            frames = frames_per_step(info.frame_interval_s, model.step_samples, where=info.where)
        except FrameIntervalError as err:
            raise SystemExit(f"{option}: {err}") from None
        log.info("%s: frame interval %g s, %d frame(s) per output step of %g s", option,
                 info.frame_interval_s, frames, model.step_samples / SAMPLE_RATE)  # fmt: skip


def init_weights(model: nn.Module, spec: str) -> None:
    """Copy the layers of `spec` whose names and shapes match (fine-tuning): one of our
    checkpoints, original:soundnet8, a .t7 release (anything models.pretrained loads)."""
    try:
        state = load_pretrained(spec)[0].state_dict()
    except (ValueError, OSError) as err:  # CheckpointError, PretrainedError: say which and why
        raise SystemExit(f"--init {spec}: {err}") from err
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise SystemExit(f"--init {spec}: no layer matches this {type(model).__name__}")
    model.load_state_dict(matched, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in matched})
    log.info("--init %s: %d tensors loaded; freshly initialised: %s", spec, len(matched), fresh)


# ---------------------------------------------------------------------------------------------
# Validation: the student's KL and top-1 agreement per head, beside the prior baseline


@dataclass
class ValSums(Summed):
    samples: torch.Tensor
    rows: torch.Tensor  # teacher rows scored: batch x steps
    kl: dict[str, torch.Tensor]  # per head: the student's KL(teacher || student), summed
    top1: dict[str, torch.Tensor]  # the student's argmax agreeing with the teacher's
    prior_kl: dict[str, torch.Tensor]  # the same for always predicting the prior
    prior_top1: dict[str, torch.Tensor]
    mse: torch.Tensor  # the autoencoder's reconstruction MSE, summed over samples
    silence_mse: torch.Tensor  # ... and that of predicting silence

    @classmethod
    def zeros(cls, heads: list[str], device: torch.device) -> ValSums:
        def zero() -> torch.Tensor:
            return torch.zeros((), dtype=torch.float64, device=device)

        per_head = [{h: zero() for h in heads} for _ in range(4)]
        return cls(zero(), zero(), *per_head, zero(), zero())


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    prior: Prior,
    device: torch.device,
    max_batches: int,
    autocast: Any,
) -> dict[str, Any]:
    """This rank's shards, summed over the ranks: per head the student's mean KL(teacher ||
    student) and top-1 agreement with the teacher beside those of always predicting `prior`
    (the autoencoder: its reconstruction MSE beside predicting silence)."""
    model.eval()
    distributions = prior.distributions()
    heads = list(distributions)
    sums = ValSums.zeros(heads, device)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        wave = batch["wave"].to(device)
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
            p = batch["targets"][head].to(device)
            log_q = out[head].float()
            log_prior = distributions[head].log().to(device).expand_as(p)
            teacher_top = p.argmax(-1)
            sums.kl[head] += kl_divergence(log_q, p).sum().double()
            sums.top1[head] += (log_q.argmax(-1) == teacher_top).sum().double()
            sums.prior_kl[head] += kl_divergence(log_prior, p).sum().double()
            sums.prior_top1[head] += (log_prior.argmax(-1) == teacher_top).sum().double()
        sums.rows += p.shape[0] * p.shape[1]
    model.train()
    total: ValSums = sums.all_sum()
    samples, rows = int(total.samples), max(1.0, total.rows.item())
    if not heads:
        return {"samples": samples, "mse": total.mse.item() / max(1, samples),
                "silence_mse": total.silence_mse.item() / max(1, samples)}  # fmt: skip
    record: dict[str, Any] = {"samples": samples}
    for head in heads:
        record[head] = {name: getattr(total, name)[head].item() / rows
                        for name in ("kl", "top1", "prior_kl", "prior_top1")}  # fmt: skip
    record["loss"] = sum(record[h]["kl"] for h in heads) / len(heads)
    return record


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    # --- options, and this process's place in the run
    args = build_parser().parse_args(argv)
    rank, world, device = setup_device(args.device)
    is_main = rank == 0
    setup_logging(rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_process(args.seed + rank, device)

    # --- data: which shards, which heads, their class names and frame interval
    shards = open_shards(args, world)
    heads, distil = shards.heads, args.arch != "autoencoder"  # the autoencoder: no teacher rows

    # --- model and optimiser: fresh, --init, or resumed; crops in its output steps
    model = build_model(args.arch, heads)
    crop_steps = crop_steps_of(args, model)
    check_frame_intervals(shards, model)
    model.to(device)  # before the optimiser, so that its resumed state lands on the device
    optimizer = torch.optim.Adam(model.parameters(), args.lr, betas=(args.beta1, args.beta2),
                                 weight_decay=args.weight_decay)  # fmt: skip
    checkpoints = Checkpoints(out, model, optimizer, args, shards.labels if distil else {}, world,
                              is_main)  # fmt: skip
    start, prior = 0, Prior.empty(heads if distil else {})
    if args.resume and checkpoints.last.is_file():
        start, prior = checkpoints.resume(heads, rank)
    elif args.resume:
        log.info("--resume: no %s yet, starting fresh", checkpoints.last)
    elif args.init:
        init_weights(model, args.init)
    checkpoints.agree_on(start)
    if start >= args.steps:
        log.info("already at step %d of --steps %d: nothing to do", start, args.steps)
        return leave_process_group()
    raw_model = model
    model, autocast, use_bf16 = parallel(model, world, device, args.precision)

    # --- loaders: a different stream per rank, worker and resumed start
    crops = {"heads": list(heads) if distil else [], "batch_size": args.batch_size,
             "steps": crop_steps, "step_samples": raw_model.step_samples}  # fmt: skip
    batches = iter(data.make_loader(
        shards.train.urls, **crops, resample=args.resample, seed=args.seed + 7919 * start,
        shuffle_buffer=args.shuffle_buffer, workers=args.workers, pin_memory=device.type == "cuda",
    ))  # fmt: skip
    metrics = Metrics(out, is_main, args.tensorboard, start if args.resume else None)
    log.info("%s, heads %s, %d parameters; %d shards; %d rank(s) on %s%s; steps %d..%d",
             args.arch, heads, sum(p.numel() for p in raw_model.parameters()),
             len(shards.train.urls), world, device, " (bf16)" if use_bf16 else "", start + 1,
             args.steps)  # fmt: skip

    # --- the loop: one batch, one step, one all-reduce of its statistics
    bar = tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True,
               disable=not (is_main and args.progress))  # fmt: skip
    data_log, window = DataLog(metrics, rank), TrainWindow(list(heads))
    skipped_in_a_row, samples_seen, began, step = 0, 0, time.time(), start
    try:
        for step in range(start + 1, args.steps + 1):
            batch = next(batches, None)
            if batch is None:
                raise SystemExit(f"trainer: the shard stream {args.shards} ended")
            data_log.note(batch["events"], step)
            wave = batch["wave"].to(device, non_blocking=True)
            targets = {h: t.to(device, non_blocking=True) for h, t in batch["targets"].items()}
            lr = set_learning_rate(optimizer, step, args)
            with autocast:
                output = model(wave)
            if distil:
                loss, per_head = distillation_loss(output, targets, args.loss)
            else:
                loss, per_head = reconstruction_loss(output, wave), {}
            total: StepStats = StepStats.of(loss, per_head, targets, batch["events"]).all_sum()
            data_log.count(total)
            finite = total.nonfinite.item() == 0  # the same answer on every rank: all act alike
            if not finite:  # stops the run, or logs the step as skipped
                skipped_in_a_row += 1
                nonfinite_step(args, step, loss, per_head, lr, rank, checkpoints.last, metrics,
                               skipped_in_a_row)  # fmt: skip
            loss.backward()  # also when skipping: keeps DDP's gradient reducer in step
            if finite:
                if args.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                optimizer.step()
                skipped_in_a_row = 0
                samples_seen += len(wave) * world
                prior.add(total.teacher_sums, len(wave) * world * crop_steps)
                window.add(total, world)
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)

            # logging, validation and checkpoints; their time is not training time
            last_step = step == args.steps
            if (step % args.log_every == 0 or last_step) and window.steps:
                record = window.record(step, lr, args.batch_size * world, samples=samples_seen,
                                       **data_log.totals(), time_s=time.time() - began)  # fmt: skip
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                samples_s=f"{record['samples_per_s']:.1f}")  # fmt: skip
            if shards.val and (last_step or (args.val_every and step % args.val_every == 0)):
                workers = min(args.workers, len(shards.val.urls))
                loader = data.make_loader(shards.val.urls, **crops, train=False, workers=workers)
                result = validate(raw_model, loader, prior, device, args.val_batches, autocast)
                metrics.write({"kind": "val", "step": step, **result})
                log.info("step %d validation: %s", step, json.dumps(result))  # rank 0 logs info
                window.tick = time.time()
            if last_step or (args.checkpoint_every and step % args.checkpoint_every == 0):
                checkpoints.save(step, prior)
                window.tick = time.time()
    except NonFiniteLoss as err:
        raise SystemExit(f"trainer: {err}") from err
    finally:
        bar.close()
        metrics.close()

    # --- a machine-readable record of the run
    ranks = gather({"rank": rank, "shards_read": dict(data_log.shards_read)})
    if is_main:
        write_text_atomic(out / "run.json", json.dumps(run_record(
            args, shards, data_log, ranks, world_size=world, device=str(device), bf16=use_bf16,
            start_step=start, end_step=step, samples=samples_seen, seconds=time.time() - began,
        ), indent=2) + "\n")  # fmt: skip
        log.info("done: step %d, %s", step, checkpoints.last)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
