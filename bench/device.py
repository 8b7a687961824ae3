"""The one device check (`make bench-device`): shards made with the teachers on the GPU, then
SoundNet-8 trained in bf16 with the real loader from FLAC and from pcm16 shards, in one table.

    .venv/bin/python bench/device.py [--videos DIR] [--steps N] [--out build/bench-device]

On a CUDA machine (under 8 minutes, nothing downloaded):
  1. `pipeline.run --device cuda` makes FLAC and pcm16 shards of the same clips (the shared
     clips beside the checkout, or --videos): teacher frames/s end to end, and the teacher alone
     on batches of frames;
  2. per codec: the loader per core against its decoding floor (bench/trainer.py's measure),
     one training step alone (bf16, the batch already on the GPU), and `trainer.main` itself for
     --steps steps (the real loader and its workers, bf16 autocast): samples/s after its first
     log window, audio-hours per GPU-hour, GPU utilisation (sampled by nvidia-smi when it is
     there), and the step with the loader over the step alone (1.0: the loader keeps up);
  3. one summary table and last the line `audio-hours per device-hour: ...`.
A GPU machine is lent rarely and briefly, so one failing part does not cost the others: a
pipeline run that fails with the teachers on the GPU is redone with them on the CPU (and says
so), a codec whose measures fail is reported with its error and the other still measured, and
OUT/summary.json is rewritten after each part (a run cut short keeps what it measured). The
exit status is non-zero when any part failed. Without CUDA the same runs on the CPU, small (6
clips, 4 steps of 4 crops): a smoke run, in about 2 minutes on 2 cores.

`--shards DIR` takes FLAC and pcm16 shards made elsewhere (DIR/flac, DIR/pcm16) instead of
running the pipeline: a lent GPU machine reaches no package registry and a call to it carries
64 MiB, too little for Beam, PyAV and the clips (`make device-bundle` makes DIR and the wheels
the teacher alone, the loader and the trainer need; the README says how to run it there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

# bench/ is sys.path[0]; the repository must come first (bench/trainer.py would shadow trainer/)
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from models.registry import build_model  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from schemas import AUDIO_CODECS, INDEX_FILE, SAMPLE_RATE, SHARDS_DIR  # noqa: E402
from trainer import data  # noqa: E402
from trainer import main as trainer_main  # noqa: E402


def _bench_trainer():
    """bench/trainer.py's measures (its module name would shadow the trainer package)."""
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "bench" / "trainer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_trainer = _bench_trainer()

SHARED_VIDEOS = REPO.parent / "shared" / "data" / "videos"
CROP_SECONDS = 20.0  # the paper's crop, asked of the loader and of trainer.main


@dataclass
class CodecFigures:
    codec: str
    shard_mb: float
    loader_per_core: float
    decode_per_core: float
    loader_over_decode: float  # the median round's (bench/trainer.py)
    step_alone: float  # samples/s, the batch already on the device
    with_loader: float  # samples/s of trainer.main after its first log window
    gpu_util: float | None  # mean %, while trainer.main ran
    crop_seconds: float  # of audio a sample: the crop both runs used, in whole model steps

    @property
    def audio_hours(self) -> float:
        return self.with_loader * self.crop_seconds  # audio-seconds per second = audio-h per h


