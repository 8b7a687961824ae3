"""Distil the visual teachers into SoundNet, streaming WebDataset shards (SPEC.md sections 2, 5).

    python -m trainer.main --shards='OUT/shards/shard-{000000..000009}-*.tar' --out=RUN
    python -m trainer.main --shards=OUT --out=RUN --resume --steps=20000
    torchrun --nproc-per-node=N -m trainer.main --shards=OUT --out=RUN

One process on CPU or a GPU, or DDP under torchrun (gloo on CPU, NCCL on GPUs; each rank reads
its own shards). The run directory gets:

    RUN/step-N.pt, RUN/last.pt   checkpoints (models/checkpoint.py; weights_only-loadable)
    RUN/metrics.jsonl            one JSON object a line: kind train / val / skip / data_error
    RUN/run.json                 config, world size, timings, the shards each rank read
    RUN/tensorboard/             the same numbers, when tensorboard is installed

The file reads top to bottom: options, the checks on data and model, then `main`: options ->
data -> model (fresh, --init or resumed) -> the loop -> the record. The pieces of a run live
beside it: trainer/distributed.py (the process group, one all-reduce a step), trainer/stats.py
(step statistics, the prior baseline, metrics), trainer/state.py (checkpoints, resuming),
trainer/validate.py, trainer/data.py (shards to aligned crops), trainer/losses.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from models.pretrained import load_pretrained
from models.registry import ARCHS, DEFAULT_ARCH, build_model
from models.soundnet import SoundNet
from runtime import keep_freed_memory
from runtime.arguments import (
    at_least_one,
    at_least_zero,
    fraction_below_one,
    not_negative,
    positive,
)
from schemas import SAMPLE_RATE, FrameIntervalError, frames_per_step
from schemas.io import write_text_atomic
from trainer import data
from trainer.distributed import gather, leave_process_group, parallel, setup_device
from trainer.losses import LOSSES, NonFiniteLoss, distillation_loss, reconstruction_loss
from trainer.state import Checkpoints
from trainer.stats import DataLog, Metrics, Prior, StepStats, TrainWindow, run_record
from trainer.validate import validate

log = logging.getLogger("trainer")

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
    g.add_argument("--crop-seconds", type=positive, default=20.0,
                   help="training crop, whole output steps of the model (SoundNet-8's: 5 s; "
                   "the paper: 20)")  # fmt: skip
    g.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True,
                   help="resample shards per rank (balanced); no: each rank its own share")  # fmt: skip
    g.add_argument(
        "--shuffle-buffer", type=at_least_zero, default=256, help="samples (0: no shuffling)"
    )
    g.add_argument("--workers", type=at_least_zero, default=default_workers(),
                   help="data loader processes per rank")  # fmt: skip
    g = p.add_argument_group("model and loss")
    g.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH, help="the student")
    g.add_argument("--loss", choices=LOSSES, default="kl", help="l2: the paper's ablation")
    g.add_argument("--init", help="start from these weights (matching layers): a checkpoint, "
                   "original:soundnet8, a .t7 release")  # fmt: skip
    g = p.add_argument_group("optimiser")
    g.add_argument("--batch-size", type=at_least_one, default=64, help="per rank")
    g.add_argument("--lr", type=not_negative, default=1e-3, help="Adam learning rate")
    g.add_argument("--beta1", type=fraction_below_one, default=0.9, help="Adam beta1")
    g.add_argument("--beta2", type=fraction_below_one, default=0.999, help="Adam beta2")
    g.add_argument("--weight-decay", type=not_negative, default=0.0, help="Adam L2 penalty")
    g.add_argument("--steps", type=at_least_one, default=100_000, help="total optimiser steps")
    g.add_argument("--warmup-steps", type=at_least_zero, default=0, help="linear lr warmup")
    g.add_argument("--decay", choices=("none", "cosine"), default="none",
                   help="lr schedule after warmup (the paper: none)")  # fmt: skip
    g.add_argument("--min-lr", type=not_negative, default=0.0, help="end of the cosine decay")
    g.add_argument("--grad-clip", type=not_negative, default=0.0, help="max grad norm (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--log-every", type=at_least_one, default=10, help="steps per metrics line")
    g.add_argument("--checkpoint-every", type=at_least_zero, default=1000, help="(and at the end)")
    g.add_argument(
        "--keep-checkpoints", type=at_least_zero, default=0, help="keep the newest N (0: all)"
    )
    g.add_argument("--val-every", type=at_least_zero, default=1000, help="(and at the end)")
    g.add_argument(
        "--val-batches", type=at_least_zero, default=0, help="per rank (0: the whole set)"
    )
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


def set_learning_rate(
    optimizer: torch.optim.Optimizer, step: int, args: argparse.Namespace
) -> float:
    lr = learning_rate(step, args)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


# ---------------------------------------------------------------------------------------------
# The process, the data and the model


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level, format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
    )
    # also when something else configured logging first (the trainer run in-process)
    logging.getLogger("trainer").setLevel(level)


def seed_process(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop length: pick the fastest kernels


@dataclass(frozen=True)
class Shards:
    """The run's data as the options name it: shards, heads, class names."""

    train: data.ShardSource
    val: data.ShardSource | None
    found: data.ShardInfo  # what the first training samples say
    val_found: data.ShardInfo | None
    heads: dict[str, int]  # the heads trained, and their sizes
    labels: dict[str, list[str]]


