"""Distil the visual teachers into SoundNet, streaming WebDataset shards (SPEC.md sections 2, 5).

    python -m trainer.main --shards='OUT/shards/shard-{000000..000009}.tar' --out=RUN
    python -m trainer.main --shards=OUT --out=RUN --resume --steps=20000
    torchrun --nproc-per-node=N -m trainer.main --shards=OUT --out=RUN

One process on CPU or a GPU, or DDP under torchrun (gloo on CPU, NCCL on GPUs; each rank reads
its own shards). The run directory gets:

    RUN/step-N.pt, RUN/last.pt   checkpoints (trainer/checkpoint.py; weights_only-loadable)
    RUN/metrics.jsonl            one JSON object a line: kind train / val / skip / data_error
    RUN/run.json                 config, world size, timings, the shards each rank read
    RUN/tensorboard/             the same numbers, when tensorboard is installed

The file reads top to bottom: options, setup, data, model, the loop.
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
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from schemas.io import atomic_path, write_text_atomic
from trainer import data
from trainer.autoencoder import reconstruction_loss
from trainer.checkpoint import (
    capture_rng,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng,
    save_checkpoint,
)
from trainer.losses import LOSSES, distillation_loss, kl_divergence
from trainer.model import ARCHS, SoundNet, build_model

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
                   help="training crop, whole 5 s teacher steps (the paper: 20)")  # fmt: skip
    g.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True,
                   help="resample shards per rank (balanced); no: each rank its own share")  # fmt: skip
    g.add_argument("--shuffle-buffer", type=int, default=256, help="samples (0: no shuffling)")
    g.add_argument("--workers", type=int, default=default_workers(),
                   help="data loader processes per rank")  # fmt: skip
    g = p.add_argument_group("model and loss")
    g.add_argument("--arch", choices=ARCHS, default="soundnet8", help="the student")
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


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Pure function of the step, so a resumed run continues the same schedule."""
    if args.warmup_steps and step <= args.warmup_steps:
        return args.lr * step / args.warmup_steps
    if args.decay == "none":
        return args.lr
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1, progress)))


# ---------------------------------------------------------------------------------------------
# Small helpers: distributed setup, metrics, checkpoints


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


def all_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


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


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def publish_last(step_path: Path, last: Path) -> None:
    """last.pt = step-N.pt, atomically (a hard link where the file system has them)."""
    with atomic_path(last) as tmp:
        try:
            os.link(step_path, tmp)
        except OSError:
            tmp.write_bytes(step_path.read_bytes())