class GpuSampler:
    """Mean GPU utilisation while it runs, from `nvidia-smi` (None without it)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.proc: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "--loop-ms=200", f"--id={torch.cuda.current_device()}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *_) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def failed(what: str, err: BaseException) -> str:
    """The error, with its traceback on stderr, as the one line the summary keeps."""
    traceback.print_exception(err)
    line = f"{type(err).__name__}: {err}".splitlines()[0]
    print(f"!! {what} failed: {line}", flush=True)
    return line


def make_shards(videos: list[Path], out: Path, codec: str, device: str) -> dict:
    """One pipeline run (teachers on `device`) -> its counts and speed."""
    from pipeline import run as pipeline_run  # Beam and PyAV: not needed with --shards

    listing = out.parent / f"videos-{codec}.txt"
    listing.write_text("".join(f"{v.resolve()}\n" for v in videos))  # read from its folder
    began = time.perf_counter()
    code = pipeline_run.main(["--runner=DirectRunner", f"--input={listing}", f"--output={out}",
                              f"--audio-codec={codec}", f"--device={device}",
                              "--videos-per-shard=8"])  # fmt: skip
    seconds = time.perf_counter() - began
    if code:
        raise SystemExit(f"the pipeline run for {codec} shards failed (exit {code})")
    made = shard_counts(out)
    if not made["samples"]:
        raise SystemExit(f"the pipeline run for {codec} shards wrote no sample (see its failures)")
    return made | {"videos": len(videos), "device": device, "seconds": seconds,
                   "frames_per_s": made["frames"] / seconds}  # fmt: skip


def shard_counts(out: Path) -> dict:
    """A pipeline output's samples, teacher frames and shard megabytes."""
    index = pq.read_table(out / INDEX_FILE)
    frames = sum(index.column("num_frames").to_pylist())
    shard_bytes = sum(p.stat().st_size for p in (out / SHARDS_DIR).glob("*.tar"))
    return {"samples": index.num_rows, "frames": frames, "shard_mb": shard_bytes / 1e6}


def premade_shards(out: Path) -> dict:
    """--shards: a pipeline output made elsewhere (`make device-bundle`): its counts, no speed."""
    if not (out / INDEX_FILE).is_file():
        raise SystemExit(f"{out}: not a pipeline output (no {INDEX_FILE})")
    return shard_counts(out) | {"device": "made elsewhere"}


def teacher_alone(device: str, batches: int, batch_size: int = 32) -> float:
    """Frames/s of the default teacher on batches of frames (preprocessing and softmax in)."""
    from pipeline.teachers import build_teacher, resolve_teacher, teacher_probabilities

    model = build_teacher(resolve_teacher("objects", "efficientnet_lite0"), device)
    frames = list(np.random.default_rng(0).integers(0, 256, (batch_size, 224, 224, 3), np.uint8))
    teacher_probabilities(frames, model, device)  # warm-up
    began = time.perf_counter()
    for _ in range(batches):
        teacher_probabilities(frames, model, device)  # ends on the host: synchronised
    return batches * batch_size / (time.perf_counter() - began)


def train_rate(shards: Path, run: Path, args: argparse.Namespace, device: str,
               crop_s: float) -> float:  # fmt: skip
    """samples/s of `trainer.main` itself on `crop_s` crops, after its first log window (workers
    starting, the shuffle buffer filling)."""
    trainer_main.main([f"--shards={shards}", f"--out={run}", f"--steps={args.steps}",
                       f"--crop-seconds={crop_s}",
                       f"--batch-size={args.batch_size}", f"--workers={args.workers}",
                       f"--log-every={args.log_every}", "--checkpoint-every=0", f"--device={device}",
                       "--no-progress", "--no-tensorboard"])  # fmt: skip
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    steps = [r["step"] for r in train]
    windows = list(zip(steps, [0, *steps[:-1]], train, strict=True))  # (step, previous, record)
    timed = windows[1:] or windows  # one window only (few steps): take it as it is
    samples = sum((step - before) * args.batch_size for step, before, _ in timed)
    seconds = sum(
        (step - before) * args.batch_size / r["samples_per_s"] for step, before, r in timed
    )
    return samples / seconds


def codec_figures(codec: str, out: Path, shard_mb: float, args: argparse.Namespace,
                  device: torch.device) -> CodecFigures:  # fmt: skip
    source = data.resolve_shards(str(out))
    heads = {h: info.num_classes for h, info in data.inspect_heads(source.urls).items()}
    model = build_model("soundnet8", heads).to(device)
    steps = round(CROP_SECONDS * SAMPLE_RATE / model.step_samples)
    crop_s = steps * model.step_samples / SAMPLE_RATE  # the crop used: whole model steps
    loader = bench_trainer.run_loader(source.urls, list(heads), args.batch_size, args.workers,
                                      args.loader_batches, steps=steps,
                                      step_samples=model.step_samples,
                                      pin_memory=device.type == "cuda")  # fmt: skip
    alone = bench_trainer.train_step_rate(model, loader.first, device, args.step_repeats)
    del model
    with GpuSampler() as gpu:
        with_loader = train_rate(out, args.out / f"run-{codec}", args, device.type, crop_s)
    return CodecFigures(
        codec, shard_mb, loader.per_core, loader.decode_per_core, loader.over_decode, alone,
        with_loader, gpu.mean, crop_s,
    )  # fmt: skip


