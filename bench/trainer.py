"""The trainer's data loader against its train step, on the same machine, in one run.

    .venv/bin/python bench/trainer.py --shards OUT [--batch-size 16] [--workers 2]

Loader alone: the real training loader (shards read, FLAC decoded, aligned 20 s crops, batches)
over --loader-batches batches after a warm-up. Step alone: forward, KL loss, backward and Adam
step of the model on one batch of the same data, already in memory. The loader must outrun the
step, or the accelerator (or CPU) waits on data. Prints `loader_over_step=<ratio>` last: the
loader's samples/s over the step's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# bench/ is sys.path[0]; this file's own name would shadow the trainer package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

from models.registry import build_model  # noqa: E402
from schemas import SAMPLE_RATE  # noqa: E402
from trainer import data  # noqa: E402
from trainer.losses import distillation_loss  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="as trainer.main's --shards")
    p.add_argument("--arch", default="soundnet8", choices=("soundnet8", "soundnet5"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--crop-seconds", type=float, default=20.0)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    source = data.resolve_shards(args.shards)
    heads = {h: info.num_classes for h, info in data.inspect_heads(source.urls).items()}
    model = build_model(args.arch, heads).to(device)
    steps = round(
        args.crop_seconds * SAMPLE_RATE / model.step_samples
    )  # crops of the model's steps
    print(f"{len(source.urls)} shards, heads {heads}, batch {args.batch_size}, {device}")

    # loader alone (the first batches start the workers and fill the shuffle buffer)
    loader = data.make_loader(
        source.urls, list(heads), args.batch_size, steps=steps,
        step_samples=model.step_samples, workers=args.workers,
    )  # fmt: skip
    batches = iter(loader)
    batch = next(batches)
    next(batches)
    began = time.perf_counter()
    for _ in range(args.loader_batches):
        next(batches)
    loader_rate = args.loader_batches * args.batch_size / (time.perf_counter() - began)
    del batches, loader  # stop the workers before timing the step
    print(f"loader: {loader_rate:.1f} samples/s ({args.workers} workers)")

    # train step alone, on a batch of the same data
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.9, 0.999))
    wave = batch["wave"].to(device)
    targets = {h: t.to(device) for h, t in batch["targets"].items()}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step() -> None:
        with autocast:
            loss, _ = distillation_loss(model(wave), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_rate = args.steps * args.batch_size / (time.perf_counter() - began)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"train step: {step_rate:.1f} samples/s ({args.arch}, {device}, {precision})")
    # each sample is a crop of args.crop_seconds of audio
    audio_hours = step_rate * args.crop_seconds  # audio-seconds per second = audio-h per h
    print(f"throughput: {audio_hours:.0f} audio-hours per {device.type.upper()}-hour (step alone)")
    print(f"loader_over_step={loader_rate / step_rate:.2f}")


if __name__ == "__main__":
    main()