def reads_teachers(args: argparse.Namespace) -> bool:
    """The students distil the teachers' rows; the autoencoder baseline reads audio only."""
    return args.arch != "autoencoder"


def open_shards(args: argparse.Namespace, world: int) -> Shards:
    """--shards, --val-shards and --heads, checked; the class names of the heads."""
    option = "--shards"
    try:
        source = data.resolve_shards(args.shards)
        found = data.inspect_shards(source.urls)
        val_source = val_found = None
        if args.val_shards:
            option = "--val-shards"
            val_source = data.resolve_shards(args.val_shards)
            val_found = data.inspect_shards(val_source.urls)
    except data.ShardSpecError as err:
        raise SystemExit(f"{option}: {err}") from err
    wanted = [h for h in args.heads.split(",") if h] or list(found.heads)
    unknown = [h for h in wanted if h not in found.heads]
    if unknown:
        raise SystemExit(f"--heads {unknown}: the shards have {sorted(found.heads)}")
    heads = {h: found.heads[h].num_classes for h in wanted}
    if val_found is not None and reads_teachers(args):  # now, not at step 1000, hours in
        theirs = {h: info.num_classes for h, info in val_found.heads.items()}
        if wrong := {h: theirs.get(h) for h, n in heads.items() if theirs.get(h) != n}:
            raise SystemExit(
                f"--val-shards: heads {theirs} ({val_found.where}), the run trains {heads}: "
                f"{sorted(wrong)} missing or of another size"
            )
    if not args.resample and len(source.urls) < world * max(1, args.workers):
        raise SystemExit(
            f"--no-resample splits {len(source.urls)} shards between {world} ranks x "
            f"{max(1, args.workers)} workers: some would get none; resample, or use fewer workers"
        )
    try:
        labels = data.read_label_names(source, heads)
    except data.ShardSpecError as err:
        raise SystemExit(f"--shards: {err}") from err
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


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    # --- options, and this process's place in the run
    keep_freed_memory()  # first: a CPU step's activations reused, not faulted in afresh
    args = build_parser().parse_args(argv)
    rank, world, device = setup_device(args.device)
    is_main = rank == 0
    setup_logging(rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_process(args.seed + rank, device)

    # --- data: which shards, which heads, their class names and frame interval
    shards = open_shards(args, world)
    heads, distil = shards.heads, reads_teachers(args)

    # --- model and optimiser: fresh, --init, or resumed; crops in its output steps
    model = build_model(args.arch, heads)
    crop_steps = crop_steps_of(args, model)
    check_frame_intervals(shards, model)
    model.to(device)  # before the optimiser, so that its resumed state lands on the device
    optimizer = torch.optim.Adam(model.parameters(), args.lr, betas=(args.beta1, args.beta2),
                                 weight_decay=args.weight_decay)  # fmt: skip
    checkpoints = Checkpoints(out, model, optimizer, args, shards.labels if distil else {}, world,
                              is_main)  # fmt: skip
    start, prior, samples_seen = 0, Prior.empty(heads if distil else {}), 0
    if args.resume and checkpoints.last.is_file():
        start, prior, samples_seen = checkpoints.resume(heads, rank)
        if args.init:
            log.info("--init %s: not used, the run goes on from %s", args.init, checkpoints.last)
    else:
        if args.resume:  # a launch script that always resumes: its first run starts here
            log.info("--resume: no %s yet, starting fresh", checkpoints.last)
        else:
            checkpoints.refuse_earlier_run()
        if args.init:
            init_weights(model, args.init)
    checkpoints.agree_on(start)
    if start >= args.steps:
        log.info("already at step %d of --steps %d: nothing to do", start, args.steps)
        return leave_process_group()
    raw_model = model
    model, autocast, use_bf16 = parallel(model, world, device, args.precision)

    # --- loaders: a different stream per rank, worker and resumed start
    crops = {"heads": heads if distil else {}, "batch_size": args.batch_size,
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
    skipped_in_a_row, began, step = 0, time.time(), start  # samples_seen: since step 0
    try:
        for step in range(start + 1, args.steps + 1):
            batch = next(batches, None)
            if batch is None:
                raise SystemExit(f"trainer: the shard stream {args.shards} ended")
            data_log.note(batch["events"], step)
            wave, targets = data.batch_to(batch, device)  # int16 crosses, scaled on the device
            lr = set_learning_rate(optimizer, step, args)
            if args.on_nonfinite == "skip":  # a skipped step must not leave its BatchNorm stats
                buffers = [b.clone() for b in raw_model.buffers()]
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
            if not finite:  # the overflowing forward wrote inf into the running stats; the
                with torch.no_grad():  # backward still reads them, so restore them after it
                    for buffer, before in zip(raw_model.buffers(), buffers, strict=True):
                        buffer.copy_(before)
            else:
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
            if step % args.log_every == 0 or last_step:
                data_log.flush()  # every rank's data errors, at the same steps on all
                if window.steps:  # not when all its steps were skipped
                    record = window.record(step, lr, args.batch_size * world, samples=samples_seen,
                                           **data_log.totals(), time_s=time.time() - began)  # fmt: skip
                    metrics.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}",
                                    samples_s=f"{record['samples_per_s']:.1f}")  # fmt: skip
            if shards.val and (last_step or (args.val_every and step % args.val_every == 0)):
                workers = min(args.workers, len(shards.val.urls))
                loader = data.make_loader(shards.val.urls, **crops, train=False, workers=workers)
                result = validate(raw_model, loader, prior, device, args.val_batches, autocast,
                                  args.loss)  # fmt: skip
                if not result["samples"]:
                    log.warning("step %d validation: no usable sample in --val-shards", step)
                metrics.write({"kind": "val", "step": step, **result})
                log.info("step %d validation: %s", step, json.dumps(result))  # rank 0 logs info
                window.tick = time.time()
            if last_step or (args.checkpoint_every and step % args.checkpoint_every == 0):
                checkpoints.save(step, prior, samples_seen)
                window.tick = time.time()
    except NonFiniteLoss as err:
        raise SystemExit(f"trainer: {err}") from err
    except data.UnreadableData as err:  # often from a worker: its reason, not its traceback
        raise SystemExit(f"trainer: {err.reason}") from err
    finally:
        bar.close()
        metrics.close()

    # --- a machine-readable record of the run
    ranks = gather({"rank": rank, "shards_read": dict(data_log.shards_read)})
    if is_main:
        write_text_atomic(out / "run.json", json.dumps(run_record(
            args, shards.heads, len(shards.train.urls), data_log, ranks, world_size=world, device=str(device), bf16=use_bf16,
            start_step=start, end_step=step, samples=samples_seen, seconds=time.time() - began,
        ), indent=2) + "\n")  # fmt: skip
        log.info("done: step %d, %s", step, checkpoints.last)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