def print_table(device: str, pipeline: dict, teacher: float | None, rows: list[CodecFigures],
                errors: dict[str, str], args: argparse.Namespace) -> None:  # fmt: skip
    kind = "GPU" if device == "cuda" else "CPU"
    first = next(iter(pipeline.values()))
    print(f"\n== bench-device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
          f"{os.cpu_count()} cores, {args.workers} loader workers, batch {args.batch_size}, "
          f"{args.steps} steps ==")  # fmt: skip
    alone = f"{teacher:.0f} frames/s" if teacher is not None else "failed"
    runs = [f"{c} {p['frames_per_s']:.1f} frames/s end to end ({p['seconds']:.1f} s, teachers "
            f"on {p['device']})" for c, p in pipeline.items() if "seconds" in p]  # fmt: skip
    print(f"pipeline: {first['samples']} samples, {first['frames']} teacher frames: "
          + (", ".join(runs) or f"shards made elsewhere ({args.shards})")
          + f"; teacher alone on {device} {alone} (efficientnet_lite0, batch 32)")  # fmt: skip
    for what, error in errors.items():
        print(f"failed: {what}: {error}")
    if not rows:
        return
    header = ["shards", "MB", "loader/core", "decode/core", "loader/decode", "step alone/s",
              "with loader/s", "with/alone", f"audio-h per {kind}-h", "GPU util"]  # fmt: skip
    table = [header]
    for r in rows:
        decodes = r.decode_per_core < 1e5  # pcm16's "decoding" is a view: no floor to compare
        table.append([r.codec, f"{r.shard_mb:.1f}", f"{r.loader_per_core:.0f}",
                      f"{r.decode_per_core:.0f}" if decodes else "(no decoding)",
                      f"{r.loader_over_decode:.2f}" if decodes else "n/a",
                      f"{r.step_alone:.1f}",
                      f"{r.with_loader:.1f}", f"{r.with_loader / r.step_alone:.2f}",
                      f"{r.audio_hours:.0f}",
                      f"{r.gpu_util:.0f} %" if r.gpu_util is not None else "n/a"])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    best = max(rows, key=lambda r: r.audio_hours)
    others = "".join(f"; {r.codec} {r.audio_hours:.0f}" for r in rows if r is not best)
    print(f"audio-hours per device-hour: {best.audio_hours:.0f} ({best.codec} shards, "
          f"{best.crop_seconds:g} s crops, SoundNet-8 {'bf16' if device == 'cuda' else 'fp32'} "
          f"with the real loader on {kind}{others})")  # fmt: skip


