"""The trainer's data loader against its train step and against its decoding floor, in one run.

    .venv/bin/python bench/trainer.py --shards OUT [--batch-size 64] [--workers 2]

Loader: the real training loader (shards read, audio decoded, aligned 20 s crops, batches handed
from its worker processes to this one) at trainer.main's batch size, timed after a warm-up that
fills every worker's shuffle buffer and makes all its reused batch blocks. Its cost per core is
the CPU time its workers and this process spend per sample delivered (each batch carries its
worker's CPU clock): a rate per core, not the wall clock, is what compares between a small
shared machine and a GPU node's many cores. Decode: the audio members of the same samples (the
keys the loader delivered, as often as it did) decoded alone on one core, with the loader's
decoder (pcm16: a view; FLAC: dr_flac), while the loader's workers wait with their prefetch
full: the floor of any loader of these shards. The two alternate, --rounds times
(--loader-batches batches, then their decoding), so that both see the same machine, and the
loader's share of its floor is the median of the rounds' (a slow spell of the machine moves one
round, not the result); FLAC is also decoded by libsndfile, for reference. Step: forward, KL
loss, backward and Adam step of the model on one batch of the same data, already on the device.

Prints `loader_over_step=` (the loader's samples/s over the step's), `loader_per_core=`,
`decode_per_core=` (both over all rounds), for FLAC `libsndfile_per_core=` and, last,
`loader_over_decode=` (the median round's loader per core over its decoding per core; `n/a` on
pcm16 shards, which have nothing to decode).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# bench/ is sys.path[0]; this file's own name would shadow the trainer package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import psutil  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from models.registry import build_model  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from schemas import SAMPLE_RATE  # noqa: E402
from schemas.sample import audio_member, decode_audio, decode_targets  # noqa: E402
from trainer import data  # noqa: E402
from trainer.losses import distillation_loss  # noqa: E402
from trainer.tarstream import tar_samples  # noqa: E402


@dataclass
class LoaderRun:
    rate: float  # samples/s, wall clock
    samples: int  # delivered in the timed windows
    worker_cpu_s: float
    main_cpu_s: float
    decoded: int  # the same samples' audio, decoded alone
    decode_cpu_s: float
    codecs: str
    first: dict  # a batch, for the step
    libsndfile_per_core: float | None  # FLAC: the same samples decoded by libsndfile instead
    # each round's loader per core over its decoding per core: the two measured seconds apart
    round_ratios: list[float]

    @property
    def per_core(self) -> float:
        return self.samples / (self.worker_cpu_s + self.main_cpu_s)

    @property
    def decode_per_core(self) -> float:
        return self.decoded / self.decode_cpu_s

    @property
    def over_decode(self) -> float:
        """The loader's share of its floor: the median round's. The machine's speed drifts by
        ±10 % over seconds (on the 2-core development machine), so a slow spell that falls on
        one side of a pairing moves a ratio of totals; it moves only its own round's ratio."""
        return statistics.median(self.round_ratios)


class AudioMembers:
    """The audio members of the shards' samples by key, read when first asked for."""

    def __init__(self, urls: list[str]):
        self.urls, self.members = urls, {}

    def get(self, keys: list[str]) -> list[tuple[str, bytes]]:
        if set(keys) - self.members.keys():
            for raw in tar_samples([{"url": u} for u in self.urls], handler=wds.reraise_exception):
                meta, _ = decode_targets(raw)
                codec = audio_member(raw, meta, raw["__key__"])
                self.members[raw["__key__"]] = (codec, raw[codec])
        return [self.members[key] for key in keys]