def init_weights(model: nn.Module, spec: str) -> None:
    """Copy the layers of `spec` whose names and shapes match (fine-tuning): one of our
    checkpoints, or what trainer.pretrained knows (original:soundnet8, a .t7 release)."""
    try:
        from trainer.pretrained import load_pretrained
    except ImportError:  # without it, our own checkpoints only

        def load_pretrained(spec: str) -> tuple[nn.Module, Any]:
            return model_from_checkpoint(load_checkpoint(spec)), None

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


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    prior: dict[str, torch.Tensor],
    device: torch.device,
    max_batches: int,
    autocast: Any,
) -> dict[str, Any]:
    """Sums over this rank's shards, all-reduced: per head the student's mean KL(teacher ||
    student) and top-1 agreement with the teacher, and the same for always predicting `prior`
    (the mean training distribution), so one sees whether the student learned anything."""
    model.eval()
    heads = list(prior)
    sums = torch.zeros(len(heads) * 4 + 2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        wave = batch["wave"].to(device)
        with autocast:
            out = model(wave)
        sums[-1] += len(wave)
        if not heads:  # autoencoder: reconstruction MSE beside predicting silence
            sums[0] += reconstruction_loss(out, wave).double() * len(wave)
            sums[1] += reconstruction_loss(torch.zeros_like(wave), wave).double() * len(wave)
            continue
        for j, head in enumerate(heads):
            p = batch["targets"][head].to(device)
            log_q = out[head].float()
            log_prior = prior[head].log().to(device).expand_as(p)
            teacher_top = p.argmax(-1)
            sums[4 * j + 0] += kl_divergence(log_q, p).sum().double()
            sums[4 * j + 1] += (log_q.argmax(-1) == teacher_top).sum().double()
            sums[4 * j + 2] += kl_divergence(log_prior, p).sum().double()
            sums[4 * j + 3] += (log_prior.argmax(-1) == teacher_top).sum().double()
        sums[-2] += p.shape[0] * p.shape[1]
    model.train()
    sums = all_sum(sums).tolist()
    samples, rows = int(sums[-1]), max(1.0, sums[-2])
    if not heads:
        return {"samples": samples, "mse": sums[0] / max(1, samples),
                "silence_mse": sums[1] / max(1, samples)}  # fmt: skip
    record: dict[str, Any] = {"samples": samples}
    for j, head in enumerate(heads):
        kl, top1, prior_kl, prior_top1 = (sums[4 * j + k] / rows for k in range(4))
        record[head] = {"kl": kl, "top1": top1, "prior_kl": prior_kl, "prior_top1": prior_top1}
    record["loss"] = sum(record[h]["kl"] for h in heads) / len(heads)
    return record


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank, world, device = setup_device(args.device)
    is_main = rank == 0
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop length: pick the fastest kernels

    # --- data: which shards, which heads, their label names
    try:
        source = data.resolve_shards(args.shards)
        val_source = data.resolve_shards(args.val_shards) if args.val_shards else None
        found = data.inspect_heads(source.urls)
    except data.ShardSpecError as err:
        raise SystemExit(f"--shards: {err}") from err
    wanted = [h for h in args.heads.split(",") if h] or list(found)
    unknown = [h for h in wanted if h not in found]
    if unknown:
        raise SystemExit(f"--heads {unknown}: the shards have {sorted(found)}")
    heads = {h: found[h].num_classes for h in wanted}
    labels = data.read_label_names(source, heads)
    distil = args.arch != "autoencoder"
    crop_steps = round(args.crop_seconds / data.STEP_SECONDS)
    if crop_steps < 1 or abs(crop_steps * data.STEP_SECONDS - args.crop_seconds) > 1e-6:
        raise SystemExit(f"--crop-seconds {args.crop_seconds}: must be a multiple of 5 s")
    if not args.resample and len(source.urls) < world * max(1, args.workers):
        raise SystemExit(
            f"--no-resample splits {len(source.urls)} shards between {world} ranks x "
            f"{max(1, args.workers)} workers: some would get none; resample, or use fewer workers"
        )

    # --- model and optimiser, fresh or resumed
    model = build_model(args.arch, heads)
    if isinstance(model, SoundNet) and model.output_steps(crop_steps * data.STEP_SAMPLES) != (
        crop_steps
    ):
        steps_out = model.output_steps(crop_steps * data.STEP_SAMPLES)
        raise SystemExit(
            f"--crop-seconds {args.crop_seconds}: {args.arch} gives {steps_out} output steps for "
            f"{crop_steps} teacher frames; they must match one-to-one (20 s gives 4)"
        )
    model.to(device)  # before the optimiser, so that its resumed state lands on the device
    optimizer = torch.optim.Adam(
        model.parameters(), args.lr, betas=(args.beta1, args.beta2), weight_decay=args.weight_decay
    )
    # the prior baseline: the mean teacher distribution of everything trained on so far
    prior_sum = {h: torch.zeros(n, dtype=torch.float64) for h, n in heads.items()} if distil else {}
    prior_rows = 0
    start = 0
    last_path = out / LAST
    if args.resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt["arch"] != args.arch or ckpt["heads"] != (heads if distil else {}):
            raise SystemExit(
                f"--resume: {last_path} is {ckpt['arch']} with heads {ckpt['heads']}; this run "
                f"is {args.arch} with {heads}: pass the same --arch and --heads"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        prior_sum = {h: t.double() for h, t in ckpt["prior"]["sum"].items()}
        prior_rows = int(ckpt["prior"]["rows"])
        states = ckpt["rng"]
        if len(states) == world:  # the same ranks again: each continues its own streams
            restore_rng(states[rank])
        log.info("resumed from %s at step %d", last_path, start)
    elif args.resume:
        log.info("--resume: no %s yet, starting fresh", last_path)
    elif args.init:
        init_weights(model, args.init)
    starts = gather(start)
    if len(set(starts)) > 1:  # e.g. nodes that do not share --out: they would hang in DDP
        raise SystemExit(
            f"ranks would start at different steps {starts}: --out must be a directory that "
            f"every node sees (a shared file system), so that --resume reads the same {LAST}"
        )
    if start >= args.steps:
        log.info("already at step %d of --steps %d: nothing to do", start, args.steps)
        if dist.is_initialized():
            dist.destroy_process_group()
        return
    raw_model = model
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )

    # --- loaders: a different stream per rank, worker and resumed start
    loader = data.make_loader(
        source.urls, list(heads), args.batch_size, steps=crop_steps, resample=args.resample,
        seed=args.seed + 7919 * start, shuffle_buffer=args.shuffle_buffer,
        workers=args.workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    batches = iter(loader)

    def val_loader() -> Any:
        return data.make_loader(
            val_source.urls, list(heads), args.batch_size, steps=crop_steps, train=False,
            workers=min(args.workers, len(val_source.urls)),
        )  # fmt: skip

    metrics = Metrics(out, is_main, args.tensorboard, start if args.resume else None)
    if is_main:
        log.info(
            "%s, heads %s, %d parameters; %d shards; %d rank(s) on %s%s; steps %d..%d",
            args.arch, heads, sum(p.numel() for p in raw_model.parameters()), len(source.urls),
            world, device, " (bf16)" if use_bf16 else "", start + 1, args.steps,
        )  # fmt: skip

    def save(step: int) -> None:
        """step-N.pt and last.pt, refusing non-finite weights; every rank gives its RNG."""
        rngs = gather(capture_rng())
        # every rank checks (the weights are the same everywhere), so all stop together
        if not all(torch.isfinite(t).all() for t in raw_model.state_dict().values()):
            raise NonFiniteLoss(f"step {step}: the weights are not finite; not saving")
        if not is_main:
            return
        path = out / f"step-{step}.pt"
        save_checkpoint(
            path, raw_model, args.arch, labels if distil else {}, step=step,
            optimizer=optimizer.state_dict(), rng=rngs, config=vars(args), world_size=world,
            prior={"sum": {h: t.float() for h, t in prior_sum.items()}, "rows": prior_rows},
        )  # fmt: skip
        publish_last(path, last_path)
        if args.keep_checkpoints:
            old = sorted(out.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            for stale in old[: -args.keep_checkpoints]:
                stale.unlink()

    # --- the loop
    bar = tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True,
               disable=not (is_main and args.progress))  # fmt: skip
    shards_read: Counter[str] = Counter()
    skipped = {"shards": 0, "samples": 0}
    reported: set[str] = set()
    window = {"loss": 0.0, "steps": 0, **{f"loss_{h}": 0.0 for h in heads}}
    skipped_in_a_row, samples_seen, began = 0, 0, time.time()
    tick = time.time()
    step = start
    try:
        for step in range(start + 1, args.steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                raise SystemExit(f"trainer: the shard stream {args.shards} ended") from None
            events = batch["events"]
            shards_read.update(events["shards"])
            for url, message in events["shard_errors"] + events["sample_errors"]:
                if url not in reported:  # one line per bad shard in metrics.jsonl
                    reported.add(url)
                    metrics.write({"kind": "data_error", "step": step, "url": url,
                                   "error": message, "rank": rank})  # fmt: skip
            wave = batch["wave"].to(device, non_blocking=True)
            targets = {h: t.to(device, non_blocking=True) for h, t in batch["targets"].items()}
            lr = learning_rate(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr

            with autocast:
                output = model(wave)
            if distil:
                loss, per_head = distillation_loss(output, targets, args.loss)
            else:
                loss, per_head = reconstruction_loss(output, wave), {}

            # one all-reduce per step: loss parts, non-finite flag, data counts, prior sums
            row_sums = [targets[h].sum(dim=(0, 1)).double() for h in prior_sum]
            local = torch.cat([
                torch.stack([loss.detach().double(), (~torch.isfinite(loss)).double(),
                             torch.tensor(float(len(events["shard_errors"])), device=device),
                             torch.tensor(float(len(events["sample_errors"])), device=device)]),
                torch.stack([v.detach().double() for v in per_head.values()])
                if per_head else torch.zeros(0, dtype=torch.float64, device=device),
                *row_sums,
            ])  # fmt: skip
            total = all_sum(local).cpu()
            skipped["shards"] += int(total[2])
            skipped["samples"] += int(total[3])

            finite = total[1] == 0  # the same answer on every rank, so all act alike
            if not finite:
                message = (
                    f"step {step}: the loss is not finite ({loss.item()} on rank {rank}; "
                    f"per head { ({h: v.item() for h, v in per_head.items()}) }, lr {lr:g})"
                )
                if args.on_nonfinite == "stop":
                    raise NonFiniteLoss(
                        f"{message}. Stopped without saving; the last good checkpoint is "
                        f"{last_path if last_path.exists() else 'none'}. Try a lower --lr, "
                        "--grad-clip, or --on-nonfinite skip"
                    )
                skipped_in_a_row += 1
                metrics.write({"kind": "skip", "step": step, "reason": message})
                log.warning("%s: skipped", message)
                if skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
                    raise NonFiniteLoss(f"{skipped_in_a_row} non-finite steps in a row; stopping")

            loss.backward()  # also when skipping: keeps DDP's gradient reducer in step
            if finite:
                if args.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                optimizer.step()
                skipped_in_a_row = 0
                samples_seen += len(wave) * world
                offset = 4 + len(per_head)
                for h in prior_sum:
                    prior_sum[h] += total[offset : offset + len(prior_sum[h])]
                    offset += len(prior_sum[h])
                prior_rows += len(wave) * world * crop_steps
                window["loss"] += total[0].item() / world
                for j, h in enumerate(per_head):
                    window[f"loss_{h}"] += total[4 + j].item() / world
                window["steps"] += 1
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)

            last_step = step == args.steps
            if (step % args.log_every == 0 or last_step) and window["steps"]:
                elapsed = time.time() - tick
                n = window.pop("steps")
                rate = n * args.batch_size * world / max(elapsed, 1e-9)
                record = {"kind": "train", "step": step, **{k: v / n for k, v in window.items()},
                          "lr": lr, "samples_per_s": rate, "samples": samples_seen,
                          "skipped_shards": skipped["shards"],
                          "skipped_samples": skipped["samples"],
                          "time_s": time.time() - began}  # fmt: skip
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{rate:.1f}")
                window = {k: 0.0 for k in window} | {"steps": 0}
                tick = time.time()
            if val_source is not None and (
                last_step or (args.val_every and step % args.val_every == 0)
            ):
                prior = {h: (s / max(1, prior_rows)).float() for h, s in prior_sum.items()}
                result = validate(raw_model, val_loader(), prior, device, args.val_batches,
                                  autocast)  # fmt: skip
                metrics.write({"kind": "val", "step": step, **result})
                if is_main:
                    log.info("step %d validation: %s", step, json.dumps(result))
                tick = time.time()  # validation time is not training time
            if last_step or (args.checkpoint_every and step % args.checkpoint_every == 0):
                save(step)
                tick = time.time()
    except NonFiniteLoss as err:
        raise SystemExit(f"trainer: {err}") from err
    finally:
        bar.close()
        metrics.close()

    # --- a machine-readable record of the run
    per_rank = gather({"rank": rank, "shards_read": dict(shards_read)})
    if is_main:
        record = {
            "config": vars(args), "world_size": world, "device": str(device),
            "bf16": use_bf16, "start_step": start, "end_step": step,
            "samples": samples_seen, "seconds": time.time() - began,
            "skipped_shards": skipped["shards"], "skipped_samples": skipped["samples"],
            "heads": heads, "shards": len(source.urls), "ranks": per_rank,
            "torch": torch.__version__,
        }  # fmt: skip
        write_text_atomic(out / "run.json", json.dumps(record, indent=2) + "\n")
        log.info("done: step %d, %s", step, out / LAST)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