def main() -> None:
    keep_freed_memory()  # as pipeline.run and trainer.main do: the step alone is theirs
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=SHARED_VIDEOS)
    p.add_argument("--shards", type=Path, help="flac/ and pcm16/ pipeline outputs made "
                   "elsewhere (make device-bundle): no pipeline run, so no Beam or PyAV needed")  # fmt: skip
    p.add_argument("--only-shards", action="store_true", help="make OUT/flac and OUT/pcm16 "
                   "and stop (make device-bundle: what --shards then reads)")  # fmt: skip
    p.add_argument("--max-videos", type=int, default=0 if cuda else 6, help="0: all")
    p.add_argument("--out", type=Path, default=REPO / "build" / "bench-device")
    p.add_argument("--steps", type=int, default=300 if cuda else 4, help="trainer.main steps")
    p.add_argument("--batch-size", type=int, default=64 if cuda else 4)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument(
        "--loader-batches", type=int, default=15 if cuda else 5, help="per round, 7 rounds"
    )
    p.add_argument("--step-repeats", type=int, default=30 if cuda else 2)
    args = p.parse_args()
    args.log_every = max(1, args.steps // 10)
    device = "cuda" if cuda else "cpu"
    began = time.perf_counter()
    videos = [] if args.shards else sorted(
        v for v in args.videos.iterdir() if v.suffix.lower() not in {".csv", ".md", ".txt"}
    )  # fmt: skip
    videos = videos[: args.max_videos] if args.max_videos else videos
    if not (videos or args.shards):
        raise SystemExit(f"--videos {args.videos}: no videos")
    made_here = () if args.shards else AUDIO_CODECS
    for name in (*made_here, *(f"run-{c}" for c in AUDIO_CODECS)):
        shutil.rmtree(args.out / name, ignore_errors=True)  # ours, from an earlier run
    args.out.mkdir(parents=True, exist_ok=True)

    pipeline: dict[str, dict] = {}
    teacher: float | None = None
    rows: list[CodecFigures] = []
    errors: dict[str, str] = {}

    def save() -> None:  # after each part: a run cut short keeps what it measured
        summary = {"device": device, "cores": os.cpu_count(),
                   "args": {k: str(v) for k, v in vars(args).items()},
                   "pipeline": pipeline, "teacher_frames_per_s": teacher,
                   "codecs": [asdict(r) | {"audio_hours_per_device_hour": r.audio_hours}
                              for r in rows],
                   "errors": errors, "seconds": time.perf_counter() - began}  # fmt: skip
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    shards = {c: (args.shards or args.out) / c for c in AUDIO_CODECS}
    for codec in AUDIO_CODECS:
        if args.shards:
            try:
                pipeline[codec] = premade_shards(shards[codec])
            except (Exception, SystemExit) as err:
                errors[f"{codec} shards"] = failed(f"reading {shards[codec]}", err)
            continue
        for teachers_on in dict.fromkeys((device, "cpu")):  # the GPU's run failed: the CPU's
            try:
                pipeline[codec] = make_shards(videos, shards[codec], codec, teachers_on)
                break
            except (Exception, SystemExit) as err:
                what = f"{codec} pipeline, teachers on {teachers_on}"
                errors[what] = failed(what, err)
                shutil.rmtree(shards[codec], ignore_errors=True)
        save()
    if not pipeline:
        raise SystemExit(f"bench-device: no shards made: {errors}")
    if args.only_shards:  # make device-bundle: the shards to carry, nothing measured
        if errors:
            raise SystemExit(f"bench-device: {len(errors)} part(s) failed: {', '.join(errors)}")
        print(f"shards made: {', '.join(str(shards[c]) for c in pipeline)}")
        return
    try:  # needs no Beam: measured with --shards on a lent machine too
        teacher = teacher_alone(device, batches=20 if cuda else 2)
    except Exception as err:
        errors["teacher alone"] = failed("the teacher alone", err)
    save()
    for codec in pipeline:
        try:
            shard_mb = pipeline[codec]["shard_mb"]
            rows.append(codec_figures(codec, shards[codec], shard_mb, args, torch.device(device)))
            r = rows[-1]
            print(f"-- {codec}: loader {r.loader_per_core:.0f}/core, step alone "
                  f"{r.step_alone:.1f}/s, with the loader {r.with_loader:.1f}/s "
                  f"({time.perf_counter() - began:.0f} s so far)", flush=True)  # fmt: skip
        except (Exception, SystemExit) as err:
            errors[f"{codec} loader and training"] = failed(f"measuring {codec} shards", err)
        save()
    # before the table: its `audio-hours per device-hour` line is the last one printed
    print(f"({time.perf_counter() - began:.0f} s in all; figures in {args.out / 'summary.json'})")
    print_table(device, pipeline, teacher, rows, errors, args)
    if errors:
        raise SystemExit(f"bench-device: {len(errors)} part(s) failed: {', '.join(errors)}")


if __name__ == "__main__":
    main()