def run_loader(urls: list[str], heads: list[str], batch_size: int, workers: int, batches: int, *,
               steps: int, step_samples: int, pin_memory: bool = False, rounds: int = 7,
               min_decode_s: float = 0.5) -> LoaderRun:  # fmt: skip
    """The real training loader and its floor, in `rounds` rounds of `batches` batches each
    followed by the decoding alone of those batches' samples (interleaved, so that both see the
    same machine), after a warm-up that fills every worker's shuffle buffer (until then it reads
    two samples for each one it hands out) and then two untimed rounds, so that each worker has
    made all the batch blocks it reuses (a new one's first page faults cost a sample's copy
    again: at batch 64 one made in the timed rounds cost a pcm16 worker 60 % more a sample)."""
    loader = data.make_loader(
        urls, heads, batch_size, steps=steps, step_samples=step_samples, workers=workers,
        pin_memory=pin_memory,
    )  # fmt: skip
    stream = iter(loader)
    warm_batches = -(-(256 - 64) // batch_size)  # per worker: its shuffle buffer
    last_clock: dict[int, float] = {}
    for warm_up in (warm_batches * max(1, workers) + 2, batches, batches):
        for _ in range(warm_up):
            batch = next(stream)
            last_clock[batch["events"]["worker"]] = batch["events"]["cpu_s"]
        workers_idle()  # then rounds as the timed ones run, after their pause
    # for the step, a copy: kept, the batch itself would hold its worker's block all along
    first = {"wave": batch["wave"].clone(),
             "targets": {h: t.clone() for h, t in batch["targets"].items()}}  # fmt: skip
    members = AudioMembers(urls)
    samples, worker_cpu, wall = 0, 0.0, 0.0
    decoded, decode_cpu, bookkeeping, codecs = 0, 0.0, 0.0, Counter()
    libsndfile_decoded, libsndfile_cpu = 0, 0.0
    main_cpu, round_ratios = 0.0, []
    for _ in range(rounds):
        round_worker_cpu, round_began = worker_cpu, time.process_time()
        keys, began = [], time.perf_counter()
        for _ in range(batches):
            batch = next(stream)
            worker, clock = batch["events"]["worker"], batch["events"]["cpu_s"]
            worker_cpu += clock - last_clock[worker]  # that worker's CPU since its last batch
            last_clock[worker] = clock
            keys += batch["keys"]
        wall += time.perf_counter() - began
        samples += len(keys)
        began = time.thread_time()  # the bench's own bookkeeping: not the loader's
        todo = members.get(keys)
        workers_idle()  # their prefetch full: the decoding alone does not share the cores
        bookkeeping = time.thread_time() - began
        codecs.update(codec for codec, _ in todo)
        began, repeats = time.thread_time(), 0  # this thread's alone: not a pin-memory thread's
        while True:
            for codec, payload in todo:
                decode_audio(payload, codec)
            repeats += 1
            if time.thread_time() - began >= min_decode_s / rounds:
                break
        decode_s = time.thread_time() - began
        decoded, decode_cpu = decoded + repeats * len(todo), decode_cpu + decode_s
        # this process's CPU for the loader: all of it in the round, less the decoding alone
        # and the bench's reading of the audio members
        round_main_cpu = time.process_time() - round_began - decode_s - bookkeeping
        main_cpu += round_main_cpu
        # (no workers: the batches carry this process's own clock, already in its CPU)
        round_cpu = (worker_cpu - round_worker_cpu if workers else 0.0) + round_main_cpu
        round_ratios.append(len(keys) / round_cpu / (repeats * len(todo) / decode_s))
        flac = [payload for codec, payload in todo if codec == "flac"]
        began = time.thread_time()  # the reference: libsndfile, the decoder the loader left
        for payload in flac:
            sf.read(io.BytesIO(payload), dtype="int16")
        libsndfile_decoded += len(flac)
        libsndfile_cpu += time.thread_time() - began
    del stream, loader  # stop the workers before timing anything else
    if not workers:  # one process: its clock is the loader's
        worker_cpu = 0.0
    return LoaderRun(samples / wall, samples, worker_cpu, main_cpu, decoded, decode_cpu,
                     ", ".join(sorted(codecs)), first,
                     libsndfile_decoded / libsndfile_cpu if libsndfile_cpu else None,
                     round_ratios)  # fmt: skip


def workers_idle(timeout_s: float = 10.0, still_s: float = 0.05) -> None:
    """Wait until this process's children (the loader's workers) use no CPU: once their
    prefetch queues are full they block."""
    children = psutil.Process().children()
    deadline = time.monotonic() + timeout_s

    def used() -> float:
        total = 0.0
        for child in children:
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total

    before = used()
    while time.monotonic() < deadline:
        time.sleep(still_s)
        now = used()
        if now == before:
            return
        before = now


def train_step_rate(model: torch.nn.Module, batch: dict, device: torch.device, steps: int) -> float:
    """Samples/s of forward, KL loss, backward and Adam step on one batch already on `device`
    (bf16 autocast on CUDA, as the trainer)."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.9, 0.999))
    wave, targets = data.batch_to(batch, device)
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
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(wave) / (time.perf_counter() - began)


def main() -> None:
    keep_freed_memory()  # as trainer.main does: the step (and loader) measured are its own
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="as trainer.main's --shards")
    p.add_argument("--arch", default="soundnet8", choices=("soundnet8", "soundnet5"))
    p.add_argument("--batch-size", type=int, default=64, help="trainer.main's default")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--crop-seconds", type=float, default=20.0)
    p.add_argument("--loader-batches", type=int, help="timed, per round (default: 320 samples)")
    p.add_argument("--rounds", type=int, default=7, help="of loader batches, then decoding")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    args.loader_batches = args.loader_batches or max(1, 320 // args.batch_size)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    source = data.resolve_shards(args.shards)
    heads = {h: info.num_classes for h, info in data.inspect_heads(source.urls).items()}
    model = build_model(args.arch, heads).to(device)
    steps = round(args.crop_seconds * SAMPLE_RATE / model.step_samples)  # crops of model steps
    crop_s = steps * model.step_samples / SAMPLE_RATE  # the crop used: whole steps, as asked or not
    print(f"{len(source.urls)} shards, heads {heads}, batch {args.batch_size}, {device}")

    # loader alone, and the same samples' audio decoded alone
    run = run_loader(source.urls, list(heads), args.batch_size, args.workers, args.loader_batches,
                     steps=steps, step_samples=model.step_samples, rounds=args.rounds,
                     pin_memory=device.type == "cuda")  # fmt: skip
    print(f"loader: {run.rate:.1f} samples/s ({args.workers} workers)")

    # train step alone, on a batch of the same data
    step_rate = train_step_rate(model, run.first, device, args.steps)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"train step: {step_rate:.1f} samples/s ({args.arch}, {device}, {precision})")
    audio_hours = step_rate * crop_s  # audio-seconds per second = audio-h per h
    print(f"throughput: {audio_hours:.0f} audio-hours per {device.type.upper()}-hour (step alone, "
          f"{crop_s:g} s crops)")  # fmt: skip
    print(f"loader_over_step={run.rate / step_rate:.2f}")

    # per core: the loader's CPU (workers and this process) against decoding alone
    print(f"loader CPU: {run.worker_cpu_s:.2f} s in {args.workers} workers + "
          f"{run.main_cpu_s:.2f} s in the training process for {run.samples} samples")  # fmt: skip
    print(f"loader_per_core={run.per_core:.1f}")
    print(f"decode alone ({run.codecs}, the same samples, one core): {run.decoded} in "
          f"{run.decode_cpu_s:.2f} s")  # fmt: skip
    print(f"decode_per_core={run.decode_per_core:.1f}")
    if run.libsndfile_per_core:  # FLAC: against the decoder the loader used before dr_flac
        print(f"libsndfile_per_core={run.libsndfile_per_core:.1f}  (the same FLAC, one core: "
              f"the loader is {run.per_core / run.libsndfile_per_core:.2f} of it)")  # fmt: skip
    if "flac" not in run.codecs:  # pcm16's "decoding" is a view: no floor to compare with
        print("loader over decode: (no decoding) for pcm16 shards")
        print("loader_over_decode=n/a")
        return
    spread = f"{min(run.round_ratios):.3f}-{max(run.round_ratios):.3f}"
    print(f"loader over decode: {run.per_core / run.decode_per_core:.3f} of the totals; rounds "
          f"{spread}, median:")  # fmt: skip
    print(f"loader_over_decode={run.over_decode:.3f}")


if __name__ == "__main__":
    main()
